"""Publishing what ingest and state changes committed, through `broadcaster`.

Messages carry ids, never payloads: a subscriber reads fresh data in its own short
session, and PostgreSQL's NOTIFY (one of broadcaster's backends) caps payloads at 8000
bytes. Channel names are the contract between publishers and subscribers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import orjson
from broadcaster import Broadcast

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


class PubSub:
    """A connected broadcaster and the encoding of our messages."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._broadcast = Broadcast(url)
        self._connected = False

    async def connect(self) -> None:
        await self._broadcast.connect()
        self._connected = True

    async def disconnect(self) -> None:
        if self._connected:
            self._connected = False
            await self._broadcast.disconnect()

    async def publish(self, channel: str, message: Any) -> None:
        await self._broadcast.publish(channel=channel, message=orjson.dumps(message).decode())

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Yield an iterator of decoded messages; unsubscribes when the block ends."""
        async with self._broadcast.subscribe(channel=channel) as subscriber:

            async def messages() -> AsyncIterator[dict[str, Any]]:
                async for event in subscriber:  # type: ignore[union-attr]
                    yield orjson.loads(event.message)

            yield messages()
