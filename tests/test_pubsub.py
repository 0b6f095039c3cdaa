"""The pub/sub fan-out: bounded per-subscriber queues that drop the oldest and count."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import orjson
import pytest
from support import RedisServer

from app.pubsub import (
    EVENT_CAPTURED,
    GROUP_CREATED,
    GROUP_UPDATED,
    PACK_BYTES,
    BrokerUnavailable,
    PubSub,
    _packs,
)


async def test_slow_subscriber_drops_oldest_and_others_get_everything():
    pubsub = PubSub("memory://", queue_size=3)
    await pubsub.connect()
    try:
        async with (
            pubsub.subscribe(EVENT_CAPTURED) as slow,
            pubsub.subscribe([EVENT_CAPTURED, GROUP_CREATED]) as fast,
        ):
            received = []

            async def drain() -> None:
                while len(received) < 10:
                    received.append((await fast.get())[1]["n"])

            reader = asyncio.create_task(drain())
            for n in range(10):
                await pubsub.publish(EVENT_CAPTURED, {"n": n, "project_id": 1})
                await asyncio.sleep(0)
            await asyncio.wait_for(reader, 5)
            await asyncio.sleep(0.05)
            assert received == list(range(10))
            assert slow.dropped == 7
            assert [(await slow.get())[1]["n"] for _ in range(3)] == [7, 8, 9]
            assert pubsub.stats.dropped == 7
            assert pubsub.stats.subscribers == 2
        assert pubsub.stats.subscribers == 0
    finally:
        await pubsub.disconnect()


async def test_unreachable_broker_does_not_stop_start_and_publish_fails_fast():
    pubsub = PubSub("redis://127.0.0.1:1", reconnect_delay=0.05)
    await pubsub.connect(wait=0.3)
    try:
        assert not pubsub.connected
        try:
            await pubsub.publish(GROUP_CREATED, {"group_id": 1, "project_id": 1})
        except Exception as exc:
            assert "not connected" in str(exc)
        else:
            raise AssertionError("publish should fail while the broker is away")
        # A batch's messages, packed, each count as a failure.
        with pytest.raises(BrokerUnavailable, match="not connected"):
            await pubsub.publish_many(
                [(GROUP_CREATED, {"group_id": n, "project_id": 1}) for n in range(5)]
                + [(EVENT_CAPTURED, {"event_id": 1, "group_id": 1, "project_id": 1})]
            )
        assert pubsub.stats.publish_failures == 7
        assert pubsub.stats.published == 0
    finally:
        await pubsub.disconnect()


def test_packs_keep_the_order_and_stay_under_the_notify_limit():
    big = {"group_id": 1, "project_id": 1, "kind": "NEW_EVENT", "note": "x" * 900}
    messages = (
        [(EVENT_CAPTURED, {"n": n}) for n in range(3)]
        + [(GROUP_CREATED, {"n": 3})]
        + [(EVENT_CAPTURED, {"n": n}) for n in range(4, 6)]
        + [(GROUP_UPDATED, {**big, "n": n}) for n in range(6, 30)]
    )
    packs = list(_packs(messages))
    assert [(channel, count) for channel, _, count in packs][:3] == [
        (EVENT_CAPTURED, 3),
        (GROUP_CREATED, 1),
        (EVENT_CAPTURED, 2),
    ]
    # A message alone goes as itself, as `publish` always sent it.
    assert orjson.loads(packs[1][1]) == {"n": 3}
    assert all(len(payload.encode()) <= PACK_BYTES for _, payload, _ in packs)
    assert len(packs) > 4  # the large messages needed several packs
    unpacked = []
    for channel, payload, count in packs:
        parsed = orjson.loads(payload)
        items = parsed if isinstance(parsed, list) else [parsed]
        assert len(items) == count
        unpacked += [(channel, item) for item in items]
    assert unpacked == messages


async def test_publish_many_delivers_every_message_in_order_in_memory():
    await _check_publish_many("memory://")


async def test_publish_many_delivers_every_message_in_order_through_redis(tmp_path: Path):
    server = RedisServer(tmp_path)
    server.start()
    try:
        await _check_publish_many(server.url)
    finally:
        server.stop()


@pytest.mark.postgres
async def test_publish_many_delivers_every_message_in_order_through_postgres(postgres_url: str):
    await _check_publish_many(postgres_url.replace("postgresql://", "postgres://"))


async def _check_publish_many(broker_url: str) -> None:
    """A batch's messages, packed, come out one delivery each, each channel's in the
    order published, to the subscribers of their channel only. (Across channels no
    broker keeps the order: each channel is read by its own task.)"""
    pubsub = PubSub(broker_url, queue_size=10_000)
    await pubsub.connect()
    try:
        async with (
            pubsub.subscribe([EVENT_CAPTURED, GROUP_UPDATED]) as both,
            pubsub.subscribe(GROUP_UPDATED) as updates,
        ):
            messages = [(GROUP_CREATED, {"group_id": 0, "project_id": 1})] + [
                (EVENT_CAPTURED if n % 50 < 40 else GROUP_UPDATED, {"n": n, "project_id": 1})
                for n in range(600)
            ]
            await pubsub.publish_many(messages)
            got: dict[str, list[int]] = {EVENT_CAPTURED: [], GROUP_UPDATED: []}
            for _ in range(600):
                delivery = await asyncio.wait_for(both.get_delivery(), 5)
                got[delivery.channel].append(delivery.message["n"])
            for channel, numbers_in_order in got.items():
                assert numbers_in_order == [m["n"] for c, m in messages if c == channel]
            numbers = set()
            for n in [m["n"] for channel, m in messages if channel == GROUP_UPDATED]:
                delivery = await asyncio.wait_for(updates.get_delivery(), 5)
                assert delivery.message["n"] == n
                numbers.add(delivery.number)
            assert len(numbers) == 120  # each message its own delivery
            assert pubsub.stats.published == 601
            await asyncio.sleep(0.05)
            assert not both.queue and not updates.queue
    finally:
        await pubsub.disconnect()


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_an_event_loop_that_stood_still_does_not_take_the_broker_for_gone(
    broker: str, tmp_path: Path
):
    """A loop blocked past the heartbeat's timeout (a long call, a paused machine) finds
    its heartbeat unread when it runs again: the broker is kept, and nothing published
    after is lost. It used to be dropped and reconnected, failing the publishes between."""
    server = None
    url = "memory://"
    if broker == "redis":
        server = RedisServer(tmp_path)
        server.start()
        url = server.url
    pubsub = PubSub(url, heartbeat_interval=0.05, heartbeat_timeout=0.15)
    await pubsub.connect()
    try:
        async with pubsub.subscribe(EVENT_CAPTURED) as subscription:
            await asyncio.sleep(0.12)  # the heartbeat asleep
            time.sleep(0.6)  # noqa: ASYNC251 -- the loop stands still, past the timeout
            for n in range(20):
                await pubsub.publish(EVENT_CAPTURED, {"n": n, "project_id": 1})
                await asyncio.sleep(0.01)
            got = [(await asyncio.wait_for(subscription.get(), 5))[1]["n"] for _ in range(20)]
            assert got == list(range(20))
            assert pubsub.stats.reconnects == 0
            assert pubsub.stats.publish_failures == 0
            assert pubsub.connected
    finally:
        await pubsub.disconnect()
        if server is not None:
            server.stop()


async def test_a_broker_that_stops_answering_is_still_found_gone(tmp_path: Path):
    """The heartbeat still tells a broker that went away, with the loop running."""
    server = RedisServer(tmp_path)
    server.start()
    pubsub = PubSub(server.url, heartbeat_interval=0.05, heartbeat_timeout=0.15)
    await pubsub.connect()
    try:
        assert pubsub.connected
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)  # there, but it answers nothing
        try:
            for _ in range(100):
                await asyncio.sleep(0.05)
                if not pubsub.connected:
                    break
            assert not pubsub.connected
        finally:
            server.process.send_signal(signal.SIGCONT)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if pubsub.connected:
                break
        assert pubsub.connected and pubsub.stats.reconnects >= 1
    finally:
        await pubsub.disconnect()
        server.stop()


async def test_disconnect_ends_while_a_lost_connection_is_being_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`disconnect` (the server's shutdown) used to wait for ever when it came while the
    supervisor was closing a lost connection: the cancellation was taken for one of the
    closing's own errors, and the supervisor went on reconnecting to a broker that was
    gone."""
    from broadcaster import Broadcast

    closing = asyncio.Event()
    real_disconnect = Broadcast.disconnect

    async def slow_disconnect(self: Broadcast) -> None:
        closing.set()
        await asyncio.sleep(1)
        await real_disconnect(self)

    server = RedisServer(tmp_path)
    server.start()
    pubsub = PubSub(
        server.url, heartbeat_interval=0.05, heartbeat_timeout=0.15, reconnect_delay=0.05
    )
    await pubsub.connect()
    assert pubsub.connected
    monkeypatch.setattr(Broadcast, "disconnect", slow_disconnect)
    server.stop()
    try:
        await asyncio.wait_for(closing.wait(), 10)
        disconnecting = asyncio.create_task(pubsub.disconnect())
        # Not wait_for: its own cancellation at the timeout would end the wait it judges.
        done, _ = await asyncio.wait({disconnecting}, timeout=10)
        assert disconnecting in done, "disconnect did not end"
        assert pubsub._supervisor is None
    finally:
        if pubsub._supervisor is not None:
            pubsub._supervisor.cancel()
