"""Alerts: the rules people set per project, and the dispatcher that turns what ingest
committed into notifications.

A rule has a trigger — `new_issue`, `regression` (a resolved issue reopened) or
`frequency` (more than `threshold` events in `window_minutes` for one issue) — and a
channel (see `app.services.channels`). With `ALERT_EMAILS` and Postmark configured, as in
the Error Tracker document, every project also has a new-issue rule it did not ask for:
kept as a row (so its deliveries are recorded like any other) marked `managed`, which
can be switched off per project but is otherwise changed through the settings.

The dispatcher runs in every server process, off the request path: it reads the ids
ingest publishes after commit (`group.created`, `group.updated`), decides which rules
fire, and records each notification as an `AlertDelivery` before sending it. Every process
receives every message, so the decision is made once by the database: a delivery's
`dedupe_key` is unique, and only the process whose insert wins sends it. The key is
built from what all processes agree on — the rule, the group, for a regression the first
event that reopened it, for a frequency alert the window.

Delivery: a process claims an attempt by bumping `attempts` where it still has the value
it read (compare and set), so each attempt is made by one process. A failed attempt is
tried again after a wait that doubles from `alert_retry_seconds`, by whichever process's
sweep finds it due first, until `alert_max_attempts`; a permanent failure (a refused
address, a 4xx answer) stops at once. A failing channel costs ingest nothing: ingest never
waits for the dispatcher.

Storms: each rule sends at most `alert_max_per_hour` notifications per clock hour. Past
that, further alerts are stored as `digested`, and one `digest` delivery per rule and hour
lists them all when the hour is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.config import Settings
from app.db import Database
from app.errors import InvalidInput, NotFound
from app.models import AlertDelivery, AlertRule, Event, Group, GroupStatus, Project, utcnow
from app.pubsub import GROUP_CREATED, GROUP_UPDATED, PubSub
from app.services.channels import (
    CHANNELS,
    ChannelError,
    Notification,
    Senders,
    invalid_address,
)
from app.services.common import PerDatabase, Sessions
from app.services.pagination import Page, build_page, decode_cursor, page_size

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

TRIGGERS = ("new_issue", "regression", "frequency")
MAX_WINDOW_MINUTES = 7 * 24 * 60
# `options["managed"]` of the rule that ALERT_EMAILS stands for.
MANAGED_BY_SETTINGS = "settings"
MANAGED_NAME = "New issues to ALERT_EMAILS"
# Longest single wait between two attempts.
MAX_RETRY_WAIT = 3600.0
# Notifications sent at once by one process.
MAX_CONCURRENT_SENDS = 8

RULES = AlertRule.__table__
DELIVERIES = AlertDelivery.__table__
EVENTS = Event.__table__
ORDER = "alert_delivery"


def is_managed(rule: AlertRule) -> bool:
    return (rule.options or {}).get("managed") == MANAGED_BY_SETTINGS


# --- Rules -------------------------------------------------------------------------------


def _checked_target(channel: str, target: str) -> str:
    target = target.strip()
    if channel in {"email", "postmark"}:
        bad = invalid_address(target)
        if bad is not None:
            raise InvalidInput(
                f"target must be e-mail addresses separated by commas ({bad!r} is not one)",
                field="target",
            )
        return target
    parts = urlsplit(target)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise InvalidInput(
            f"target must be an http(s) URL for a {channel} channel (got {target!r})",
            field="target",
        )
    return target


def _checked_options(channel: str, options: dict[str, Any] | None) -> dict[str, Any] | None:
    if not options:
        return None
    if not isinstance(options, dict):
        raise InvalidInput("options must be a JSON object", field="options")
    if "managed" in options:
        raise InvalidInput("options.managed is set by the server only", field="options")
    headers = options.get("headers")
    if headers is not None:
        if channel != "webhook":
            raise InvalidInput("options.headers are for webhook channels", field="options")
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise InvalidInput("options.headers must map names to strings", field="options")
    return options


def _checked_rule(
    *,
    trigger: str,
    channel: str,
    target: str,
    name: str,
    threshold: int | None,
    window_minutes: int | None,
    options: dict[str, Any] | None,
) -> dict[str, Any]:
    trigger = trigger.strip().lower()
    channel = channel.strip().lower()
    if trigger not in TRIGGERS:
        raise InvalidInput(f"trigger must be one of {', '.join(TRIGGERS)}", field="trigger")
    if channel not in CHANNELS:
        raise InvalidInput(f"channel must be one of {', '.join(CHANNELS)}", field="channel")
    if trigger == "frequency":
        if threshold is None or threshold < 1:
            raise InvalidInput("a frequency rule needs a threshold of 1 or more", field="threshold")
        if window_minutes is None or not 1 <= window_minutes <= MAX_WINDOW_MINUTES:
            raise InvalidInput(
                f"a frequency rule needs windowMinutes from 1 to {MAX_WINDOW_MINUTES}",
                field="windowMinutes",
            )
    elif threshold is not None or window_minutes is not None:
        field = "threshold" if threshold is not None else "windowMinutes"
        raise InvalidInput(f"{field} is for frequency rules only", field=field)
    if len(name) > 200:
        raise InvalidInput("name is longer than 200 characters", field="name")
    return {
        "trigger": trigger,
        "channel": channel,
        "target": _checked_target(channel, target),
        "name": name.strip(),
        "threshold": threshold,
        "window_minutes": window_minutes,
        "options": _checked_options(channel, options),
    }


async def create_alert_rule(
    *,
    sessions: Sessions,
    project_id: int,
    trigger: str,
    channel: str,
    target: str,
    name: str = "",
    threshold: int | None = None,
    window_minutes: int | None = None,
    options: dict[str, Any] | None = None,
    enabled: bool = True,
) -> AlertRule:
    values = _checked_rule(
        trigger=trigger,
        channel=channel,
        target=target,
        name=name,
        threshold=threshold,
        window_minutes=window_minutes,
        options=options,
    )
    async with sessions.begin() as session:
        if await session.get(Project, project_id) is None:
            raise NotFound(f"no project {project_id}", field="projectId")
        rule = AlertRule(project_id=project_id, enabled=enabled, created_at=utcnow(), **values)
        session.add(rule)
    _forget_rules(sessions, project_id)
    return rule


async def get_alert_rule(*, sessions: Sessions, rule_id: int) -> AlertRule:
    async with sessions() as session:
        rule = await session.get(AlertRule, rule_id)
    if rule is None:
        raise NotFound(f"no alert rule {rule_id}", field="id")
    return rule


async def list_alert_rules(*, sessions: Sessions, project_id: int) -> list[AlertRule]:
    async with sessions() as session:
        if await session.get(Project, project_id) is None:
            raise NotFound(f"no project {project_id}", field="projectId")
        rows = await session.scalars(
            sa.select(AlertRule).where(AlertRule.project_id == project_id).order_by(AlertRule.id)  # type: ignore[arg-type]
        )
        return list(rows)


# "Leave as it is" for update arguments where None is a value (no threshold).
KEEP: Any = object()


async def update_alert_rule(
    *,
    sessions: Sessions,
    rule_id: int,
    trigger: str | None = None,
    channel: str | None = None,
    target: str | None = None,
    name: str | None = None,
    threshold: int | None = KEEP,
    window_minutes: int | None = KEEP,
    options: dict[str, Any] | None = KEEP,
    enabled: bool | None = None,
) -> AlertRule:
    """Change what is given; the rest stays. Changing the trigger away from `frequency`
    drops its threshold and window. A managed rule can only be switched on or off."""
    async with sessions.begin() as session:
        rule = await session.get(AlertRule, rule_id)
        if rule is None:
            raise NotFound(f"no alert rule {rule_id}", field="id")
        changes = {
            "trigger": trigger,
            "channel": channel,
            "target": target,
            "name": name,
        }
        touched = any(value is not None for value in changes.values()) or any(
            value is not KEEP for value in (threshold, window_minutes, options)
        )
        if is_managed(rule) and touched:
            raise InvalidInput(
                "this rule stands for ALERT_EMAILS: change the server's settings, or only "
                "switch it off for this project (enabled: false)",
                field="id",
            )
        if touched:
            new_trigger = trigger if trigger is not None else rule.trigger
            keep_numbers = new_trigger.strip().lower() == "frequency"
            values = _checked_rule(
                trigger=new_trigger,
                channel=channel if channel is not None else rule.channel,
                target=target if target is not None else rule.target,
                name=name if name is not None else rule.name,
                threshold=(rule.threshold if keep_numbers else None)
                if threshold is KEEP
                else threshold,
                window_minutes=(rule.window_minutes if keep_numbers else None)
                if window_minutes is KEEP
                else window_minutes,
                options=rule.options if options is KEEP else options,
            )
            for key, value in values.items():
                setattr(rule, key, value)
        if enabled is not None:
            rule.enabled = enabled
    _forget_rules(sessions, rule.project_id)
    return rule


async def delete_alert_rule(*, sessions: Sessions, rule_id: int) -> AlertRule:
    """Delete a rule and its delivery history. A managed rule cannot be deleted (it would
    come back with the next new issue): switch it off instead."""
    async with sessions.begin() as session:
        rule = await session.get(AlertRule, rule_id)
        if rule is None:
            raise NotFound(f"no alert rule {rule_id}", field="id")
        if is_managed(rule):
            raise InvalidInput(
                "this rule stands for ALERT_EMAILS: switch it off (enabled: false) instead",
                field="id",
            )
        await session.execute(sa.delete(AlertDelivery).where(AlertDelivery.rule_id == rule_id))  # type: ignore[arg-type]
        await session.delete(rule)
    _forget_rules(sessions, rule.project_id)
    return rule


# Every event of a known issue is a `NEW_EVENT` message that frequency rules must look at;
# reading the project's rules for each was a fifteenth of ingest's work. For those
# messages the rules read within the last RULES_TTL seconds serve; new issues and
# regressions (rare, and what people test a new rule with) always read them afresh.
# Changes made through this process drop the entry at once.
RULES_TTL = 2.0
_rules_cache: PerDatabase[dict[int, tuple[float, list[AlertRule]]]] = PerDatabase(dict)


def _forget_rules(sessions: Sessions, project_id: int) -> None:
    _rules_cache(sessions).pop(project_id, None)


def _project_deliveries(project_id: int) -> Any:
    rule_ids = sa.select(RULES.c.id).where(RULES.c.project_id == project_id)
    return sa.select(AlertDelivery).where(AlertDelivery.rule_id.in_(rule_ids))  # type: ignore[attr-defined]


async def list_alert_deliveries(
    *, sessions: Sessions, project_id: int, first: int | None = None, after: str | None = None
) -> Page[AlertDelivery]:
    """A project's notifications, newest first."""
    size = page_size(first)
    query = _project_deliveries(project_id)
    if after:
        _, row_id = decode_cursor(after, ORDER)
        query = query.where(AlertDelivery.id < row_id)  # type: ignore[operator]
    query = query.order_by(AlertDelivery.id.desc()).limit(size + 1)  # type: ignore[union-attr]
    async with sessions() as session:
        rows = (await session.scalars(query)).all()
    return build_page(rows, size=size, order=ORDER, key=lambda d: (d.id, d.id))


async def count_alert_deliveries(*, sessions: Sessions, project_id: int) -> int:
    query = sa.select(sa.func.count()).select_from(_project_deliveries(project_id).subquery())
    async with sessions() as session:
        return int(await session.scalar(query) or 0)


# --- The dispatcher ----------------------------------------------------------------------


@dataclass
class AlertStats:
    """Counters for metrics and tests: messages read, notifications queued, attempts that
    got through or failed, notifications given up on, alerts folded into digests."""

    messages: int = 0
    queued: int = 0
    sent: int = 0
    failed_attempts: int = 0
    given_up: int = 0
    digested: int = 0


def _hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _insert_ignoring_conflicts(conn: AsyncConnection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


@dataclass(frozen=True)
class _Decision:
    rule: AlertRule
    kind: str
    dedupe_key: str
    # Frequency alerts: none for the same rule and group within this long before.
    quiet: timedelta | None = None


class AlertDispatcher:
    """One per server process (see the module docstring). `start` subscribes and starts
    the sweep; `stop` ends both and gives sends in flight a moment to finish."""

    def __init__(
        self,
        *,
        database: Database,
        pubsub: PubSub,
        settings: Settings,
        clock: Clock = utcnow,
    ) -> None:
        self._database = database
        self._pubsub = pubsub
        self._settings = settings
        self._clock = clock
        self.stats = AlertStats()
        self._senders: Senders | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: set[int] = set()
        self._background: list[asyncio.Task[None]] = []
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_SENDS)

    async def start(self) -> None:
        self._senders = Senders(settings=self._settings)
        subscribed = asyncio.Event()
        self._background = [
            asyncio.create_task(self._consume(subscribed), name="errorgraph-alerts"),
            asyncio.create_task(self._sweep_loop(), name="errorgraph-alert-sweep"),
        ]
        await subscribed.wait()

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background = []
        if self._tasks:
            # An attempt cut short stays claimed and is retried after its wait.
            _, pending = await asyncio.wait(
                set(self._tasks), timeout=self._settings.alert_send_timeout
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._senders is not None:
            await self._senders.aclose()

    async def idle(self) -> None:
        """Wait until no notification is being sent by this process."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # Reading what ingest published.

    async def _consume(self, subscribed: asyncio.Event) -> None:
        async with self._pubsub.subscribe([GROUP_CREATED, GROUP_UPDATED]) as subscription:
            subscribed.set()
            while True:
                channel, message = await subscription.get()
                try:
                    await self.handle(channel, message)
                except Exception:
                    log.exception("alerts: handling %s failed", channel)
                finally:
                    self.stats.messages += 1

    async def handle(self, channel: str, message: dict[str, Any]) -> None:
        """Decide which rules `message` fires, record those deliveries, start sending."""
        project_id = int(message["project_id"])
        group_id = int(message["group_id"])
        if channel == GROUP_CREATED:
            triggers = {"new_issue"}
        elif channel == GROUP_UPDATED and message.get("kind") in {"NEW_EVENT", "REGRESSION"}:
            triggers = {"frequency"}
            if message.get("kind") == "REGRESSION":
                triggers.add("regression")
        else:
            return
        now = self._clock()
        rules = await self._rules(project_id, triggers)
        decisions: list[_Decision] = []
        for rule in rules:
            decision = await self._decide(rule, group_id, message, now)
            if decision is not None:
                decisions.append(decision)
        for decision in decisions:
            delivery_id = await self._record(decision, group_id, now)
            if delivery_id is not None:
                self.stats.queued += 1
                self._spawn(delivery_id, 0)

    async def _rules(self, project_id: int, triggers: set[str]) -> list[AlertRule]:
        cache = _rules_cache(self._database.sessions)
        cached = cache.get(project_id)
        if triggers == {"frequency"} and cached is not None and cached[0] > time.monotonic():
            rows = cached[1]
        else:
            async with self._database.sessions() as session:
                rows = list(
                    await session.scalars(
                        sa.select(AlertRule).where(AlertRule.project_id == project_id)  # type: ignore[arg-type]
                    )
                )
            if len(cache) > 10_000:
                cache.clear()
            cache[project_id] = (time.monotonic() + RULES_TTL, rows)
        chosen = [r for r in rows if r.enabled and r.trigger in triggers and not is_managed(r)]
        if "new_issue" in triggers:
            managed = await self._managed_rule(project_id, rows)
            if managed is not None and managed.enabled:
                chosen.append(managed)
        return chosen

    async def _managed_rule(self, project_id: int, rows: list[AlertRule]) -> AlertRule | None:
        """The project's ALERT_EMAILS rule, made or brought up to date on first need."""
        settings = self._settings
        emails = settings.alert_email_list()
        if not emails or not settings.postmark_configured():
            return None
        target = ", ".join(emails)
        found = next((r for r in rows if is_managed(r)), None)
        if found is not None and found.target == target:
            return found
        async with self._database.write_sessions.begin() as session:
            # Two processes meeting the project's first issue must make one rule.
            await session.execute(
                sa.select(Project.id).where(Project.id == project_id).with_for_update()  # type: ignore[arg-type]
            )
            rows = list(
                await session.scalars(
                    sa.select(AlertRule).where(AlertRule.project_id == project_id)  # type: ignore[arg-type]
                )
            )
            found = next((r for r in rows if is_managed(r)), None)
            if found is None:
                found = AlertRule(
                    project_id=project_id,
                    name=MANAGED_NAME,
                    trigger="new_issue",
                    channel="postmark",
                    target=target,
                    options={"managed": MANAGED_BY_SETTINGS},
                    created_at=utcnow(),
                )
                session.add(found)
            else:
                found.target = target
        return found

    async def _decide(
        self, rule: AlertRule, group_id: int, message: dict[str, Any], now: datetime
    ) -> _Decision | None:
        assert rule.id is not None
        prefix = "server" if is_managed(rule) else f"rule:{rule.id}"
        if rule.trigger == "new_issue":
            return _Decision(rule, "new_issue", f"{prefix}:new_issue:group:{group_id}")
        if rule.trigger == "regression":
            event_id = message.get("event_id")
            return _Decision(
                rule, "regression", f"{prefix}:regression:group:{group_id}:event:{event_id}"
            )
        assert rule.threshold is not None and rule.window_minutes is not None
        window = timedelta(minutes=rule.window_minutes)
        async with self._database.sessions() as session:
            group = await session.get(Group, group_id)
            if group is None or group.status == GroupStatus.IGNORED:
                return None
            if await self._recent_frequency_alert(session, rule, group_id, now - window):
                return None
            # Stop counting past the threshold: a storm is not counted in full each batch.
            recent = (
                sa.select(EVENTS.c.id)
                .where(
                    EVENTS.c.project_id == rule.project_id,
                    EVENTS.c.received_at > now - window,
                    EVENTS.c.received_at <= now,
                    EVENTS.c.group_id == group_id,
                )
                .limit(rule.threshold + 1)
                .subquery()
            )
            count = int(await session.scalar(sa.select(sa.func.count()).select_from(recent)) or 0)
        if count <= rule.threshold:
            return None
        bucket = int(now.timestamp() // window.total_seconds())
        return _Decision(
            rule,
            "frequency",
            f"{prefix}:frequency:group:{group_id}:window:{rule.window_minutes}:{bucket}",
            quiet=window,
        )

    @staticmethod
    async def _recent_frequency_alert(
        session: Any, rule: AlertRule, group_id: int, since: datetime
    ) -> bool:
        found = await session.scalar(
            sa.select(DELIVERIES.c.id)
            .where(
                DELIVERIES.c.rule_id == rule.id,
                DELIVERIES.c.created_at > since,
                DELIVERIES.c.group_id == group_id,
                DELIVERIES.c.kind == "frequency",
            )
            .limit(1)
        )
        return found is not None

    async def _record(self, decision: _Decision, group_id: int, now: datetime) -> int | None:
        """Insert the delivery unless another process did; returns its id when it is this
        process's to send now (not when it waits for the hour's digest)."""
        rule = decision.rule
        cap = self._settings.alert_max_per_hour
        hour = _hour_of(now)
        async with self._database.write_sessions.begin() as session:
            conn = await session.connection()
            # Serialise this rule's decisions across processes (SQLite: BEGIN IMMEDIATE
            # already does), so the hourly count and the quiet window are exact.
            exists = await conn.scalar(
                sa.select(RULES.c.id).where(RULES.c.id == rule.id).with_for_update()
            )
            if exists is None:
                return None
            if decision.quiet is not None and await self._recent_frequency_alert(
                conn, rule, group_id, now - decision.quiet
            ):
                return None
            this_hour = int(
                await conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(DELIVERIES)
                    .where(
                        DELIVERIES.c.rule_id == rule.id,
                        DELIVERIES.c.created_at >= hour,
                        DELIVERIES.c.kind != "digest",
                        DELIVERIES.c.status != "digested",
                    )
                )
                or 0
            )
            over = this_hour >= cap
            inserted = await conn.scalar(
                _insert_ignoring_conflicts(conn, DELIVERIES)
                .values(
                    rule_id=rule.id,
                    group_id=group_id,
                    dedupe_key=decision.dedupe_key[:300],
                    kind=decision.kind,
                    status="digested" if over else "pending",
                    attempts=0,
                    created_at=now,
                )
                .returning(DELIVERIES.c.id)
            )
            if inserted is None or not over:
                return inserted
            self.stats.digested += 1
            await conn.execute(
                _insert_ignoring_conflicts(conn, DELIVERIES).values(
                    rule_id=rule.id,
                    group_id=None,
                    dedupe_key=f"rule:{rule.id}:digest:{hour.isoformat()}",
                    kind="digest",
                    status="pending",
                    attempts=0,
                    created_at=now,
                )
            )
            return None

    # Sending.

    def _spawn(self, delivery_id: int, attempts: int) -> None:
        if delivery_id in self._in_flight:
            return
        self._in_flight.add(delivery_id)
        task = asyncio.create_task(self._attempt(delivery_id, attempts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wait_before(self, attempts: int) -> timedelta:
        """How long after its first due moment attempt number `attempts + 1` is due."""
        base = self._settings.alert_retry_seconds
        return timedelta(seconds=sum(min(base * 2**i, MAX_RETRY_WAIT) for i in range(attempts)))

    def _due(self, delivery: Any) -> datetime:
        first = delivery.created_at
        if delivery.kind == "digest":
            first = _hour_of(first) + timedelta(hours=1)
        return first + self._wait_before(delivery.attempts)

    def _horizon(self) -> timedelta:
        """Past this age a pending delivery has had every chance (a day to spare)."""
        return self._wait_before(self._settings.alert_max_attempts) + timedelta(hours=25)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.alert_sweep_seconds)
            try:
                await self.run_due()
            except Exception:
                log.exception("alerts: the sweep failed")

    async def run_due(self) -> int:
        """Start the retries and digests that are due; returns how many were started.
        Deliveries pending past every retry (a process died holding them) are given up."""
        now = self._clock()
        horizon = now - self._horizon()
        async with self._database.sessions() as session:
            rule_ids = list(await session.scalars(sa.select(RULES.c.id)))
            if not rule_ids:
                return 0
            rows = (
                await session.execute(
                    sa.select(
                        DELIVERIES.c.id,
                        DELIVERIES.c.kind,
                        DELIVERIES.c.attempts,
                        DELIVERIES.c.created_at,
                    ).where(
                        DELIVERIES.c.rule_id.in_(rule_ids),
                        DELIVERIES.c.created_at >= horizon,
                        DELIVERIES.c.status == "pending",
                    )
                )
            ).all()
        started = 0
        for row in rows:
            if row.id not in self._in_flight and self._due(row) <= now:
                self._spawn(row.id, row.attempts)
                started += 1
        async with self._database.write_sessions.begin() as session:
            abandoned = await session.execute(
                DELIVERIES.update()
                .where(
                    DELIVERIES.c.rule_id.in_(rule_ids),
                    DELIVERIES.c.created_at < horizon,
                    DELIVERIES.c.status == "pending",
                )
                .values(status="failed", last_error="given up: not sent in time")
            )
            self.stats.given_up += abandoned.rowcount or 0  # type: ignore[attr-defined]
        return started

    async def _attempt(self, delivery_id: int, attempts: int) -> None:
        try:
            async with self._limit:
                await self._attempt_once(delivery_id, attempts)
        except Exception:
            log.exception("alerts: delivery %s failed unexpectedly", delivery_id)
        finally:
            self._in_flight.discard(delivery_id)

    async def _attempt_once(self, delivery_id: int, attempts: int) -> None:
        async with self._database.write_sessions.begin() as session:
            claimed = await session.execute(
                DELIVERIES.update()
                .where(
                    DELIVERIES.c.id == delivery_id,
                    DELIVERIES.c.status == "pending",
                    DELIVERIES.c.attempts == attempts,
                )
                .values(attempts=DELIVERIES.c.attempts + 1)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return  # another process (or an earlier attempt) has it
        attempt = attempts + 1
        error: ChannelError | None = None
        rule: AlertRule | None = None
        try:
            rule, notification = await self._render(delivery_id)
            assert self._senders is not None
            await self._senders.send(
                channel=rule.channel,
                target=rule.target,
                options=rule.options,
                notification=notification,
            )
        except ChannelError as exc:
            error = exc
        now = self._clock()
        if error is None:
            values: dict[str, Any] = {"status": "sent", "sent_at": now, "last_error": None}
            self.stats.sent += 1
        else:
            self.stats.failed_attempts += 1
            final = error.permanent or attempt >= self._settings.alert_max_attempts
            values = {"status": "failed" if final else "pending", "last_error": str(error)[:2000]}
            if final:
                self.stats.given_up += 1
            log.warning(
                "alerts: delivery %s (%s) attempt %d failed%s: %s",
                delivery_id,
                rule.channel if rule else "?",
                attempt,
                "; giving up" if final else "",
                error,
            )
        async with self._database.write_sessions.begin() as session:
            await session.execute(
                DELIVERIES.update().where(DELIVERIES.c.id == delivery_id).values(**values)
            )

    # What a notification says.

    async def _render(self, delivery_id: int) -> tuple[AlertRule, Notification]:
        async with self._database.sessions() as session:
            delivery = await session.get(AlertDelivery, delivery_id)
            assert delivery is not None
            rule = await session.get(AlertRule, delivery.rule_id)
            project = await session.get(Project, rule.project_id) if rule else None
            if rule is None or project is None:
                raise ChannelError("the rule or its project was deleted", permanent=True)
            if delivery.kind == "digest":
                return rule, await self._digest(session, rule, project, delivery)
            group = await session.get(Group, delivery.group_id) if delivery.group_id else None
        if group is None:
            raise ChannelError("the issue was deleted before it was told", permanent=True)
        return rule, self._about_group(rule, project, group, delivery.kind)

    def _link(self, group_id: int | None) -> str:
        base = self._settings.base_url()
        return f"{base}/#/issues/{group_id}" if group_id else f"{base}/"

    def _about_group(
        self, rule: AlertRule, project: Project, group: Group, kind: str
    ) -> Notification:
        title = group.title if len(group.title) <= 150 else group.title[:149] + "…"
        if kind == "new_issue":
            headline = "New issue"
        elif kind == "regression":
            headline = "Regression (a resolved issue came back)"
        else:
            headline = f"More than {rule.threshold} events in {rule.window_minutes} min"
        link = self._link(group.id)
        lines = [
            f"{headline} in {project.name}:",
            "",
            group.title,
        ]
        if group.culprit:
            lines.append(f"in {group.culprit}")
        lines += [
            "",
            f"Level: {group.level} · Events: {group.count} · Users: {group.user_count}",
            f"First seen: {_when(group.first_seen)} · Last seen: {_when(group.last_seen)}",
            "",
            link,
        ]
        text = "\n".join(lines)
        payload: dict[str, Any] = {
            "kind": kind,
            "subject": f"[{project.name}] {headline}: {title}",
            "text": text,
            "url": link,
            "project": {"id": project.id, "slug": project.slug, "name": project.name},
            "rule": {"id": rule.id, "name": rule.name, "trigger": rule.trigger},
            "group": _group_json(group),
        }
        if kind == "frequency":
            payload["threshold"] = rule.threshold
            payload["window_minutes"] = rule.window_minutes
        return Notification(subject=payload["subject"], text=text, payload=payload, link=link)

    async def _digest(
        self, session: Any, rule: AlertRule, project: Project, digest: AlertDelivery
    ) -> Notification:
        hour = _hour_of(digest.created_at)
        rows = (
            await session.execute(
                sa.select(AlertDelivery, Group)
                .outerjoin(Group, Group.id == AlertDelivery.group_id)  # type: ignore[arg-type]
                .where(
                    AlertDelivery.rule_id == rule.id,  # type: ignore[arg-type]
                    AlertDelivery.status == "digested",  # type: ignore[arg-type]
                    AlertDelivery.created_at >= hour,  # type: ignore[arg-type, operator]
                    AlertDelivery.created_at < hour + timedelta(hours=1),  # type: ignore[arg-type, operator]
                )
                .order_by(AlertDelivery.id)  # type: ignore[arg-type]
            )
        ).all()
        kinds = {"new_issue": "new issue", "regression": "regression", "frequency": "frequent"}
        entries = []
        lines = [
            f"{len(rows)} more alerts for {project.name} between {_when(hour)} and "
            f"{_when(hour + timedelta(hours=1))} went over the limit of "
            f"{self._settings.alert_max_per_hour} an hour for rule "
            f"{rule.name or rule.id}:",
            "",
        ]
        for delivery, group in rows:
            title = group.title if group is not None else "(deleted issue)"
            lines.append(f"- {kinds.get(delivery.kind, delivery.kind)}: {title}")
            if group is not None:
                lines.append(f"  {self._link(group.id)}")
            entries.append(
                {
                    "kind": delivery.kind,
                    "at": delivery.created_at.isoformat(),
                    "group": _group_json(group) if group is not None else None,
                    "url": self._link(group.id) if group is not None else None,
                }
            )
        text = "\n".join(lines)
        subject = f"[{project.name}] Digest: {len(rows)} more alerts"
        link = self._link(None)
        return Notification(
            subject=subject,
            text=text,
            link=link,
            payload={
                "kind": "digest",
                "subject": subject,
                "text": text,
                "url": link,
                "project": {"id": project.id, "slug": project.slug, "name": project.name},
                "rule": {"id": rule.id, "name": rule.name, "trigger": rule.trigger},
                "alerts": entries,
            },
        )


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _group_json(group: Group) -> dict[str, Any]:
    return {
        "id": group.id,
        "title": group.title,
        "culprit": group.culprit,
        "level": group.level,
        "status": group.status,
        "count": group.count,
        "user_count": group.user_count,
        "first_seen": group.first_seen.isoformat(),
        "last_seen": group.last_seen.isoformat(),
        "exception_type": group.exception_type,
        "message": group.message,
    }
