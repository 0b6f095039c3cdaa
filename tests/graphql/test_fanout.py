"""Identical subscriptions share one stream (app/graphql/fanout.py): every member gets
every result in order, a member that does not read loses only its own oldest results,
the stream stops with its last member, and errors it began with reach late joiners."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.graphql.fanout import FanOut
from app.pubsub import PubSubStats


class Source:
    """A stream's source: what the test feeds it, and whether it was closed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.starts = 0
        self.closed = False

    async def start(self) -> AsyncIterator[Any]:
        self.starts += 1
        return self.results()

    async def results(self) -> AsyncIterator[Any]:
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.closed = True


async def take(results: AsyncIterator[Any], count: int) -> list[Any]:
    return [await asyncio.wait_for(anext(results), 5) for _ in range(count)]


async def test_members_share_one_start_and_a_slow_member_drops_alone():
    fanout, stats, source = FanOut(), PubSubStats(), Source()
    async with (
        fanout.join("k", source.start, limit=2, stats=stats) as slow,
        fanout.join("k", source.start, limit=100, stats=stats) as fast,
    ):
        assert (fanout.streams, fanout.members, stats.joined) == (1, 2, 1)
        for n in range(5):
            source.queue.put_nowait(n)
        assert await take(fast, 5) == [0, 1, 2, 3, 4]
        assert await take(slow, 2) == [3, 4]
        assert stats.dropped == 3
    assert source.starts == 1
    await asyncio.sleep(0)
    assert source.closed and fanout.streams == 0 and stats.joined == 0


async def test_the_stream_outlives_its_first_member():
    fanout, stats, source = FanOut(), PubSubStats(), Source()
    first = fanout.join("k", source.start, limit=10, stats=stats)
    first_results = await first.__aenter__()
    async with fanout.join("k", source.start, limit=10, stats=stats) as second:
        source.queue.put_nowait("a")
        assert await take(first_results, 1) == ["a"]
        await first.__aexit__(None, None, None)
        source.queue.put_nowait("b")
        assert await take(second, 2) == ["a", "b"]
        assert not source.closed
    await asyncio.sleep(0)
    assert source.closed and source.starts == 1


async def test_different_keys_are_different_streams():
    fanout, stats = FanOut(), PubSubStats()
    one, two = Source(), Source()
    async with (
        fanout.join(("q", "viewer 1"), one.start, limit=10, stats=stats) as first,
        fanout.join(("q", "viewer 2"), two.start, limit=10, stats=stats) as second,
    ):
        one.queue.put_nowait("for one")
        two.queue.put_nowait("for two")
        assert await take(first, 1) == ["for one"]
        assert await take(second, 1) == ["for two"]
        assert fanout.streams == 2 and stats.joined == 0


class Failed:
    data = None
    errors = ["not allowed"]


async def test_opening_errors_reach_late_joiners_and_failures_reach_everyone():
    fanout, stats, source = FanOut(), PubSubStats(), Source()
    async with fanout.join("k", source.start, limit=10, stats=stats) as first:
        opening = Failed()
        source.queue.put_nowait(opening)
        assert await take(first, 1) == [opening]
        async with fanout.join("k", source.start, limit=10, stats=stats) as late:
            assert await take(late, 1) == [opening]
            source.queue.put_nowait(RuntimeError("broker gone"))
            for results in (first, late):
                with pytest.raises(RuntimeError, match="broker gone"):
                    await take(results, 1)
    assert fanout.streams == 0
