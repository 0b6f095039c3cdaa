"""Alerts: rules, each trigger, each channel against real receivers (an SMTP server and an
HTTP server on 127.0.0.1), dedupe across dispatchers, the hourly cap and its digest,
retries, and a dead channel. Time is an injected clock; nothing sleeps to let time pass."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from receivers import HttpReceiver, Inbox, http_receiver, smtp_server
from sqlalchemy import select
from support import free_port

from app.config import Settings
from app.domain.event import EventIn, ExceptionIn, Frame
from app.errors import InvalidInput, NotFound
from app.models import AlertDelivery, AlertRule
from app.services.alerts import (
    AlertDispatcher,
    create_alert_rule,
    delete_alert_rule,
    list_alert_deliveries,
    list_alert_rules,
    update_alert_rule,
)
from app.services.ingest import IngestResult, ingest_events
from app.services.issues import ignore_group, resolve_group
from app.services.keys import CreatedProject, create_project
from app.services.runtime import Runtime

# Ten past the hour, so an hour's cap and its digest fall inside one clock hour.
T0 = datetime(2026, 3, 1, 12, 10, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def error(signature: int, *, at: datetime = T0) -> EventIn:
    frames = [Frame(filename="shop/cart.py", function=f"checkout{signature}", in_app=True)]
    return EventIn(
        timestamp=at,
        exceptions=[ExceptionIn(type=f"Error{signature}", value="it broke", frames=frames)],
    )


@pytest.fixture
async def receiver() -> AsyncIterator[HttpReceiver]:
    async with http_receiver() as receiver:
        yield receiver


@pytest.fixture
async def inbox() -> AsyncIterator[Inbox]:
    async with smtp_server() as inbox:
        yield inbox


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def backend() -> str:
    """The database; tests that depend on locking or upserts run on both."""
    return "sqlite"


@pytest.fixture
def alert_settings(
    settings: Settings,
    receiver: HttpReceiver,
    inbox: Inbox,
    backend: str,
    request: pytest.FixtureRequest,
) -> Settings:
    database = {}
    if backend == "postgres":
        url = request.getfixturevalue("postgres_url")
        database["database_url"] = Settings(database_url=url, _env_file=None).database_url  # type: ignore[call-arg]
    return settings.model_copy(
        update={
            **database,
            "smtp_host": "127.0.0.1",
            "smtp_port": inbox.port,
            "smtp_from": "errorgraph@example.com",
            "smtp_starttls": False,
            "postmark_api_url": receiver.base_url,
            "postmark_api_token": None,
            "alert_max_per_hour": 3,
            "alert_send_timeout": 5.0,
            "alert_retry_seconds": 30.0,
            # The sweep runs when a test says so.
            "alert_sweep_seconds": 3600.0,
        }
    )


@pytest.fixture
async def alerting(alert_settings: Settings, clock: Clock) -> AsyncIterator[Runtime]:
    runtime = await Runtime.start(alert_settings, clock=clock)
    try:
        yield runtime
    finally:
        await runtime.stop()


@pytest.fixture
async def shop(alerting: Runtime) -> CreatedProject:
    return await create_project(sessions=alerting.database.sessions, name="Shop")


def dispatcher(runtime: Runtime) -> AlertDispatcher:
    assert runtime.alerts is not None
    return runtime.alerts


async def settle(runtime: Runtime, *dispatchers: AlertDispatcher, messages: int) -> None:
    """Wait until every dispatcher has read `messages` more messages and sent what they
    started."""
    for each in dispatchers or (dispatcher(runtime),):
        async with asyncio.timeout(10):
            while each.stats.messages < messages:  # noqa: ASYNC110 (a counter, not an event)
                await asyncio.sleep(0.005)
        await each.idle()


async def send(
    runtime: Runtime,
    project: CreatedProject,
    *events: EventIn,
    also: tuple[AlertDispatcher, ...] = (),
) -> list[IngestResult]:
    """Ingest and wait for the dispatchers to act on what it published (group.created per
    new group, group.updated per group touched)."""
    dispatchers = (dispatcher(runtime), *also)
    before = [d.stats.messages for d in dispatchers]
    results = await ingest_events(
        writer=runtime.writer, project=project.project, events=list(events)
    )
    fresh = [r for r in results if r.status != "duplicate"]
    expected = len({r.group_id for r in fresh if r.status == "created"}) + len(
        {r.group_id for r in fresh}
    )
    for each, start in zip(dispatchers, before, strict=True):
        await settle(runtime, each, messages=start + expected)
    return results


async def deliveries(runtime: Runtime) -> list[AlertDelivery]:
    async with runtime.database.sessions() as session:
        return list(await session.scalars(select(AlertDelivery).order_by(AlertDelivery.id)))


async def rule(runtime: Runtime, project: CreatedProject, **fields: Any) -> AlertRule:
    assert project.project.id is not None
    return await create_alert_rule(
        sessions=runtime.database.sessions, project_id=project.project.id, **fields
    )


# --- Rules ---------------------------------------------------------------------------


async def test_rules_are_checked_listed_updated_and_deleted(
    runtime: Runtime, project: CreatedProject
):
    sessions = runtime.database.sessions
    project_id = project.project.id
    assert project_id is not None
    bad: list[tuple[dict[str, Any], str]] = [
        ({"trigger": "sometimes", "channel": "webhook", "target": "http://x.example"}, "trigger"),
        ({"trigger": "new_issue", "channel": "pigeon", "target": "http://x.example"}, "channel"),
        ({"trigger": "frequency", "channel": "slack", "target": "http://x.example"}, "threshold"),
        (
            {
                "trigger": "frequency",
                "channel": "slack",
                "target": "http://x.example",
                "threshold": 5,
            },
            "windowMinutes",
        ),
        (
            {"trigger": "new_issue", "channel": "email", "target": "ops@example.com, nobody"},
            "target",
        ),
        ({"trigger": "new_issue", "channel": "webhook", "target": "ftp://x.example/"}, "target"),
        (
            {
                "trigger": "new_issue",
                "channel": "webhook",
                "target": "http://x.example",
                "threshold": 3,
            },
            "threshold",
        ),
        (
            {
                "trigger": "new_issue",
                "channel": "slack",
                "target": "http://x.example",
                "options": {"headers": {"X": "1"}},
            },
            "options",
        ),
    ]
    for fields, field in bad:
        with pytest.raises(InvalidInput) as refused:
            await create_alert_rule(sessions=sessions, project_id=project_id, **fields)
        assert refused.value.field == field, fields
    with pytest.raises(NotFound):
        await create_alert_rule(
            sessions=sessions,
            project_id=999,
            trigger="new_issue",
            channel="slack",
            target="http://x.example",
        )

    noisy = await create_alert_rule(
        sessions=sessions,
        project_id=project_id,
        name="noisy",
        trigger="FREQUENCY",
        channel="webhook",
        target="https://hooks.example.com/in",
        threshold=100,
        window_minutes=5,
        options={"headers": {"Authorization": "Bearer abc"}},
    )
    mails = await create_alert_rule(
        sessions=sessions,
        project_id=project_id,
        trigger="new_issue",
        channel="email",
        target=" ops@example.com ,dev@example.com ",
    )
    assert (noisy.trigger, noisy.threshold, noisy.window_minutes) == ("frequency", 100, 5)
    assert mails.target == "ops@example.com ,dev@example.com"
    assert [r.id for r in await list_alert_rules(sessions=sessions, project_id=project_id)] == [
        noisy.id,
        mails.id,
    ]

    assert noisy.id is not None and mails.id is not None
    changed = await update_alert_rule(
        sessions=sessions, rule_id=noisy.id, threshold=10, enabled=False
    )
    assert (changed.threshold, changed.window_minutes, changed.enabled) == (10, 5, False)
    # Away from frequency, the numbers go with it.
    changed = await update_alert_rule(sessions=sessions, rule_id=noisy.id, trigger="regression")
    assert (changed.trigger, changed.threshold, changed.window_minutes) == (
        "regression",
        None,
        None,
    )
    with pytest.raises(InvalidInput):
        await update_alert_rule(sessions=sessions, rule_id=noisy.id, target="not a url")

    await delete_alert_rule(sessions=sessions, rule_id=noisy.id)
    assert [r.id for r in await list_alert_rules(sessions=sessions, project_id=project_id)] == [
        mails.id
    ]
    with pytest.raises(NotFound):
        await delete_alert_rule(sessions=sessions, rule_id=noisy.id)


# --- Triggers and channels -----------------------------------------------------------


async def test_a_new_issue_goes_out_on_every_channel(
    alerting: Runtime, shop: CreatedProject, receiver: HttpReceiver, inbox: Inbox
):
    await rule(alerting, shop, trigger="new_issue", channel="webhook", target=receiver.url("/hook"))
    await rule(
        alerting,
        shop,
        trigger="new_issue",
        channel="webhook",
        target=receiver.url("/signed"),
        options={"headers": {"Authorization": "Bearer hook-secret"}},
    )
    await rule(alerting, shop, trigger="new_issue", channel="slack", target=receiver.url("/slack"))
    await rule(
        alerting,
        shop,
        trigger="new_issue",
        channel="email",
        target="ops@example.com, dev@example.com",
    )

    [first] = await send(alerting, shop, error(1))

    [hook] = receiver.on("/hook")
    assert hook.body["kind"] == "new_issue"
    assert hook.body["project"]["slug"] == "shop"
    assert hook.body["group"]["id"] == first.group_id
    assert hook.body["group"]["title"].startswith("Error1")
    assert hook.body["url"].endswith(f"/#/issues/{first.group_id}")
    assert receiver.on("/signed")[0].headers["authorization"] == "Bearer hook-secret"
    [slack] = receiver.on("/slack")
    assert set(slack.body) == {"text"}
    assert "New issue" in slack.body["text"] and "Error1" in slack.body["text"]
    [(recipients, mail)] = inbox.messages
    assert recipients == ["ops@example.com", "dev@example.com"]
    assert mail["From"] == "errorgraph@example.com"
    assert mail["Subject"].startswith("[Shop] New issue: Error1")
    assert f"/#/issues/{first.group_id}" in mail.get_payload()

    # More events of the same issue are not new.
    await send(alerting, shop, error(1), error(1))
    assert len(receiver.requests) == 3 and len(inbox.messages) == 1
    assert {d.status for d in await deliveries(alerting)} == {"sent"}


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_a_regression_alerts_each_time_an_issue_comes_back(
    alerting: Runtime, shop: CreatedProject, receiver: HttpReceiver
):
    await rule(
        alerting, shop, trigger="regression", channel="webhook", target=receiver.url("/hook")
    )
    [first] = await send(alerting, shop, error(1))
    await send(alerting, shop, error(1))
    assert receiver.requests == []

    sessions = alerting.database.sessions
    for time in (1, 2):
        await resolve_group(sessions=sessions, group_id=first.group_id)
        await send(alerting, shop, error(1), error(1))
        assert len(receiver.on("/hook")) == time
    assert [r.body["kind"] for r in receiver.requests] == ["regression", "regression"]
    assert "came back" in receiver.requests[0].body["subject"]


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_frequency_counts_events_in_the_window(
    alerting: Runtime, shop: CreatedProject, receiver: HttpReceiver, clock: Clock
):
    await rule(
        alerting,
        shop,
        trigger="frequency",
        threshold=3,
        window_minutes=10,
        channel="webhook",
        target=receiver.url("/hook"),
    )
    await send(alerting, shop, error(1), error(1), error(1))
    assert receiver.requests == []  # three is not more than three
    # Ten minutes later the first three are out of the window.
    clock.advance(minutes=10)
    await send(alerting, shop, error(1))
    assert receiver.requests == []
    clock.advance(minutes=1)
    await send(alerting, shop, error(1), error(1))
    assert receiver.requests == []
    await send(alerting, shop, error(1))
    [alert] = receiver.requests
    assert alert.body["kind"] == "frequency"
    assert (alert.body["threshold"], alert.body["window_minutes"]) == (3, 10)
    # The storm goes on: one alert per window.
    for _ in range(3):
        clock.advance(minutes=3)
        await send(alerting, shop, *[error(1) for _ in range(5)])
    assert len(receiver.requests) == 1
    clock.advance(minutes=2)
    await send(alerting, shop, error(1))
    assert len(receiver.requests) == 2
    # Another issue has its own count.
    await send(alerting, shop, *[error(2) for _ in range(4)])
    assert len(receiver.requests) == 3


async def test_an_ignored_issue_does_not_alert_on_frequency(
    alerting: Runtime, shop: CreatedProject, receiver: HttpReceiver
):
    await rule(
        alerting,
        shop,
        trigger="frequency",
        threshold=1,
        window_minutes=5,
        channel="webhook",
        target=receiver.url("/hook"),
    )
    [first] = await send(alerting, shop, error(1))
    await ignore_group(sessions=alerting.database.sessions, group_id=first.group_id)
    await send(alerting, shop, error(1), error(1), error(1))
    assert receiver.requests == []


async def test_disabled_rules_and_other_projects_stay_quiet(
    alerting: Runtime, shop: CreatedProject, receiver: HttpReceiver
):
    other = await create_project(sessions=alerting.database.sessions, name="Other")
    off = await rule(
        alerting, shop, trigger="new_issue", channel="webhook", target=receiver.url("/off")
    )
    assert off.id is not None
    await update_alert_rule(sessions=alerting.database.sessions, rule_id=off.id, enabled=False)
    await rule(
        alerting, other, trigger="new_issue", channel="webhook", target=receiver.url("/other")
    )
    await send(alerting, shop, error(1))
    assert receiver.requests == []


# --- Dedupe, cap and digest ----------------------------------------------------------


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_two_dispatchers_send_each_alert_once(
    alerting: Runtime,
    shop: CreatedProject,
    receiver: HttpReceiver,
    alert_settings: Settings,
    clock: Clock,
):
    """Every process receives every message: only the one whose delivery row wins sends."""
    second = AlertDispatcher(
        database=alerting.database, pubsub=alerting.pubsub, settings=alert_settings, clock=clock
    )
    await second.start()
    try:
        await rule(
            alerting, shop, trigger="new_issue", channel="webhook", target=receiver.url("/hook")
        )
        await rule(
            alerting,
            shop,
            trigger="frequency",
            threshold=2,
            window_minutes=5,
            channel="webhook",
            target=receiver.url("/busy"),
        )
        await rule(
            alerting, shop, trigger="regression", channel="webhook", target=receiver.url("/back")
        )
        first, *_ = await send(alerting, shop, error(1), error(1), error(1), also=(second,))
        await resolve_group(sessions=alerting.database.sessions, group_id=first.group_id)
        await send(alerting, shop, error(1), also=(second,))
        await send(alerting, shop, error(2), also=(second,))
    finally:
        await second.stop()
    assert [r.path for r in receiver.requests].count("/hook") == 2
    assert [r.path for r in receiver.requests].count("/busy") == 1
    assert [r.path for r in receiver.requests].count("/back") == 1
    assert dispatcher(alerting).stats.queued + second.stats.queued == 4


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_over_the_hourly_cap_alerts_wait_for_one_digest(
    alerting: Runtime, shop: CreatedProject, receiver: HttpReceiver, clock: Clock
):
    await rule(
        alerting,
        shop,
        name="all new",
        trigger="new_issue",
        channel="webhook",
        target=receiver.url("/hook"),
    )
    for signature in range(1, 8):
        await send(alerting, shop, error(signature))
        clock.advance(minutes=1)
    assert len(receiver.requests) == 3  # alert_max_per_hour
    rows = await deliveries(alerting)
    assert [d.status for d in rows if d.kind == "new_issue"] == ["sent"] * 3 + ["digested"] * 4
    [digest] = [d for d in rows if d.kind == "digest"]
    assert digest.status == "pending"

    # Not before the hour is over.
    assert await dispatcher(alerting).run_due() == 0
    clock.now = datetime(2026, 3, 1, 13, 0, tzinfo=UTC)
    assert await dispatcher(alerting).run_due() == 1
    await dispatcher(alerting).idle()
    summary = receiver.requests[-1].body
    assert summary["kind"] == "digest"
    assert [a["group"]["title"].split(":")[0] for a in summary["alerts"]] == [
        "Error4",
        "Error5",
        "Error6",
        "Error7",
    ]
    assert "4 more alerts" in summary["text"]
    assert [d.status for d in await deliveries(alerting) if d.kind == "digest"] == ["sent"]

    # A new hour, a new allowance.
    await send(alerting, shop, error(8))
    assert len(receiver.requests) == 5 and receiver.requests[-1].body["kind"] == "new_issue"


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_a_failed_send_is_retried_with_backoff(
    alerting: Runtime, shop: CreatedProject, receiver: HttpReceiver, clock: Clock
):
    await rule(alerting, shop, trigger="new_issue", channel="webhook", target=receiver.url("/hook"))
    receiver.failures = 2
    await send(alerting, shop, error(1))
    [delivery] = await deliveries(alerting)
    assert (delivery.status, delivery.attempts) == ("pending", 1)
    assert "500" in (delivery.last_error or "")

    alerts = dispatcher(alerting)
    clock.advance(seconds=29)
    assert await alerts.run_due() == 0
    clock.advance(seconds=1)
    assert await alerts.run_due() == 1
    await alerts.idle()
    assert receiver.failed == 2 and receiver.requests == []
    # The wait doubles: 30 s, then 60 s.
    clock.advance(seconds=59)
    assert await alerts.run_due() == 0
    clock.advance(seconds=1)
    assert await alerts.run_due() == 1
    await alerts.idle()
    [delivered] = receiver.requests
    assert delivered.body["kind"] == "new_issue"
    [delivery] = await deliveries(alerting)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("sent", 3, None)


async def test_retries_stop_after_the_last_attempt(
    alert_settings: Settings, clock: Clock, receiver: HttpReceiver
):
    settings = alert_settings.model_copy(update={"alert_max_attempts": 2})
    runtime = await Runtime.start(settings, clock=clock)
    try:
        shop = await create_project(sessions=runtime.database.sessions, name="Shop")
        await rule(
            runtime, shop, trigger="new_issue", channel="webhook", target=receiver.url("/hook")
        )
        receiver.failures = 10
        await send(runtime, shop, error(1))
        clock.advance(minutes=1)
        await dispatcher(runtime).run_due()
        await dispatcher(runtime).idle()
        clock.advance(hours=1)
        assert await dispatcher(runtime).run_due() == 0
        [delivery] = await deliveries(runtime)
        assert (delivery.status, delivery.attempts, receiver.failed) == ("failed", 2, 2)
    finally:
        await runtime.stop()


async def test_a_dead_channel_costs_ingest_nothing(alerting: Runtime, shop: CreatedProject):
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    await rule(alerting, shop, trigger="new_issue", channel="webhook", target=dead)
    await rule(alerting, shop, trigger="new_issue", channel="email", target="ops@example.com")
    results = await send(alerting, shop, error(1), error(2))
    assert [r.status for r in results] == ["created", "created"]
    rows = await deliveries(alerting)
    # The webhook's alerts wait for a retry; the mails went out all the same.
    assert sorted((d.status, d.attempts, bool(d.last_error)) for d in rows) == [
        ("pending", 1, True),
        ("pending", 1, True),
        ("sent", 1, False),
        ("sent", 1, False),
    ]


async def test_refusals_are_not_retried(
    alert_settings: Settings, clock: Clock, receiver: HttpReceiver
):
    """A Postmark rule without a server token, SMTP that is not configured, and a 4xx
    answer cannot get better by waiting."""
    settings = alert_settings.model_copy(update={"smtp_host": None})
    runtime = await Runtime.start(settings, clock=clock)
    try:
        shop = await create_project(sessions=runtime.database.sessions, name="Shop")
        await rule(runtime, shop, trigger="new_issue", channel="postmark", target="ops@example.com")
        await rule(runtime, shop, trigger="new_issue", channel="email", target="ops@example.com")
        receiver.statuses["/gone"] = 410
        await rule(
            runtime, shop, trigger="new_issue", channel="webhook", target=receiver.url("/gone")
        )
        await send(runtime, shop, error(1))
        rows = await deliveries(runtime)
        assert [(d.status, d.attempts) for d in rows] == [("failed", 1)] * 3
        assert "POSTMARK_API_TOKEN" in (rows[0].last_error or "")
        assert "ERRORGRAPH_SMTP_HOST" in (rows[1].last_error or "")
        assert "410" in (rows[2].last_error or "")
    finally:
        await runtime.stop()


# --- ALERT_EMAILS --------------------------------------------------------------------


async def test_alert_emails_with_postmark_need_no_rule(
    alert_settings: Settings, clock: Clock, receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch
):
    """The Error Tracker document's service mails ALERT_EMAILS about every new error."""
    # The document's own variable names, from the environment.
    monkeypatch.setenv("ALERT_EMAILS", "ops@example.com,dev@example.com")
    monkeypatch.setenv("POSTMARK_API_TOKEN", "server-token")
    monkeypatch.setenv("POSTMARK_FROM_EMAIL", "alerts@example.com")
    settings = Settings(
        **alert_settings.model_dump(
            exclude={"alert_emails", "postmark_api_token", "postmark_from_email"}
        ),
        _env_file=None,  # type: ignore[call-arg]
    )
    runtime = await Runtime.start(settings, clock=clock)
    try:
        sessions = runtime.database.sessions
        shop = await create_project(sessions=sessions, name="Shop")
        [first] = await send(runtime, shop, error(1))
        await send(runtime, shop, error(1))
        [mail] = receiver.on("/email")
        assert mail.headers["x-postmark-server-token"] == "server-token"
        assert mail.headers["accept"] == "application/json"
        assert mail.body["From"] == "alerts@example.com"
        assert mail.body["To"] == "ops@example.com, dev@example.com"
        assert mail.body["Subject"].startswith("[Shop] New issue: Error1")
        assert f"/#/issues/{first.group_id}" in mail.body["TextBody"]

        assert shop.project.id is not None
        [managed] = await list_alert_rules(sessions=sessions, project_id=shop.project.id)
        assert (managed.channel, managed.trigger) == ("postmark", "new_issue")
        assert managed.id is not None
        with pytest.raises(InvalidInput):
            await update_alert_rule(sessions=sessions, rule_id=managed.id, target="x@example.com")
        with pytest.raises(InvalidInput):
            await delete_alert_rule(sessions=sessions, rule_id=managed.id)
        page = await list_alert_deliveries(sessions=sessions, project_id=shop.project.id)
        assert [(d.kind, d.status) for d in page.items] == [("new_issue", "sent")]

        # Switched off for this project, it stays off.
        await update_alert_rule(sessions=sessions, rule_id=managed.id, enabled=False)
        await send(runtime, shop, error(2))
        assert len(receiver.on("/email")) == 1
    finally:
        await runtime.stop()


async def test_without_postmark_alert_emails_send_nothing(
    alert_settings: Settings, clock: Clock, receiver: HttpReceiver
):
    settings = alert_settings.model_copy(update={"alert_emails": "ops@example.com"})
    runtime = await Runtime.start(settings, clock=clock)
    try:
        shop = await create_project(sessions=runtime.database.sessions, name="Shop")
        await send(runtime, shop, error(1))
        assert receiver.requests == [] and await deliveries(runtime) == []
    finally:
        await runtime.stop()


async def test_deliveries_page_newest_first(
    alerting: Runtime, shop: CreatedProject, receiver: HttpReceiver
):
    await rule(alerting, shop, trigger="new_issue", channel="webhook", target=receiver.url("/hook"))
    for signature in range(3):
        await send(alerting, shop, error(signature))
    assert shop.project.id is not None
    sessions = alerting.database.sessions
    page = await list_alert_deliveries(sessions=sessions, project_id=shop.project.id, first=2)
    rest = await list_alert_deliveries(
        sessions=sessions, project_id=shop.project.id, first=2, after=page.end_cursor
    )
    ids = [d.id for d in page.items + rest.items]
    assert ids == sorted(ids, reverse=True) and len(ids) == 3
    assert page.has_next and not rest.has_next
