"""Publishing what ingest and state changes committed, and fanning it out to this
process's subscribers, through `broadcaster` (memory, Redis or PostgreSQL).

Messages carry ids, never payloads: a subscriber reads fresh data in its own short
session, and PostgreSQL's NOTIFY caps payloads at 8000 bytes.

One broadcaster subscription per channel serves every local subscriber. Each local
subscriber has a bounded queue that drops its oldest message when full and counts the
drop, so a slow WebSocket client never slows ingest or the other subscribers.

The connection to the broker is supervised. broadcaster does not reconnect by itself, and
its PostgreSQL backend does not even notice a lost connection, so besides watching its
listener task we send ourselves a heartbeat: when none has come back in time, the
broker is taken as gone, and we reconnect with backoff and subscribe again. Local
subscribers stay registered across a reconnect, so they are resumed; what was published
while the broker was away is lost to them (they catch up with a query, see the README).
Publishing while the broker is away fails fast and is logged by the caller: ingest goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NotRequired, TypedDict

import orjson
from broadcaster import Broadcast

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "errorgraph."
GROUP_CREATED = CHANNEL_PREFIX + "group.created"
EVENT_CAPTURED = CHANNEL_PREFIX + "event.captured"
GROUP_UPDATED = CHANNEL_PREFIX + "group.updated"
CHANNELS = (GROUP_CREATED, EVENT_CAPTURED, GROUP_UPDATED)


class GroupCreatedMessage(TypedDict):
    group_id: int
    project_id: int


class EventCapturedMessage(TypedDict):
    event_id: int
    group_id: int
    project_id: int


class GroupUpdatedMessage(TypedDict):
    group_id: int
    project_id: int
    kind: str  # NEW_EVENT | STATUS | REGRESSION | DELETED | MERGED
    # NEW_EVENT and REGRESSION: the group's first event stored by the batch.
    event_id: NotRequired[int]


# The largest pack of messages `publish_many` sends as one (bytes of JSON): PostgreSQL's
# NOTIFY refuses payloads of 8000 bytes and more.
PACK_BYTES = 7000


def _packs(messages: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, str, int]]:
    """(channel, payload, messages in it): each run of one channel's messages as JSON
    lists of at most PACK_BYTES, a message alone as itself."""
    channel: str | None = None
    parts: list[bytes] = []
    size = 0

    def pack() -> tuple[str, str, int]:
        assert channel is not None
        if len(parts) == 1:
            return channel, parts[0].decode(), 1
        return channel, "[" + b",".join(parts).decode() + "]", len(parts)

    for name, message in messages:
        part = orjson.dumps(message)
        if parts and (name != channel or size + len(part) + 1 > PACK_BYTES - 2):
            yield pack()
            parts, size = [], 0
        channel = name
        parts.append(part)
        size += len(part) + 1
    if parts:
        yield pack()


class BrokerUnavailable(Exception):
    """The pub/sub broker cannot be reached right now."""


class Delivery(NamedTuple):
    """One message as this process received it; `number` is unique per process, so the
    subscribers of one delivery can tell it apart from a later message about the same ids."""

    channel: str
    message: dict[str, Any]
    number: int


@dataclass
class PubSubStats:
    """Counters for metrics: what was delivered, dropped for slow consumers, reconnects."""

    published: int = 0
    publish_failures: int = 0
    delivered: int = 0
    dropped: int = 0
    reconnects: int = 0
    subscribers: int = 0
    # GraphQL subscribers served by another's identical subscription (app.graphql.fanout).
    joined: int = 0
    connected: bool = False


@dataclass(eq=False)
class Subscription:
    """One local subscriber's bounded queue of (channel, message)."""

    channels: frozenset[str]
    limit: int
    stats: PubSubStats
    queue: deque[Delivery] = field(default_factory=deque)
    dropped: int = 0
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, delivery: Delivery) -> None:
        if len(self.queue) >= self.limit:
            self.queue.popleft()
            self.dropped += 1
            self.stats.dropped += 1
        self.queue.append(delivery)
        self._ready.set()

    async def get(self) -> tuple[str, dict[str, Any]]:
        """The next (channel, message)."""
        delivery = await self.get_delivery()
        return delivery.channel, delivery.message

    async def get_delivery(self) -> Delivery:
        """The next message with its delivery number."""
        while not self.queue:
            self._ready.clear()
            await self._ready.wait()
        return self.queue.popleft()


class PubSub:
    """A supervised broadcaster connection and this process's subscribers."""

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 1000,
        heartbeat_interval: float = 2.0,
        heartbeat_timeout: float = 6.0,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 10.0,
    ) -> None:
        self.url = url
        self.queue_size = queue_size
        self.stats = PubSubStats()
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._heartbeat_channel = f"{CHANNEL_PREFIX}heartbeat.{uuid.uuid4().hex}"
        self._subscriptions: set[Subscription] = set()
        self._broadcast: Broadcast | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._last_heartbeat = 0.0
        self._sequence = 0
        # One publish at a time: broadcaster's PostgreSQL backend sends NOTIFY on the one
        # connection it listens on, and asyncpg refuses a second operation in progress
        # (the heartbeat's, a mutation's and the writer's publishes overlap otherwise).
        self._publishing = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def connect(self, *, wait: float = 10.0) -> None:
        """Start the supervisor and wait (up to `wait` seconds) for the first connection.

        A broker that is down at start does not stop the server: ingest does not need it,
        and the supervisor keeps trying.
        """
        self._supervisor = asyncio.create_task(self._supervise(), name="errorgraph-pubsub")
        try:
            await asyncio.wait_for(asyncio.shield(self._connected.wait()), wait)
        except TimeoutError:
            log.warning("starting without pub/sub: %s does not answer yet", self.url)

    async def disconnect(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None

    async def publish(self, channel: str, message: Any) -> None:
        await self.publish_many([(channel, message)])

    async def publish_many(self, messages: Sequence[tuple[str, Any]]) -> None:
        """Publish `messages` (channel, message) in their order, packed: consecutive
        messages of one channel travel as one JSON list, read back one by one (`_dispatch`).
        Raises BrokerUnavailable when any could not be published (the others were).

        A batch of events makes a few messages per event; sent one command each, the Redis
        client's round trips cost the server more than the rest of storing the event (a
        batch of 100 events: 0.56 instead of 0.33 ms of CPU per event). A pack stays under
        `PACK_BYTES`, within PostgreSQL's 8000-byte NOTIFY payloads.
        """
        failed: list[str] = []
        for channel, payload, count in _packs(messages):
            broadcast = self._broadcast
            if broadcast is None or not self.connected:
                self.stats.publish_failures += count
                failed.append("the pub/sub broker is not connected")
                continue
            try:
                async with self._publishing:
                    await broadcast.publish(channel=channel, message=payload)
            except Exception as exc:
                self.stats.publish_failures += count
                failed.append(f"publishing failed: {exc}")
                continue
            self.stats.published += count
        if failed:
            raise BrokerUnavailable(failed[0])

    @asynccontextmanager
    async def subscribe(self, channels: Iterable[str] | str) -> AsyncIterator[Subscription]:
        """A local subscription to `channels`, removed when the block ends."""
        names = frozenset([channels] if isinstance(channels, str) else channels)
        unknown = names - set(CHANNELS)
        if unknown:
            raise ValueError(f"unknown channels: {sorted(unknown)}")
        subscription = Subscription(channels=names, limit=self.queue_size, stats=self.stats)
        self._subscriptions.add(subscription)
        self.stats.subscribers = len(self._subscriptions)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            self.stats.subscribers = len(self._subscriptions)

    def _dispatch(self, channel: str, raw: str) -> None:
        if channel == self._heartbeat_channel:
            self._last_heartbeat = asyncio.get_running_loop().time()
            return
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("ignoring a message that is not JSON on %s", channel)
            return
        subscriptions = [s for s in self._subscriptions if channel in s.channels]
        # A list is a pack of messages (`publish_many`), delivered one by one.
        for message in parsed if type(parsed) is list else (parsed,):
            if type(message) is not dict:
                log.warning("ignoring a message that is not an object on %s", channel)
                continue
            # Subscribers of this one delivery share reads of it (see the GraphQL layer).
            self._sequence += 1
            delivery = Delivery(channel, message, self._sequence)
            for subscription in subscriptions:
                subscription.put(delivery)
                self.stats.delivered += 1

    async def _read(self, broadcast: Broadcast, channel: str, ready: asyncio.Event) -> None:
        async with broadcast.subscribe(channel=channel) as subscriber:
            ready.set()
            async for event in subscriber:  # type: ignore[union-attr]
                if event is not None:
                    self._dispatch(event.channel, event.message)

    async def _heartbeat(self, broadcast: Broadcast) -> None:
        loop = asyncio.get_running_loop()
        self._last_heartbeat = loop.time()
        while True:
            async with self._publishing:
                await broadcast.publish(channel=self._heartbeat_channel, message="{}")
            asleep = loop.time()
            await asyncio.sleep(self._heartbeat_interval)
            stood_still = loop.time() - asleep - self._heartbeat_interval
            if stood_still > self._heartbeat_interval:
                # This loop, not the broker, was away (a long call, a paused machine): the
                # heartbeat may be back and unread. Time it did not run is not counted,
                # or a broker that is there (memory:// always is) would be dropped, and
                # what is published until the reconnect with it.
                self._last_heartbeat += stood_still
                continue
            if loop.time() - self._last_heartbeat > self._heartbeat_timeout:
                raise BrokerUnavailable("no heartbeat came back from the pub/sub broker")

    async def _session(self, broadcast: Broadcast) -> None:
        """Run one connection until something about it fails."""
        tasks: list[asyncio.Task[None]] = []
        try:
            # One channel at a time: broadcaster's Redis backend starts listening when the
            # first subscription is asked for, and stops for good if no channel is
            # registered yet at that moment; once one is, later ones are safe.
            for channel in (self._heartbeat_channel, *CHANNELS):
                ready = asyncio.Event()
                tasks.append(asyncio.create_task(self._read(broadcast, channel, ready)))
                await asyncio.wait_for(ready.wait(), 10)
            tasks.append(asyncio.create_task(self._heartbeat(broadcast)))
            # broadcaster's own listener dies when the connection does (Redis). Watched,
            # never cancelled here: `Broadcast.disconnect` reads its result and would
            # raise CancelledError instead of closing the connections.
            watched = list(tasks)
            listener = getattr(broadcast, "_listener_task", None)
            if isinstance(listener, asyncio.Task):
                watched.append(listener)
            self._connected.set()
            self.stats.connected = True
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise BrokerUnavailable(str(task.exception())) from task.exception()
            raise BrokerUnavailable("the pub/sub connection ended")
        finally:
            self._connected.clear()
            self.stats.connected = False
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            if _being_cancelled():
                # `disconnect` cancelled this while it waited for a task above: the
                # suppression must not keep it reconnecting (disconnect would wait on).
                raise asyncio.CancelledError

    async def _supervise(self) -> None:
        delay = self._reconnect_delay
        first = True
        while True:
            broadcast = Broadcast(self.url)
            try:
                await broadcast.connect()
                self._broadcast = broadcast
                if not first:
                    self.stats.reconnects += 1
                    log.warning("pub/sub reconnected to %s", self.url)
                delay = self._reconnect_delay
                first = False
                await self._session(broadcast)
            except asyncio.CancelledError:
                await _quietly_disconnect(broadcast)
                raise
            except Exception as exc:
                log.warning("pub/sub connection lost (%s); retrying in %.1fs", exc, delay)
            self._broadcast = None
            await _quietly_disconnect(broadcast)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_reconnect_delay)


def _being_cancelled() -> bool:
    """Whether this task has been asked to stop, even where the CancelledError that
    said so was caught with the errors of what it awaited."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _quietly_disconnect(broadcast: Broadcast) -> None:
    """Close `broadcast`, whatever ended it; a cancellation of the caller (`disconnect`)
    still goes through once the connections are closed."""
    try:
        await asyncio.wait_for(broadcast.disconnect(), 5)
    except BaseException:
        # `Broadcast.disconnect` first re-raises what ended its listener (a lost
        # connection, or a CancelledError of its own) and only then closes its
        # backend's connections: close them still.
        backend = getattr(broadcast, "_backend", None)
        if backend is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(backend.disconnect(), 5)
        if _being_cancelled():
            raise
