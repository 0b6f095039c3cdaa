"""Subscribers of the same subscription share one execution of it.

A dashboard opened by a thousand people sends a thousand identical subscriptions. Run one
by one, each message was read, executed against the selection set and serialised a
thousand times, and that, not the WebSocket writes, was most of the time from commit to
the last subscriber's screen. So, over graphql-transport-ws, subscriptions with the same
document, variables, operation name and the same visibility (the viewer's scopes and
projects, which is all that resolvers look at) are one *stream*: the first subscriber
starts it, later ones join it, and each result is handed to every member.

What each member keeps for itself:

- its own bounded queue: a member that does not read (a stalled client, a full TCP
  buffer) has its oldest results dropped, counted with the pub/sub drops, while the
  stream and the other members go on. The stream itself never waits for a member;
- its own `next` messages and ids, its subscription limit per connection, its own
  `complete` when it leaves; the stream stops when its last member leaves.

A member that joins receives the results produced from then on, as a new subscription
would; errors a stream began with (a project it may not read) are replayed to anyone
who joins before it has ended. Queries and mutations sent over the socket, and the
legacy graphql-ws protocol, run as Strawberry runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from graphql import GraphQLError, OperationType, get_operation_ast, parse
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
    _OperationStreamClosed,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import CompleteMessage
from strawberry.utils.aio import aclosing

from app.pubsub import PubSubStats

from .context import Context

StreamKey = tuple[Any, ...]
_END = object()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


@dataclass(eq=False)
class _Member:
    """One subscriber's bounded queue of results."""

    limit: int
    stats: PubSubStats
    queue: deque[Any] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, item: Any) -> None:
        if item is not _END and not isinstance(item, _Failed) and len(self.queue) >= self.limit:
            self.queue.popleft()
            self.stats.dropped += 1
        self.queue.append(item)
        self.ready.set()

    async def results(self) -> AsyncIterator[Any]:
        while True:
            while not self.queue:
                self.ready.clear()
                await self.ready.wait()
            item = self.queue.popleft()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item


@dataclass(eq=False)
class _Stream:
    """One running execution and its members."""

    key: StreamKey
    members: set[_Member] = field(default_factory=set)
    # What the stream sent before its first data (errors), for members that join later.
    opening: list[Any] = field(default_factory=list)
    has_data: bool = False
    task: asyncio.Task[None] | None = None


class FanOut:
    """The streams of one app, by key."""

    def __init__(self) -> None:
        self._streams: dict[StreamKey, _Stream] = {}
        self.members = 0

    @property
    def streams(self) -> int:
        return len(self._streams)

    async def _run(
        self, stream: _Stream, start: Callable[[], Awaitable[AsyncIterator[Any]]]
    ) -> None:
        ending: Any = _END
        try:
            source = await start()
            async with aclosing(source):  # type: ignore[type-var]
                async for result in source:
                    if not stream.has_data:
                        if getattr(result, "data", None) is None and getattr(
                            result, "errors", None
                        ):
                            stream.opening.append(result)
                        else:
                            stream.has_data = True
                    for member in list(stream.members):
                        member.put(result)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            ending = _Failed(error)
        finally:
            if self._streams.get(stream.key) is stream:
                del self._streams[stream.key]
            for member in list(stream.members):
                member.put(ending)

    @asynccontextmanager
    async def join(
        self,
        key: StreamKey,
        start: Callable[[], Awaitable[AsyncIterator[Any]]],
        *,
        limit: int,
        stats: PubSubStats,
    ) -> AsyncIterator[AsyncIterator[Any]]:
        """The results of the stream `key` (started with `start` when none runs)."""
        member = _Member(limit=limit, stats=stats)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(key=key)
            stream.task = asyncio.create_task(self._run(stream, start), name="errorgraph-fanout")
        else:
            for item in stream.opening:
                member.put(item)
        stream.members.add(member)
        self.members += 1
        self._count(stats)
        try:
            yield member.results()
        finally:
            self.members -= 1
            stream.members.discard(member)
            if not stream.members and stream.task is not None and not stream.task.done():
                if self._streams.get(key) is stream:
                    del self._streams[key]
                stream.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await stream.task
            self._count(stats)

    def _count(self, stats: PubSubStats) -> None:
        # Each stream is one pub/sub subscription; the members beyond the first of each
        # are subscribers too (metrics add them to the open subscriptions).
        stats.joined = max(0, self.members - len(self._streams))


def _is_subscription(query: str, operation_name: str | None) -> bool:
    try:
        operation = get_operation_ast(parse(query), operation_name)
    except GraphQLError:
        return False
    return operation is not None and operation.operation is OperationType.SUBSCRIPTION


class SharingTransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws with identical subscriptions sharing one stream (see above).
    The view that makes it carries the `fanout` registry."""

    async def _stream_key(self, operation: Operation[Context, None]) -> StreamKey | None:
        if not isinstance(operation.query, str) or not _is_subscription(
            operation.query, operation.operation_name
        ):
            return None
        try:
            viewer = await self.context.viewer()
            variables = orjson.dumps(operation.variables or {}, option=orjson.OPT_SORT_KEYS)
        except Exception:
            return None  # let Strawberry answer it as it would
        projects = None if viewer.project_ids is None else tuple(sorted(viewer.project_ids))
        return (
            operation.query,
            variables,
            operation.operation_name,
            tuple(sorted(viewer.scopes)),
            projects,
        )

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        key = await self._stream_key(operation)
        if key is None:
            await super().run_operation(operation)
            return
        # The stream outlives the subscriber that started it: it runs on a context of its
        # own (same viewer and runtime), never on that subscriber's connection.
        context = dataclasses.replace(self.context)

        def start() -> Awaitable[Any]:
            return self.schema.stream(
                operation.query,
                variable_values=operation.variables,
                context_value=context,
                root_value=self.root_value,
                operation_name=operation.operation_name,
            )

        pubsub = self.context.runtime.pubsub
        fanout: FanOut = self.view.fanout  # type: ignore[attr-defined]
        try:
            async with fanout.join(
                key, start, limit=pubsub.queue_size, stats=pubsub.stats
            ) as results:
                await self._send_result_stream(operation, results)  # type: ignore[arg-type]
            await operation.send_operation_message(
                CompleteMessage(id=operation.id, type="complete")
            )
        except _OperationStreamClosed:
            return
        except Exception as error:
            await self.handle_task_exception(error)
            with contextlib.suppress(Exception):
                await operation.send_operation_message({"id": operation.id, "type": "complete"})
            self.operations.pop(operation.id, None)
            raise
