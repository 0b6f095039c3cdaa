"""The pub/sub fan-out: bounded per-subscriber queues that drop the oldest and count."""

from __future__ import annotations

import asyncio

from app.pubsub import EVENT_CAPTURED, GROUP_CREATED, PubSub


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
    finally:
        await pubsub.disconnect()
