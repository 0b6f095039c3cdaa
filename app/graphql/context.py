"""Per-request context: who is asking, the runtime, and the dataloaders.

Loaders are built per request (never shared), and they hold the session *factory*, not a
session: Strawberry resolves sibling fields concurrently.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import strawberry
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from app.errors import Forbidden, InvalidKey
from app.models import Account, AffectedUser, Event, Group, Project
from app.services import events as event_service
from app.services import issues as issue_service
from app.services import keys as key_service
from app.services import people as people_service
from app.services.common import Sessions
from app.services.keys import Viewer
from app.services.runtime import Runtime

K = TypeVar("K")
V = TypeVar("V")


def _loader(fetch: Callable[[list[K]], Awaitable[dict[K, V]]]) -> DataLoader[K, V | None]:
    async def load(keys: Sequence[K]) -> list[V | None]:
        found = await fetch(list(keys))
        return [found.get(key) for key in keys]

    return DataLoader(load_fn=load)


class Loaders:
    """The dataloaders of one request (or of one subscription message), each made on first
    use: a subscription message needs one or two of them, and building all six for each
    subscriber of each message was a sixth of a message's cost at a thousand subscribers."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    @classmethod
    def build(cls, sessions: Sessions) -> Loaders:
        return cls(sessions)

    @cached_property
    def project(self) -> DataLoader[int, Project | None]:
        sessions = self._sessions

        async def projects(ids: list[int]) -> dict[int, Project]:
            rows = await key_service.list_projects(sessions=sessions, project_ids=ids)
            return {p.id: p for p in rows if p.id is not None}

        return _loader(projects)

    @cached_property
    def group(self) -> DataLoader[int, Group | None]:
        return _loader(lambda ids: issue_service.groups_by_ids(sessions=self._sessions, ids=ids))

    @cached_property
    def event(self) -> DataLoader[int, Event | None]:
        return _loader(lambda ids: event_service.events_by_ids(sessions=self._sessions, ids=ids))

    @cached_property
    def latest_event(self) -> DataLoader[int, Event | None]:
        return _loader(
            lambda ids: event_service.latest_events_by_group(sessions=self._sessions, group_ids=ids)
        )

    @cached_property
    def user(self) -> DataLoader[int, AffectedUser | None]:
        return _loader(
            lambda ids: people_service.people_by_ids(sessions=self._sessions, kind="user", ids=ids)
        )

    @cached_property
    def account(self) -> DataLoader[int, Account | None]:
        return _loader(
            lambda ids: people_service.people_by_ids(
                sessions=self._sessions, kind="account", ids=ids
            )
        )


@dataclass
class Context:
    request: Request | WebSocket
    response: Response | None
    runtime: Runtime
    loaders: Loaders
    secret: str | None
    connection_params: dict[str, Any] | None = None
    _viewer: Viewer | None = field(default=None)
    _auth_error: Exception | None = field(default=None)

    @property
    def sessions(self) -> Sessions:
        return self.runtime.database.sessions

    async def viewer(self) -> Viewer:
        """Who is asking; raises UNAUTHENTICATED for no or bad credentials."""
        if self._viewer is None:
            if self._auth_error is not None:
                raise self._auth_error
            try:
                self._viewer = await key_service.viewer_for_secret(
                    sessions=self.sessions, secret=self.secret
                )
            except (InvalidKey, Forbidden) as exc:
                self._auth_error = exc
                raise
        return self._viewer

    async def require(self, scope: str, project_id: int | None = None) -> Viewer:
        viewer = await self.viewer()
        if not viewer.may(scope):
            raise Forbidden(f"this needs the {scope!r} scope")
        if project_id is not None and not viewer.can_see(project_id):
            raise Forbidden("this project is outside your token's projects")
        return viewer


Info = strawberry.Info[Context, None]


def bearer_secret(headers: Any) -> str | None:
    """The secret of `Authorization: Bearer <secret>` (or a bare secret)."""
    value = headers.get("authorization") if headers is not None else None
    if not value:
        return None
    scheme, _, rest = str(value).strip().partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        return rest.strip()
    return str(value).strip() if not rest else None
