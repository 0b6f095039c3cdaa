"""Projects, the keys clients send, and the API tokens.

Secrets are random 128-bit values, so a plain SHA-256 is enough to make a leaked
database useless to an attacker (no dictionary to try) while keeping the lookup on every
ingest request to one indexed equality. The stored hash is compared again in constant
time. A secret is shown once, when created.

Ingest looks a key up on every request, and that lookup (a session, a query, a hop to the
database thread and back) was a seventh of the work of a one-event request. So each
process remembers the keys it found, with their project, for `key_cache_seconds`
(`ERRORGRAPH_KEY_CACHE_SECONDS`, 5 s by default; 0 turns it off), as Sentry's Relay keeps
project configurations. A key revoked or a project changed through this process takes
effect here with the next request (the entries are dropped); another process sees it
within that time. Unknown keys are never remembered: each guess costs a query, and the
per-address limit bounds the guesses. Revocation times and scopes are checked on every
request, cached or not.

API tokens are remembered the same way and for as long: every GraphQL request presents
one, and looking it up was one of the three sessions a list of issues opened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import re
import secrets
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Generic, Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.grouping import STRATEGIES
from app.errors import Forbidden, InvalidInput, InvalidKey, NotFound, Unavailable
from app.models import ApiToken, Project, ProjectKey, utcnow
from app.services.common import PerDatabase

KEY_SCOPES = ("ingest", "read", "write")
TOKEN_SCOPES = ("read", "write", "admin")
INGEST_KEY_PREFIX = "pk_"
API_KEY_PREFIX = "sk_"
TOKEN_PREFIX = "egt_"

V = TypeVar("V")

Sessions = async_sessionmaker[AsyncSession]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _new_secret(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _normalise_scopes(scopes: Iterable[str], allowed: tuple[str, ...], field: str) -> str:
    chosen = []
    for scope in scopes:
        scope = scope.strip().lower()
        if scope not in allowed:
            raise InvalidInput(
                f"unknown scope {scope!r}; expected one of {', '.join(allowed)}", field=field
            )
        if scope not in chosen:
            chosen.append(scope)
    if not chosen:
        raise InvalidInput("at least one scope is needed", field=field)
    return ",".join(sorted(chosen, key=allowed.index))


def slugify(name: str) -> str:
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:80] or "project"


@dataclass(frozen=True)
class CreatedKey:
    key: ProjectKey
    secret: str


@dataclass(frozen=True)
class CreatedToken:
    token: ApiToken
    secret: str


@dataclass(frozen=True)
class CreatedProject:
    project: Project
    ingest_key: CreatedKey
    api_key: CreatedKey
    token: CreatedToken


@dataclass(frozen=True)
class KeyGrant:
    """What a presented project key may do."""

    project: Project
    key_id: int
    scopes: frozenset[str]


@dataclass
class SecretCache(Generic[V]):
    """What one process found lately for each secret's digest, per database (see the
    module's docstring): a key with its project, or a token."""

    seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    max_entries: int = 10_000
    entries: dict[str, tuple[float, V]] = dataclasses.field(default_factory=dict)

    # Lookups in flight by digest: when an entry expires, every request then in flight
    # with the secret waits for one query instead of each sending its own (32 clients
    # sent 32 at once, every `seconds`).
    pending: dict[str, asyncio.Future[V | None]] = dataclasses.field(default_factory=dict)

    async def found_or_loaded(
        self, digest: str, load: Callable[[], Awaitable[V | None]]
    ) -> V | None:
        """The entry for `digest`, or what `load()` finds, remembered when found; one
        `load()` shared with the callers that ask for `digest` while it runs."""
        value = self.get(digest)
        if value is not None:
            return value
        pending = self.pending.get(digest)
        if pending is None:

            async def load_and_keep() -> V | None:
                found = await load()
                if found is not None:
                    self.put(digest, found)
                return found

            pending = asyncio.ensure_future(load_and_keep())
            self.pending[digest] = pending
            pending.add_done_callback(lambda _: self.pending.pop(digest, None))
        # One caller giving up (a client gone) does not cancel the others' lookup.
        return await asyncio.shield(pending)

    def get(self, digest: str) -> V | None:
        found = self.entries.get(digest)
        if found is None:
            return None
        if found[0] <= self.clock():
            del self.entries[digest]
            return None
        return found[1]

    def put(self, digest: str, value: V) -> None:
        if self.seconds <= 0:
            return
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        self.entries[digest] = (self.clock() + self.seconds, value)

    def forget(self, which: Callable[[V], bool]) -> None:
        for digest in [d for d, (_, value) in self.entries.items() if which(value)]:
            del self.entries[digest]


KeyRow = tuple[ProjectKey, Project]
# The caches of the database behind a session factory (the runtime sets their lifetime).
key_cache_for: PerDatabase[SecretCache[KeyRow]] = PerDatabase(SecretCache)
token_cache_for: PerDatabase[SecretCache[ApiToken]] = PerDatabase(SecretCache)


def _forget_project(sessions: Sessions, project_id: int) -> None:
    key_cache_for(sessions).forget(lambda row: row[1].id == project_id)


@dataclass(frozen=True)
class TokenGrant:
    """What a presented API token may do; `project_ids` None means every project."""

    token_id: int
    scopes: frozenset[str]
    project_ids: frozenset[int] | None

    def can_see(self, project_id: int) -> bool:
        return self.project_ids is None or project_id in self.project_ids


def _add_key(session: AsyncSession, *, project_id: int, scopes: str, label: str) -> CreatedKey:
    prefix = INGEST_KEY_PREFIX if scopes == "ingest" else API_KEY_PREFIX
    secret = _new_secret(prefix)
    key = ProjectKey(
        project_id=project_id,
        label=label,
        prefix=secret[: len(prefix) + 6],
        key_hash=hash_secret(secret),
        scopes=scopes,
    )
    session.add(key)
    return CreatedKey(key=key, secret=secret)


def _add_token(
    session: AsyncSession, *, scopes: str, label: str, project_ids: list[int] | None
) -> CreatedToken:
    secret = _new_secret(TOKEN_PREFIX)
    token = ApiToken(
        label=label,
        prefix=secret[: len(TOKEN_PREFIX) + 6],
        token_hash=hash_secret(secret),
        scopes=scopes,
        project_ids=project_ids,
    )
    session.add(token)
    return CreatedToken(token=token, secret=secret)


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidInput("the project name must not be empty", field="name")
    if len(name) > 200:
        raise InvalidInput("the project name is longer than 200 characters", field="name")
    return name


def _checked_label(label: str) -> str:
    """The column holds 200 characters: PostgreSQL refuses more, SQLite would keep them."""
    if len(label) > 200:
        raise InvalidInput("the label is longer than 200 characters", field="label")
    return label


def _checked_strategy(grouping_strategy: str) -> str:
    if grouping_strategy not in STRATEGIES:
        known = ", ".join(sorted(STRATEGIES))
        raise InvalidInput(
            f"unknown grouping strategy {grouping_strategy!r}; expected one of {known}",
            field="grouping_strategy",
        )
    return grouping_strategy


def _first_free_slug(base: str, taken: set[str]) -> str:
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    return slug


async def _free_slug(session: AsyncSession, name: str) -> str:
    base = slugify(name)
    taken = set(
        (
            await session.scalars(
                select(Project.slug).where(Project.slug.like(f"{base}%"))  # type: ignore[attr-defined]
            )
        ).all()
    )
    return _first_free_slug(base, taken)


async def create_project(
    *, sessions: Sessions, name: str, grouping_strategy: str = "frames"
) -> CreatedProject:
    """A project with what a new user needs at once: an ingest key (safe in a browser),
    a read/write key, and an admin token limited to the project. `grouping_strategy`
    names an entry of `app.domain.grouping.STRATEGIES`."""
    name = _checked_name(name)
    grouping_strategy = _checked_strategy(grouping_strategy)
    async with sessions.begin() as session:
        slug = await _free_slug(session, name)
        project = Project(name=name, slug=slug, grouping_strategy=grouping_strategy)
        session.add(project)
        await session.flush()
        assert project.id is not None
        ingest = _add_key(session, project_id=project.id, scopes="ingest", label="default ingest")
        api = _add_key(session, project_id=project.id, scopes="read,write", label="default api")
        token = _add_token(
            session, scopes="admin,read,write", label=f"{slug} admin", project_ids=[project.id]
        )
    return CreatedProject(project=project, ingest_key=ingest, api_key=api, token=token)


async def list_projects(
    *, sessions: Sessions, project_ids: Iterable[int] | None = None
) -> list[Project]:
    query = select(Project).order_by(Project.id)
    if project_ids is not None:
        query = query.where(Project.id.in_(list(project_ids)))  # type: ignore[union-attr]
    async with sessions() as session:
        return list((await session.scalars(query)).all())


async def _oldest_named(sessions: Sessions, name: str) -> Project | None:
    async with sessions() as session:
        query = select(Project).where(Project.name == name).order_by(Project.id).limit(1)  # type: ignore[arg-type]
        return (await session.scalars(query)).first()


async def project_by_name(*, sessions: Sessions, name: str) -> Project:
    """The project called `name` (the oldest, when several share it)."""
    project = await _oldest_named(sessions, name.strip())
    if project is None:
        raise NotFound(f"no project named {name!r}", field="project")
    return project


async def project_for_name(
    *, sessions: Sessions, name: str, grouping_strategy: str = "frames"
) -> Project:
    """The project called `name`, created with `grouping_strategy` when there is none.

    For clients that name their project in every report and expect it to exist from the
    first one. Only the project is created, no keys: such clients authenticate with a
    server-wide key. Two requests creating the same name at once settle on one project:
    the loser's insert fails (on SQLite's write lock, or on PostgreSQL's unique slug) and
    it reads the winner's; were both to succeed, the oldest is everyone's answer.
    """
    name = _checked_name(name)
    grouping_strategy = _checked_strategy(grouping_strategy)
    found = await _oldest_named(sessions, name)
    if found is not None:
        return found
    try:
        async with sessions.begin() as session:
            # The name and the slugs in one statement, inside the inserting transaction: a
            # concurrent creator is either seen here (by its name) or makes this insert
            # fail (its slug is the same), never neither.
            base = slugify(name)
            rows = (
                await session.execute(
                    select(Project.slug, Project.name).where(
                        Project.slug.like(f"{base}%") | (Project.name == name)  # type: ignore[attr-defined]
                    )
                )
            ).all()
            if all(row_name != name for _, row_name in rows):
                slug = _first_free_slug(base, {row_slug for row_slug, _ in rows})
                session.add(Project(name=name, slug=slug, grouping_strategy=grouping_strategy))
    except (IntegrityError, OperationalError):
        pass
    found = await _oldest_named(sessions, name)
    if found is None:
        raise Unavailable(f"could not create project {name!r}; try again")
    return found


async def project_by_id_or_slug(*, sessions: Sessions, ref: str | int) -> Project:
    async with sessions() as session:
        text = str(ref)
        query = (
            select(Project).where(Project.id == int(text))
            if text.isdigit()
            else select(Project).where(Project.slug == text)
        )
        project = (await session.scalars(query)).first()
    if project is None:
        raise NotFound(f"no project {ref!r}", field="project")
    return project


class Unchanged(Enum):
    """A setting left as it is (where None has its own meaning)."""

    KEEP = "keep"


KEEP = Unchanged.KEEP
Keep = Literal[Unchanged.KEEP]
MAX_SCRUB_FIELDS = 100
MAX_EVENTS_LIMIT = 1_000_000_000


def _checked_scrub_fields(fields: Iterable[str] | None) -> list[str] | None:
    chosen: list[str] = []
    for field in fields or ():
        name = field.strip()
        if not name:
            continue
        if len(name) > 100 or not any(char.isalnum() for char in name):
            raise InvalidInput(
                f"{name[:100]!r} is not a field name (letters or digits, at most 100)",
                field="scrub_fields",
            )
        if name not in chosen:
            chosen.append(name)
    if len(chosen) > MAX_SCRUB_FIELDS:
        raise InvalidInput(
            f"at most {MAX_SCRUB_FIELDS} scrub fields; got {len(chosen)}", field="scrub_fields"
        )
    return chosen or None


def _checked_events_limit(value: int | None, field: str) -> int | None:
    if value is not None and not 0 <= value <= MAX_EVENTS_LIMIT:
        raise InvalidInput(
            f"must be from 0 (no limit) to {MAX_EVENTS_LIMIT}, or null for the server default",
            field=field,
        )
    return value


async def update_project_settings(
    *,
    sessions: Sessions,
    project_id: int,
    scrub_fields: Iterable[str] | Keep | None = KEEP,
    scrub_ip_addresses: bool | Keep = KEEP,
    events_per_minute: int | Keep | None = KEEP,
    events_per_hour: int | Keep | None = KEEP,
) -> Project:
    """Change a project's scrubbing and quota settings; what is not given stays.

    `scrub_fields` are key names filtered on top of the defaults (None or empty: none);
    `scrub_ip_addresses` drops client addresses before storage. `events_per_minute` and
    `events_per_hour` are the project keys' quotas: None takes the server's default, 0
    means no limit. Takes effect with the next request in this process, in the others
    within their key cache's lifetime.
    """
    changes: dict[str, object] = {}
    if scrub_fields is not KEEP:
        changes["scrub_fields"] = _checked_scrub_fields(scrub_fields)
    if scrub_ip_addresses is not KEEP:
        changes["scrub_ip_addresses"] = bool(scrub_ip_addresses)
    if events_per_minute is not KEEP:
        changes["events_per_minute"] = _checked_events_limit(events_per_minute, "events_per_minute")
    if events_per_hour is not KEEP:
        changes["events_per_hour"] = _checked_events_limit(events_per_hour, "events_per_hour")
    async with sessions.begin() as session:
        project = await session.get(Project, project_id)
        if project is None:
            raise NotFound(f"no project {project_id}", field="project")
        for name, value in changes.items():
            setattr(project, name, value)
    _forget_project(sessions, project_id)
    return project


async def create_project_key(
    *, sessions: Sessions, project_id: int, scopes: Iterable[str], label: str = ""
) -> CreatedKey:
    chosen = _normalise_scopes(scopes, KEY_SCOPES, "scopes")
    label = _checked_label(label)
    async with sessions.begin() as session:
        if await session.get(Project, project_id) is None:
            raise NotFound(f"no project {project_id}", field="project")
        created = _add_key(session, project_id=project_id, scopes=chosen, label=label)
    return created


async def list_project_keys(*, sessions: Sessions, project_id: int) -> list[ProjectKey]:
    async with sessions() as session:
        query = select(ProjectKey).where(ProjectKey.project_id == project_id)
        return list((await session.scalars(query.order_by(ProjectKey.id))).all())  # type: ignore[arg-type]


async def revoke_project_key(*, sessions: Sessions, key_id: int) -> ProjectKey:
    async with sessions.begin() as session:
        key = await session.get(ProjectKey, key_id)
        if key is None:
            raise NotFound(f"no key {key_id}", field="id")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
    _forget_project(sessions, key.project_id)
    return key


async def create_api_token(
    *,
    sessions: Sessions,
    scopes: Iterable[str],
    label: str = "",
    project_ids: list[int] | None = None,
) -> CreatedToken:
    chosen = _normalise_scopes(scopes, TOKEN_SCOPES, "scope")
    label = _checked_label(label)
    if project_ids is not None and not project_ids:
        raise InvalidInput(
            "a token limited to no project could do nothing: name at least one, or none "
            "for every project",
            field="project",
        )
    async with sessions.begin() as session:
        for project_id in project_ids or []:
            if await session.get(Project, project_id) is None:
                raise NotFound(f"no project {project_id}", field="project")
        created = _add_token(session, scopes=chosen, label=label, project_ids=project_ids)
    return created


async def list_api_tokens(*, sessions: Sessions) -> list[ApiToken]:
    async with sessions() as session:
        return list((await session.scalars(select(ApiToken).order_by(ApiToken.id))).all())  # type: ignore[arg-type]


async def api_token_by_id(*, sessions: Sessions, token_id: int) -> ApiToken:
    async with sessions() as session:
        token = await session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"no token {token_id}", field="id")
    return token


async def revoke_api_token(*, sessions: Sessions, token_id: int) -> ApiToken:
    """Refused from now on by this process; by the others once their cached entry ends
    (`key_cache_seconds`), as a revoked key is."""
    async with sessions.begin() as session:
        token = await session.get(ApiToken, token_id)
        if token is None:
            raise NotFound(f"no token {token_id}", field="id")
        if token.revoked_at is None:
            token.revoked_at = utcnow()
    token_cache_for(sessions).forget(lambda cached: cached.id == token_id)
    return token


async def grant_for_project_key(
    *,
    sessions: Sessions,
    secret: str | None,
    scope: str = "ingest",
    project_id: int | None = None,
    now: datetime | None = None,
) -> KeyGrant:
    """The project a key belongs to, checked for `scope` and, when given, `project_id`.

    Raises InvalidKey for a missing, unknown or revoked key, Forbidden for a key of
    another project or without the scope.
    """
    if not secret:
        raise InvalidKey("no key given")
    digest = hash_secret(secret)

    async def load() -> KeyRow | None:
        async with sessions() as session:
            found = (
                await session.execute(
                    select(ProjectKey, Project)
                    .join(Project, Project.id == ProjectKey.project_id)  # type: ignore[arg-type]
                    .where(ProjectKey.key_hash == digest)
                )
            ).first()
        if found is None or not hmac.compare_digest(found[0].key_hash, digest):
            return None
        return found[0], found[1]

    row = await key_cache_for(sessions).found_or_loaded(digest, load)
    if row is None:
        raise InvalidKey("invalid key")
    key, project = row
    if key.revoked_at is not None and key.revoked_at <= (now or utcnow()):
        raise InvalidKey("key revoked")
    scopes = frozenset(key.scopes.split(","))
    # A key that may write may also send events; an ingest key may do nothing else.
    if scope not in scopes and not (scope == "ingest" and "write" in scopes):
        raise Forbidden(f"this key has no {scope!r} scope")
    if project_id is not None and project.id != project_id:
        raise Forbidden("this key belongs to another project")
    assert key.id is not None
    return KeyGrant(project=project, key_id=key.id, scopes=scopes)


async def grant_for_token(*, sessions: Sessions, secret: str | None) -> TokenGrant:
    if not secret:
        raise InvalidKey("no token given")
    digest = hash_secret(secret)

    async def load() -> ApiToken | None:
        async with sessions() as session:
            found = (
                await session.scalars(select(ApiToken).where(ApiToken.token_hash == digest))
            ).first()
        if found is None or not hmac.compare_digest(found.token_hash, digest):
            return None
        return found

    token = await token_cache_for(sessions).found_or_loaded(digest, load)
    if token is None:
        raise InvalidKey("invalid token")
    if token.revoked_at is not None:
        raise InvalidKey("token revoked")
    assert token.id is not None
    return TokenGrant(
        token_id=token.id,
        scopes=frozenset(token.scopes.split(",")),
        project_ids=frozenset(token.project_ids) if token.project_ids is not None else None,
    )


@dataclass(frozen=True)
class Viewer:
    """Who is calling the API and what they may do: from an API token, or from a project
    key with read/write scope (limited to its project). `project_ids` None means all."""

    scopes: frozenset[str]
    project_ids: frozenset[int] | None
    token_id: int | None = None
    key_id: int | None = None

    def can_see(self, project_id: int) -> bool:
        return self.project_ids is None or project_id in self.project_ids

    def can_see_all(self, project_ids: Iterable[int] | None) -> bool:
        """Whether every project of `project_ids` (None: every project there is) is the
        caller's: a token limited to some projects must not reach a wider one."""
        if self.project_ids is None:
            return True
        return project_ids is not None and set(project_ids) <= self.project_ids

    def may(self, scope: str) -> bool:
        """admin implies write, write implies read."""
        implied = {"read": {"read", "write", "admin"}, "write": {"write", "admin"}}
        return bool(self.scopes & implied.get(scope, {scope}))


async def viewer_for_secret(*, sessions: Sessions, secret: str | None) -> Viewer:
    """The viewer a bearer secret stands for: API token or read/write project key."""
    if not secret:
        raise InvalidKey("no credentials: send Authorization: Bearer <token>")
    if secret.startswith(TOKEN_PREFIX):
        grant = await grant_for_token(sessions=sessions, secret=secret)
        return Viewer(scopes=grant.scopes, project_ids=grant.project_ids, token_id=grant.token_id)
    try:
        key = await grant_for_project_key(sessions=sessions, secret=secret, scope="read")
    except Forbidden:
        raise Forbidden("an ingest key can only send events; use an API key or token") from None
    assert key.project.id is not None
    return Viewer(
        scopes=key.scopes - {"ingest"},
        project_ids=frozenset({key.project.id}),
        key_id=key.key_id,
    )


async def project_key_by_id(*, sessions: Sessions, key_id: int) -> ProjectKey:
    async with sessions() as session:
        key = await session.get(ProjectKey, key_id)
    if key is None:
        raise NotFound(f"no key {key_id}", field="id")
    return key
