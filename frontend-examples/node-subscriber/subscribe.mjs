#!/usr/bin/env node
// Print errorgraph's new issues (or events, or issue changes) as they arrive.
//
//   node subscribe.mjs --url http://127.0.0.1:8000 --token egt_… [--project 1]
//        [--environment production] [--level ERROR] [--events] [--changes] [--json]
//
// One line per message on stdout; "subscribed" on stderr once the server has accepted the
// subscription. Reconnects by itself (graphql-ws retries) and exits on Ctrl-C.
import { parseArgs } from "node:util";
import { createClient } from "graphql-ws";
import WebSocket from "ws";

const { values: args } = parseArgs({
  options: {
    url: { type: "string", default: process.env.ERRORGRAPH_URL ?? "http://127.0.0.1:8000" },
    token: { type: "string", default: process.env.ERRORGRAPH_TOKEN },
    project: { type: "string" },
    environment: { type: "string" },
    level: { type: "string" },
    events: { type: "boolean", default: false },
    changes: { type: "boolean", default: false },
    json: { type: "boolean", default: false },
  },
});

if (!args.token) {
  console.error("errorgraph-subscribe: --token (or ERRORGRAPH_TOKEN) is required");
  process.exit(2);
}

const endpoint = args.url.replace(/^http/, "ws").replace(/\/$/, "") + "/graphql";

let query;
let variables;
let format;
if (args.events) {
  query = `subscription($projectId: ID, $level: Level) {
    eventCaptured(projectId: $projectId, level: $level) {
      eventId timestamp level environment message exception { type value } group { id title count }
    }
  }`;
  variables = { projectId: args.project, level: args.level };
  format = ({ eventCaptured: e }) =>
    `${e.timestamp} ${e.level} event ${e.eventId} in issue ${e.group?.id}: ${e.group?.title}`;
} else if (args.changes) {
  query = `subscription($projectId: ID) {
    groupUpdated(projectId: $projectId) { kind groupId group { title status count } }
  }`;
  variables = { projectId: args.project };
  format = ({ groupUpdated: c }) =>
    `${c.kind} issue ${c.groupId}` + (c.group ? ` (${c.group.status}, ${c.group.count} events): ${c.group.title}` : "");
} else {
  query = `subscription($projectId: ID, $environment: String, $level: Level) {
    groupCreated(projectId: $projectId, environment: $environment, level: $level) {
      id title culprit level count firstSeen project { slug }
    }
  }`;
  variables = { projectId: args.project, environment: args.environment, level: args.level };
  format = ({ groupCreated: g }) =>
    `${g.firstSeen} new issue ${g.id} [${g.project.slug}] ${g.level}: ${g.title}` +
    (g.culprit ? ` at ${g.culprit}` : "");
}

const client = createClient({
  url: endpoint,
  webSocketImpl: WebSocket,
  connectionParams: { Authorization: `Bearer ${args.token}` },
  retryAttempts: Infinity,
  shouldRetry: (event) => !(event && event.code === 4403),
  on: {
    connected: () => console.error("connected"),
    closed: (event) => {
      if (event && event.code === 4403) {
        console.error("errorgraph-subscribe: the server refused the token (4403)");
        process.exit(1);
      }
    },
  },
});

const unsubscribe = client.subscribe(
  { query, variables },
  {
    next: (result) => {
      if (result.errors) {
        console.error("errorgraph-subscribe:", result.errors.map((e) => e.message).join("; "));
        return;
      }
      console.log(args.json ? JSON.stringify(result.data) : format(result.data));
    },
    error: (error) => {
      console.error("errorgraph-subscribe:", error?.message ?? error?.reason ?? String(error));
      process.exit(1);
    },
    complete: () => process.exit(0),
  },
);

// graphql-ws has no "subscribed" callback: the server acknowledges the connection, and the
// subscription is registered right after; say so once connected.
client.on("connected", () => setTimeout(() => console.error("subscribed"), 200));

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    unsubscribe();
    client.dispose();
    process.exit(0);
  });
}
