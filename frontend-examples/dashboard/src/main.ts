// errorgraph's live dashboard: sign in with a token, see a project's issues update by
// themselves, open one for its stack trace, chart, tags, users and events, and act on it.
import "./style.css";
import { type Api, GraphQLFailure, connect, storeToken, storedToken } from "./api";

interface Project {
  id: string;
  slug: string;
  name: string;
}

interface GroupRow {
  id: string;
  title: string;
  culprit: string | null;
  level: string | null;
  status: string;
  count: number;
  userCount: number;
  lastSeen: string;
  firstSeen: string;
  isRegression: boolean;
}

interface Connection<T> {
  totalCount: number;
  pageInfo: { hasNextPage: boolean; endCursor: string | null };
  edges: Array<{ node: T }>;
}

const GROUP_FIELDS = "id title culprit level status count userCount lastSeen firstSeen isRegression";

const app = document.getElementById("app") as HTMLElement;
const projectSelect = document.getElementById("project") as HTMLSelectElement;
const liveBadge = document.getElementById("live") as HTMLElement;
const signOut = document.getElementById("sign-out") as HTMLButtonElement;

let api: Api | null = null;
let projects: Project[] = [];
let stopView: Array<() => void> = [];

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Record<string, string> = {},
  ...children: Array<Node | string | null>
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  for (const child of children) if (child !== null) element.append(child);
  return element;
}

function ago(iso: string): string {
  const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ago`;
  return `${Math.floor(seconds / 86400)}d ago`;
}

function showError(error: unknown): void {
  const message = error instanceof Error ? error.message : String(error);
  if (error instanceof GraphQLFailure && error.code === "UNAUTHENTICATED") {
    storeToken(null);
    route();
    return;
  }
  app.prepend(h("p", { class: "error", role: "alert" }, message));
}

function clearView(): void {
  stopView.forEach((stop) => stop());
  stopView = [];
  app.replaceChildren();
}

// ---- sign-in ---------------------------------------------------------------------------

function signInView(problem?: string): void {
  clearView();
  projectSelect.hidden = true;
  liveBadge.hidden = true;
  signOut.hidden = true;
  const input = h("input", {
    id: "token",
    type: "password",
    placeholder: "egt_… or sk_…",
    autocomplete: "off",
    "aria-label": "API token",
  });
  const form = h(
    "form",
    { id: "sign-in" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste an API token (errorgraph project create prints one). It stays in this browser."),
    input,
    h("button", { type: "submit" }, "Sign in"),
    problem ? h("p", { class: "error", role: "alert" }, problem) : null,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    const candidate = connect(token);
    try {
      await candidate.query("{ projects { id } }");
    } catch (error) {
      candidate.close();
      signInView(error instanceof Error ? error.message : String(error));
      return;
    }
    candidate.close();
    storeToken(token);
    api = null;
    route();
  });
  app.append(form);
  input.focus();
}

// ---- the issue list --------------------------------------------------------------------

interface ListState {
  status: string;
  sort: string;
  search: string;
  rows: GroupRow[];
  endCursor: string | null;
  hasNext: boolean;
  total: number;
  selected: Set<string>;
}

async function listView(projectId: string): Promise<void> {
  clearView();
  const client = api as Api;
  const state: ListState = {
    status: "UNRESOLVED",
    sort: "LAST_SEEN_DESC",
    search: "",
    rows: [],
    endCursor: null,
    hasNext: false,
    total: 0,
    selected: new Set(),
  };

  const statusSelect = h(
    "select",
    { id: "status", "aria-label": "Status" },
    ...["UNRESOLVED", "RESOLVED", "IGNORED", "ALL"].map((s) => h("option", { value: s }, s.toLowerCase())),
  );
  const sortSelect = h(
    "select",
    { id: "sort", "aria-label": "Sort" },
    h("option", { value: "LAST_SEEN_DESC" }, "last seen"),
    h("option", { value: "FIRST_SEEN_DESC" }, "first seen"),
    h("option", { value: "COUNT_DESC" }, "events"),
    h("option", { value: "USER_COUNT_DESC" }, "users"),
  );
  const searchInput = h("input", { id: "search", type: "search", placeholder: "Search", "aria-label": "Search" });
  const bulk = h(
    "div",
    { id: "bulk" },
    ...["RESOLVE", "IGNORE", "UNRESOLVE", "DELETE"].map((action) =>
      h("button", { "data-action": action, disabled: "" }, action.toLowerCase()),
    ),
  );
  const summary = h("p", { id: "summary" });
  const table = h("table", { id: "issues" });
  const more = h("button", { id: "more", hidden: "" }, "Load more");
  app.append(h("div", { class: "toolbar" }, statusSelect, sortSelect, searchInput, bulk), summary, table, more);

  function render(): void {
    summary.textContent = `${state.total} issue${state.total === 1 ? "" : "s"}`;
    table.replaceChildren(
      h("tr", {}, h("th", {}, ""), h("th", {}, "Issue"), h("th", {}, "Events"), h("th", {}, "Users"), h("th", {}, "Last seen")),
      ...state.rows.map((row) => {
        const box = h("input", { type: "checkbox", "aria-label": `Select ${row.title}` });
        box.checked = state.selected.has(row.id);
        box.addEventListener("change", () => {
          if (box.checked) state.selected.add(row.id);
          else state.selected.delete(row.id);
          bulk.querySelectorAll("button").forEach((b) => (b.disabled = state.selected.size === 0));
        });
        return h(
          "tr",
          { class: `issue level-${(row.level ?? "error").toLowerCase()}`, "data-id": row.id },
          h("td", {}, box),
          h(
            "td",
            {},
            h("a", { href: `#/issues/${row.id}`, class: "title" }, row.title),
            row.isRegression ? h("span", { class: "badge" }, "regression") : null,
            h("div", { class: "culprit" }, row.culprit ?? ""),
          ),
          h("td", { class: "count" }, String(row.count)),
          h("td", { class: "users" }, String(row.userCount)),
          h("td", { title: row.lastSeen }, ago(row.lastSeen)),
        );
      }),
    );
    more.hidden = !state.hasNext;
    bulk.querySelectorAll("button").forEach((b) => (b.disabled = state.selected.size === 0));
  }

  async function load(append: boolean): Promise<void> {
    const data = await client.query<{ groups: Connection<GroupRow> }>(
      `query($projectId: ID, $status: GroupStatus, $sort: GroupSort, $search: String, $after: String) {
        groups(projectId: $projectId, status: $status, sort: $sort, search: $search, first: 25, after: $after) {
          totalCount pageInfo { hasNextPage endCursor } edges { node { ${GROUP_FIELDS} } }
        }
      }`,
      {
        projectId,
        status: state.status === "ALL" ? null : state.status,
        sort: state.sort,
        search: state.search || null,
        after: append ? state.endCursor : null,
      },
    );
    const rows = data.groups.edges.map((edge) => edge.node);
    state.rows = append ? [...state.rows, ...rows] : rows;
    state.endCursor = data.groups.pageInfo.endCursor;
    state.hasNext = data.groups.pageInfo.hasNextPage;
    state.total = data.groups.totalCount;
    render();
  }

  function visible(row: GroupRow): boolean {
    return state.status === "ALL" || row.status === state.status;
  }

  statusSelect.addEventListener("change", () => {
    state.status = statusSelect.value;
    state.selected.clear();
    load(false).catch(showError);
  });
  sortSelect.addEventListener("change", () => {
    state.sort = sortSelect.value;
    load(false).catch(showError);
  });
  let searchTimer = 0;
  searchInput.addEventListener("input", () => {
    window.clearTimeout(searchTimer);
    searchTimer = window.setTimeout(() => {
      state.search = searchInput.value.trim();
      load(false).catch(showError);
    }, 250);
  });
  more.addEventListener("click", () => load(true).catch(showError));
  bulk.addEventListener("click", async (event) => {
    const action = (event.target as HTMLElement).dataset.action;
    if (!action || state.selected.size === 0) return;
    if (action === "DELETE" && !window.confirm(`Delete ${state.selected.size} issue(s) and their events?`)) return;
    try {
      await client.mutate(
        `mutation($ids: [ID!]!, $action: BulkAction!) { bulkUpdateGroups(ids: $ids, action: $action) { updatedCount } }`,
        { ids: [...state.selected], action },
      );
      state.selected.clear();
      await load(false);
    } catch (error) {
      showError(error);
    }
  });

  // Live: new issues appear at the top; counts and status change in place.
  stopView.push(
    client.subscribe<{ groupCreated: GroupRow }>(
      `subscription($projectId: ID) { groupCreated(projectId: $projectId) { ${GROUP_FIELDS} } }`,
      { projectId },
      ({ groupCreated }) => {
        if (!visible(groupCreated) || state.rows.some((row) => row.id === groupCreated.id)) return;
        if (state.search) return; // a search shows what matched when it ran
        state.rows = [groupCreated, ...state.rows];
        state.total += 1;
        render();
      },
    ),
  );
  stopView.push(
    client.subscribe<{ groupUpdated: { kind: string; groupId: string; group: GroupRow | null } }>(
      `subscription($projectId: ID) { groupUpdated(projectId: $projectId) { kind groupId group { ${GROUP_FIELDS} } } }`,
      { projectId },
      ({ groupUpdated }) => {
        const index = state.rows.findIndex((row) => row.id === groupUpdated.groupId);
        const group = groupUpdated.group;
        if (!group || !visible(group)) {
          if (index >= 0) {
            state.rows.splice(index, 1);
            state.total -= 1;
            render();
          }
          return;
        }
        if (index >= 0) state.rows[index] = group;
        else if (!state.search) {
          state.rows = [group, ...state.rows];
          state.total += 1;
        }
        if (state.sort === "LAST_SEEN_DESC") state.rows.sort((a, b) => b.lastSeen.localeCompare(a.lastSeen));
        render();
      },
    ),
  );
  await load(false);
}

// ---- one issue --------------------------------------------------------------------------

interface Frame {
  filename: string | null;
  function: string | null;
  module: string | null;
  lineno: number | null;
  colno: number | null;
  inApp: boolean | null;
  contextLine: string | null;
  preContext: string[];
  postContext: string[];
}

interface EventRow {
  id: string;
  eventId: string;
  timestamp: string;
  level: string | null;
  environment: string | null;
  release: string | null;
  message: string | null;
  url: string | null;
  breadcrumbs: Array<Record<string, unknown>> | null;
  exception: Array<{ type: string | null; value: string | null; frames: Frame[] }>;
  rawStacktrace: string | null;
  user: { externalId: string } | null;
}

interface GroupDetail extends GroupRow {
  exceptionType: string | null;
  message: string | null;
  firstRelease: string | null;
  lastRelease: string | null;
  histogram: Array<{ start: string; count: number }>;
  tags: Array<{ key: string; values: Array<{ value: string; count: number }> }>;
  users: Connection<{ externalId: string; email: string | null; eventCount: number }>;
  accounts: Connection<{ externalId: string; name: string | null; eventCount: number }>;
  releases: Array<{ name: string; count: number; lastSeen: string }>;
  environments: Array<{ name: string; count: number }>;
  events: Connection<EventRow>;
}

const EVENT_FIELDS = `id eventId timestamp level environment release message url breadcrumbs rawStacktrace
  user { externalId }
  exception { type value frames { filename function module lineno colno inApp contextLine preContext postContext } }`;

function chart(buckets: Array<{ start: string; count: number }>): SVGSVGElement {
  const width = 600;
  const height = 80;
  const max = Math.max(1, ...buckets.map((b) => b.count));
  const barWidth = width / Math.max(1, buckets.length);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("id", "chart");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Events per hour, at most ${max}`);
  buckets.forEach((bucket, index) => {
    const bar = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const barHeight = (bucket.count / max) * (height - 4);
    bar.setAttribute("x", String(index * barWidth + 1));
    bar.setAttribute("y", String(height - barHeight));
    bar.setAttribute("width", String(Math.max(1, barWidth - 2)));
    bar.setAttribute("height", String(barHeight));
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${bucket.start}: ${bucket.count}`;
    bar.append(title);
    svg.append(bar);
  });
  return svg;
}

function stackTrace(event: EventRow): HTMLElement {
  const container = h("section", { id: "stacktrace" }, h("h2", {}, "Stack trace"));
  if (event.exception.length === 0) {
    container.append(h("pre", {}, event.rawStacktrace ?? event.message ?? "(no stack trace)"));
    return container;
  }
  // The chain as the client raised it: the cause first, the one that surfaced last; each
  // stack with the innermost frame on top, as people read them.
  for (const exception of [...event.exception].reverse()) {
    container.append(h("h3", {}, `${exception.type ?? "Error"}: ${exception.value ?? ""}`));
    const list = h("ol", { class: "frames" });
    for (const frame of [...exception.frames].reverse()) {
      const where = `${frame.filename ?? frame.module ?? "?"}${frame.lineno ? `:${frame.lineno}` : ""}${frame.colno ? `:${frame.colno}` : ""}`;
      const item = h(
        "li",
        { class: frame.inApp ? "frame in-app" : "frame" },
        h("code", { class: "function" }, frame.function ?? "<anonymous>"),
        " ",
        h("span", { class: "where" }, where),
      );
      if (frame.contextLine) {
        const lines = [
          ...frame.preContext.map((line) => h("div", {}, line)),
          h("div", { class: "context-line" }, frame.contextLine),
          ...frame.postContext.map((line) => h("div", {}, line)),
        ];
        item.append(h("pre", { class: "context" }, ...lines));
      }
      list.append(item);
    }
    container.append(list);
  }
  return container;
}

async function issueView(groupId: string): Promise<void> {
  clearView();
  const client = api as Api;
  const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
  const data = await client.query<{ group: GroupDetail | null }>(
    `query($id: ID!, $since: DateTime) { group(id: $id) {
      ${GROUP_FIELDS} exceptionType message firstRelease lastRelease
      histogram(interval: HOUR, since: $since) { start count }
      tags { key values { value count } }
      users(first: 10) { totalCount edges { node { externalId email eventCount } } pageInfo { hasNextPage endCursor } }
      accounts(first: 10) { totalCount edges { node { externalId name eventCount } } pageInfo { hasNextPage endCursor } }
      releases { name count lastSeen }
      environments { name count }
      events(first: 10) { totalCount pageInfo { hasNextPage endCursor } edges { node { ${EVENT_FIELDS} } } }
    } }`,
    { id: groupId, since },
  );
  const group = data.group;
  if (!group) {
    app.append(h("p", { class: "error" }, `No issue ${groupId}.`), h("a", { href: "#/" }, "Back to issues"));
    return;
  }
  const status = h("span", { id: "issue-status", class: `status ${group.status.toLowerCase()}` }, group.status.toLowerCase());
  const count = h("span", { id: "issue-count" }, String(group.count));
  const actions = h(
    "div",
    { id: "actions" },
    h("button", { "data-action": "resolve" }, "Resolve"),
    h("button", { "data-action": "ignore" }, "Ignore"),
    h("button", { "data-action": "unresolve" }, "Unresolve"),
    h("button", { "data-action": "delete", class: "danger" }, "Delete"),
  );
  actions.addEventListener("click", async (event) => {
    const action = (event.target as HTMLElement).dataset.action;
    if (!action) return;
    if (action === "delete" && !window.confirm("Delete this issue and its events?")) return;
    const field = { resolve: "resolveGroup", ignore: "ignoreGroup", unresolve: "unresolveGroup", delete: "deleteGroup" }[action];
    try {
      const result = await client.mutate<Record<string, { status?: string }>>(
        action === "delete"
          ? `mutation($id: ID!) { deleteGroup(id: $id) { id deleted } }`
          : `mutation($id: ID!) { ${field}(id: $id) { id status } }`,
        { id: groupId },
      );
      if (action === "delete") {
        window.location.hash = "#/";
        return;
      }
      const next = result[field as string]?.status ?? group.status;
      status.textContent = next.toLowerCase();
      status.className = `status ${next.toLowerCase()}`;
    } catch (error) {
      showError(error);
    }
  });

  const latest = group.events.edges[0]?.node;
  const list = (title: string, rows: Array<[string, string]>, id: string) =>
    h(
      "section",
      { id },
      h("h2", {}, title),
      rows.length === 0 ? h("p", { class: "muted" }, "none") : h("ul", {}, ...rows.map(([a, b]) => h("li", {}, h("strong", {}, a), " ", b))),
    );

  app.append(
    h("a", { href: "#/" }, "← Issues"),
    h("h1", { id: "issue-title" }, group.title),
    h(
      "p",
      { class: "meta" },
      status,
      " · ",
      count,
      " events · ",
      `${group.userCount} users · first seen ${ago(group.firstSeen)} · last seen ${ago(group.lastSeen)}`,
      group.isRegression ? h("span", { class: "badge" }, "regression") : null,
    ),
    actions,
    h("section", {}, h("h2", {}, "Events, last 24 hours"), chart(group.histogram)),
    latest ? stackTrace(latest) : h("p", {}, "No events."),
    h(
      "div",
      { class: "columns" },
      list("Tags", group.tags.map((tag) => [tag.key, tag.values.map((v) => `${v.value} (${v.count})`).join(", ")]), "tags"),
      list("Users", group.users.edges.map(({ node }) => [node.externalId, `${node.email ?? ""} ${node.eventCount} events`]), "users"),
      list("Accounts", group.accounts.edges.map(({ node }) => [node.externalId, `${node.name ?? ""} ${node.eventCount} events`]), "accounts"),
      list("Releases", group.releases.map((r) => [r.name, `${r.count} events, last ${ago(r.lastSeen)}`]), "releases"),
      list("Environments", group.environments.map((e) => [e.name, `${e.count} events`]), "environments"),
    ),
    h(
      "section",
      { id: "events" },
      h("h2", {}, `Latest events (${group.events.totalCount})`),
      ...group.events.edges.map(({ node }) =>
        h(
          "details",
          { class: "event" },
          h("summary", {}, `${node.timestamp} · ${node.level ?? ""} · ${node.environment ?? "no environment"} · ${node.release ?? "no release"}${node.user ? ` · ${node.user.externalId}` : ""}`),
          h(
            "ol",
            { class: "breadcrumbs" },
            ...(node.breadcrumbs ?? []).map((crumb) => h("li", {}, `${String(crumb.category ?? "")} ${String(crumb.message ?? "")}`)),
          ),
        ),
      ),
    ),
  );

  // Live: the count and status follow the issue.
  stopView.push(
    client.subscribe<{ groupUpdated: { kind: string; group: GroupRow | null } }>(
      `subscription($groupId: ID) { groupUpdated(groupId: $groupId) { kind group { ${GROUP_FIELDS} } } }`,
      { groupId },
      ({ groupUpdated }) => {
        if (!groupUpdated.group) return;
        count.textContent = String(groupUpdated.group.count);
        status.textContent = groupUpdated.group.status.toLowerCase();
        status.className = `status ${groupUpdated.group.status.toLowerCase()}`;
      },
    ),
  );
}

// ---- routing ----------------------------------------------------------------------------

async function ensureProjects(): Promise<void> {
  if (projects.length > 0) return;
  const data = await (api as Api).query<{ projects: Project[] }>("{ projects { id slug name } }");
  projects = data.projects;
  projectSelect.replaceChildren(...projects.map((p) => h("option", { value: p.id }, p.name)));
  const remembered = localStorage.getItem("errorgraph.project");
  if (remembered && projects.some((p) => p.id === remembered)) projectSelect.value = remembered;
  projectSelect.hidden = projects.length === 0;
}

async function route(): Promise<void> {
  const token = storedToken();
  if (!token) {
    signInView();
    return;
  }
  if (!api) {
    api = connect(token);
    api.onLive((live) => (liveBadge.hidden = !live));
    projects = [];
  }
  signOut.hidden = false;
  try {
    await ensureProjects();
    const match = window.location.hash.match(/^#\/issues\/(\d+)/);
    if (match) await issueView(match[1]);
    else if (projects.length === 0) {
      clearView();
      app.append(h("p", {}, "No projects yet: errorgraph project create NAME"));
    } else await listView(projectSelect.value);
  } catch (error) {
    showError(error);
  }
}

projectSelect.addEventListener("change", () => {
  localStorage.setItem("errorgraph.project", projectSelect.value);
  window.location.hash = "#/";
  route();
});
signOut.addEventListener("click", () => {
  storeToken(null);
  api?.close();
  api = null;
  projects = [];
  route();
});
window.addEventListener("hashchange", () => route());
route();
