"""The app's lifespan: what it sets up for a server process besides the runtime."""

from __future__ import annotations

import gc

from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app


async def test_server_processes_freeze_the_start_up_heap(settings: Settings):
    before = gc.get_threshold()
    try:
        async with LifespanManager(create_app(settings)):
            assert gc.get_freeze_count() == 0  # tests build many apps: never frozen
        served = settings.model_copy(update={"gc_freeze": True})
        async with LifespanManager(create_app(served)):
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold()[0] == 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_serve_turns_it_on(monkeypatch):
    monkeypatch.setenv("ERRORGRAPH_GC_FREEZE", "true")
    assert Settings(_env_file=None).gc_freeze is True  # type: ignore[call-arg]
