"""The limiter: per client address and dialect, per project key, in memory and in Redis.

Windows are a minute or an hour and no test waits for one to pass: each asserts what
happens inside one window (the moving window has no edge to cross), and Retry-After only
within its bounds.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from support import RedisServer, free_port, make_event

from app.config import Settings
from app.domain.event import EventIn, UserIn
from app.errors import QuotaExceeded
from app.models import Event, Project
from app.services.ingest import ingest_events
from app.services.keys import CreatedProject, update_project_settings
from app.services.quotas import Quotas
from app.services.runtime import Runtime


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def quotas() -> AsyncIterator[Quotas]:
    limiter = Quotas(client_limits={"default": "1200/minute", "sentry": "3/minute"})
    try:
        yield limiter
    finally:
        await limiter.close()


def project_with(
    project_id: int = 1, *, per_minute: int | None = None, per_hour: int | None = None
) -> Project:
    return Project(
        id=project_id,
        slug=f"p{project_id}",
        name=f"P{project_id}",
        events_per_minute=per_minute,
        events_per_hour=per_hour,
    )


async def refused(call) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as caught:
        await call
    return caught.value


# --- per client address --------------------------------------------------------------


async def test_an_address_gets_its_dialects_limit_then_429(quotas: Quotas):
    for _ in range(3):
        await quotas.check_client(dialect="sentry", address="198.51.100.1")
    exc = await refused(quotas.check_client(dialect="sentry", address="198.51.100.1"))
    assert exc.scope == "ip"
    assert 1 <= exc.retry_after <= 60
    assert exc.message == (
        "too many requests from 198.51.100.1: this API takes 3 requests per minute from one address"
    )
    # Another address, and the same address on another dialect, are counted apart.
    await quotas.check_client(dialect="sentry", address="198.51.100.2")
    await quotas.check_client(dialect="proliferate", address="198.51.100.1")


async def test_requests_without_an_address_are_not_counted(quotas: Quotas):
    for _ in range(10):
        await quotas.check_client(dialect="sentry", address=None)


def test_defaults_per_dialect():
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    limiter = Quotas.from_settings(settings)
    assert [str(item) for item in limiter.client_limits("error_tracker")] == ["100 per 1 minute"]
    assert [str(item) for item in limiter.client_limits("sentry")] == ["1200 per 1 minute"]
    assert [str(item) for item in limiter.client_limits("a_new_dialect")] == ["1200 per 1 minute"]
    assert not limiter.shared


async def test_the_error_tracker_documents_100_a_minute():
    limiter = Quotas.from_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    try:
        for _ in range(100):
            await limiter.check_client(dialect="error_tracker", address="203.0.113.5")
        await refused(limiter.check_client(dialect="error_tracker", address="203.0.113.5"))
    finally:
        await limiter.close()


async def test_an_empty_limit_turns_a_dialect_off():
    limiter = Quotas(client_limits={"default": "", "retack": "1/minute"})
    for _ in range(50):
        await limiter.check_client(dialect="sentry", address="203.0.113.5")
    await limiter.check_client(dialect="retack", address="203.0.113.5")
    await refused(limiter.check_client(dialect="retack", address="203.0.113.5"))


async def test_several_windows_for_one_dialect():
    limiter = Quotas(client_limits={"default": "5/minute;2/second"})
    await limiter.check_client(dialect="x", address="a")
    await limiter.check_client(dialect="x", address="a")
    exc = await refused(limiter.check_client(dialect="x", address="a"))
    assert exc.retry_after == 1


def test_bad_limits_are_refused_by_the_settings():
    with pytest.raises(ValueError, match="sentry: 'lots' is not a rate limit"):
        Settings(_env_file=None, client_rate_limits={"sentry": "lots"})  # type: ignore[call-arg]


def test_limits_from_the_environment_merge_over_the_defaults(monkeypatch):
    monkeypatch.setenv("ERRORGRAPH_CLIENT_RATE_LIMITS", '{"sentry": "10/second"}')
    monkeypatch.setenv("ERRORGRAPH_EVENTS_PER_MINUTE", "600")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.client_rate_limits == {
        "default": "1200/minute",
        "error_tracker": "100/minute",
        "sentry": "10/second",
    }
    assert settings.events_per_minute == 600


# --- per project key -----------------------------------------------------------------


async def test_events_per_minute_per_key(quotas: Quotas):
    project = project_with(per_minute=5)
    await quotas.check_events(project=project, key_id=7, count=3)
    await quotas.check_events(project=project, key_id=7, count=2)
    exc = await refused(quotas.check_events(project=project, key_id=7, count=1))
    assert exc.scope == "key"
    assert 1 <= exc.retry_after <= 60
    # Another key of the project has its own allowance; events without a key count
    # against the project.
    await quotas.check_events(project=project, key_id=8, count=5)
    await quotas.check_events(project=project, key_id=None, count=5)
    exc = await refused(quotas.check_events(project=project, key_id=None, count=1))
    assert exc.scope == "project"


async def test_a_refusal_charges_no_window(quotas: Quotas):
    project = project_with(per_minute=5, per_hour=4)
    await quotas.check_events(project=project, key_id=1, count=4)
    exc = await refused(quotas.check_events(project=project, key_id=1, count=1))
    assert exc.message == "over quota: this project key may send 4 events per hour"
    assert 1 <= exc.retry_after <= 3600
    # Without the hourly limit, the minute still has the one event the refusal did not use.
    project.events_per_hour = 0
    await quotas.check_events(project=project, key_id=1, count=1)
    await refused(quotas.check_events(project=project, key_id=1, count=1))


async def test_more_events_in_one_request_than_the_limit(quotas: Quotas):
    exc = await refused(
        quotas.check_events(project=project_with(per_minute=10), key_id=1, count=11)
    )
    assert exc.retry_after == 60
    assert exc.message == "11 events in one request; this project key may send 10 events per minute"


async def test_project_settings_win_over_the_server_defaults():
    limiter = Quotas(client_limits={}, events_per_minute=2, events_per_hour=None)
    try:
        # The default applies to a project without its own setting…
        await limiter.check_events(project=project_with(1), key_id=1, count=2)
        await refused(limiter.check_events(project=project_with(1), key_id=1, count=1))
        # …0 lifts it for one project, and a number replaces it.
        await limiter.check_events(project=project_with(2, per_minute=0), key_id=2, count=500)
        await limiter.check_events(project=project_with(3, per_minute=4), key_id=3, count=4)
    finally:
        await limiter.close()


async def test_no_limits_by_default(quotas: Quotas):
    assert quotas.event_limits(project_with()) == []
    await quotas.check_events(project=project_with(), key_id=1, count=100_000)


# --- Redis ---------------------------------------------------------------------------


async def test_redis_counters_are_shared_between_limiters(redis_server: RedisServer):
    settings = Settings(_env_file=None, broadcast_url=redis_server.url)  # type: ignore[call-arg]
    one, two = Quotas.from_settings(settings), Quotas.from_settings(settings)
    assert one.shared and two.shared
    project = project_with(per_minute=4)
    try:
        await one.check_events(project=project, key_id=1, count=2)
        await two.check_events(project=project, key_id=1, count=2)
        await refused(one.check_events(project=project, key_id=1, count=1))
        for _ in range(50):
            await one.check_client(dialect="error_tracker", address="203.0.113.5")
            await two.check_client(dialect="error_tracker", address="203.0.113.5")
        exc = await refused(two.check_client(dialect="error_tracker", address="203.0.113.5"))
        assert 1 <= exc.retry_after <= 60
    finally:
        await one.close()
        await two.close()


async def test_an_unreachable_redis_lets_requests_through(caplog):
    limiter = Quotas(
        client_limits={"default": "1/minute"},
        events_per_minute=1,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    try:
        with caplog.at_level(logging.WARNING, logger="app.services.quotas"):
            for _ in range(3):
                await limiter.check_client(dialect="sentry", address="203.0.113.5")
                await limiter.check_events(project=project_with(), key_id=1, count=1)
        warnings = [r for r in caplog.records if "rate limits are not counted" in r.message]
        assert len(warnings) == 1  # logged once, not per request
    finally:
        await limiter.close()


# --- in the ingest path --------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'errorgraph.db'}",
        broadcast_url="memory://",
        events_per_minute=3,
        _env_file=None,  # type: ignore[call-arg]
    )


async def stored_events(runtime: Runtime) -> int:
    async with runtime.database.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Event)) or 0)


async def test_ingest_charges_the_key_and_stores_nothing_past_it(
    runtime: Runtime, project: CreatedProject
):
    key_id = project.ingest_key.key.id
    await ingest_events(
        writer=runtime.writer,
        project=project.project,
        events=[make_event(1), make_event(2)],
        key_id=key_id,
    )
    with pytest.raises(QuotaExceeded):
        await ingest_events(
            writer=runtime.writer,
            project=project.project,
            events=[make_event(3), make_event(4)],
            key_id=key_id,
        )
    assert await stored_events(runtime) == 2
    # The project lifts its limit: the next request goes through at once.
    lifted = await update_project_settings(
        sessions=runtime.database.sessions, project_id=project.project.id, events_per_minute=0
    )
    await ingest_events(
        writer=runtime.writer,
        project=lifted,
        events=[make_event(3), make_event(4)],
        key_id=key_id,
    )
    assert await stored_events(runtime) == 4


async def test_ingest_scrubs_before_storage(runtime: Runtime, project: CreatedProject):
    secret = "correct-horse-battery-staple"
    settings = await update_project_settings(
        sessions=runtime.database.sessions,
        project_id=project.project.id,
        scrub_fields=["favourite_colour"],
        scrub_ip_addresses=True,
        events_per_minute=0,
    )
    event = EventIn(
        message=f"login with password={secret}",
        extra={"favourite_colour": secret, "password": secret},
        user=UserIn(id="u1", ip_address="203.0.113.77"),
        client_ip="203.0.113.77",
    )
    [result] = await ingest_events(writer=runtime.writer, project=settings, events=[event])
    async with runtime.database.sessions() as session:
        stored = await session.get(Event, result.id)
    assert stored is not None
    assert stored.extra == {"favourite_colour": "[Filtered]", "password": "[Filtered]"}
    assert stored.client_ip is None and stored.user == {"id": "u1", "data": {}}
    path = runtime.settings.sqlite_path
    assert path is not None
    async with runtime.database.engine.connect() as conn:
        await conn.execute(text("PRAGMA wal_checkpoint(FULL)"))
    raw = path.read_bytes()
    assert secret.encode() not in raw
    assert b"203.0.113.77" not in raw
