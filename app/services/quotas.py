"""Rate limits and quotas: how much one client address, and one project key, may send.

Two limits, both refused with `QuotaExceeded` (429 with `Retry-After` in every REST
dialect, and `X-Sentry-Rate-Limits` on the Sentry endpoints):

- **per client address and dialect** (`check_client`): every request a dialect serves,
  counted before its body is read or its key looked up, so that a flood — or someone
  guessing keys — costs one counter update per request. The limits are the settings'
  `client_rate_limits` (the Error Tracker's 100 a minute is its document's).
- **per project key** (`check_events`): events a minute and an hour, counted by the
  ingest service for every dialect alike. A project's `events_per_minute` and
  `events_per_hour` win over the settings' defaults; 0 means no limit. Events sent
  without a project key (the Error Tracker's server-wide key, GraphQL's capture
  mutations) count against their project. Counting per key lets a project's leaked
  browser key be throttled without silencing its backend's key.

Counted with the `limits` library's moving window, which is exact: never more than N in
any window of its length, so a client cannot double its allowance at a window's edge.
The counters live in this process's memory, or in Redis when `broadcast_url` is a Redis
URL, so that every process of a deployment counts against the same numbers. When Redis
cannot be reached, requests are let through and the failure is logged (at most once a
minute): a limiter outage must not stop ingest.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from app.config import Settings
from app.errors import QuotaExceeded
from app.models import Project

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

log = logging.getLogger(__name__)

KEY_PREFIX = "errorgraph-limits"
# Seconds to wait for Redis before letting a request through uncounted.
REDIS_TIMEOUT = 2.0
FAILURE_LOG_INTERVAL = 60.0


def _parsed(text: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(text)) if text.strip() else ()


def describe(item: RateLimitItem, what: str = "") -> str:
    """`100 requests per minute`, `5 events per 2 hours`."""
    unit = item.GRANULARITY.name
    span = unit if item.multiples == 1 else f"{item.multiples} {unit}s"
    return f"{item.amount} {what + ' ' if what else ''}per {span}"


def _limit(project_value: int | None, default: int | None) -> int | None:
    """The limit in force: the project's, else the default; 0 (or None) is none."""
    value = project_value if project_value is not None else default
    return value or None


class Quotas:
    """The limiter of one process; `close` it when done."""

    def __init__(
        self,
        *,
        client_limits: dict[str, str],
        events_per_minute: int | None = None,
        events_per_hour: int | None = None,
        redis_url: str | None = None,
    ) -> None:
        self._client_limits = {name: _parsed(text) for name, text in client_limits.items()}
        self._default_client_limits = self._client_limits.get("default", ())
        self.events_per_minute = events_per_minute
        self.events_per_hour = events_per_hour
        self._pool: ConnectionPool | None = None
        storage: Storage
        if redis_url:
            # Imported here alone: a process on memory:// never loads the client (~7 MiB).
            from redis.asyncio import ConnectionPool

            self._pool = ConnectionPool.from_url(
                redis_url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
            )
            storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix=KEY_PREFIX,
                wrap_exceptions=True,
                connection_pool=self._pool,
            )
        else:
            storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(storage)
        self._last_failure_log = -math.inf

    @classmethod
    def from_settings(cls, settings: Settings) -> Quotas:
        """Counters in Redis when the deployment's pub/sub is Redis, else in memory."""
        scheme = urlsplit(settings.broadcast_url).scheme
        return cls(
            client_limits=settings.client_rate_limits,
            events_per_minute=settings.events_per_minute,
            events_per_hour=settings.events_per_hour,
            redis_url=settings.broadcast_url if scheme in {"redis", "rediss"} else None,
        )

    @property
    def shared(self) -> bool:
        """Whether the counters are shared with other processes (Redis)."""
        return self._pool is not None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()

    def client_limits(self, dialect: str) -> Sequence[RateLimitItem]:
        return self._client_limits.get(dialect, self._default_client_limits)

    async def check_client(self, *, dialect: str, address: str | None) -> None:
        """Count one request from `address` to `dialect`; QuotaExceeded past its limit.
        Requests without an address (a Unix socket) are not counted."""
        if address is None:
            return
        for item in self.client_limits(dialect):
            identifiers = ("client", dialect, address)
            if not await self._hit(item, identifiers, cost=1):
                raise QuotaExceeded(
                    f"too many requests from {address}: this API takes "
                    f"{describe(item, 'requests')} from one address",
                    retry_after=await self._retry_after(item, identifiers),
                    scope="ip",
                )

    def event_limits(self, project: Project) -> list[RateLimitItem]:
        items: list[RateLimitItem] = []
        per_minute = _limit(project.events_per_minute, self.events_per_minute)
        per_hour = _limit(project.events_per_hour, self.events_per_hour)
        if per_minute:
            items.append(RateLimitItemPerMinute(per_minute))
        if per_hour:
            items.append(RateLimitItemPerHour(per_hour))
        return items

    async def check_events(self, *, project: Project, key_id: int | None, count: int) -> None:
        """Count `count` events sent with the key `key_id` (None: without a key) to
        `project`; QuotaExceeded, with nothing counted, when any window would overflow."""
        items = self.event_limits(project)
        if not items or count <= 0:
            return
        scope = "key" if key_id is not None else "project"
        identifiers = ("events", scope, str(key_id if key_id is not None else project.id))
        # Every window is tested before any is charged, so that a refusal by the hourly
        # limit does not use up the minute's allowance.
        for item in items:
            if not await self._test(item, identifiers, cost=count):
                await self._refuse_events(item, identifiers, scope, count)
        for item in items:
            if not await self._hit(item, identifiers, cost=count):
                await self._refuse_events(item, identifiers, scope, count)

    async def _refuse_events(
        self, item: RateLimitItem, identifiers: tuple[str, ...], scope: str, count: int
    ) -> NoReturn:
        whose = "this project key" if scope == "key" else "this project"
        allowed = describe(item, "events")
        if count > item.amount:
            message = f"{count} events in one request; {whose} may send {allowed}"
            retry_after = item.get_expiry()
        else:
            message = f"over quota: {whose} may send {allowed}"
            retry_after = await self._retry_after(item, identifiers)
        raise QuotaExceeded(message, retry_after=retry_after, scope=scope)

    async def _hit(self, item: RateLimitItem, identifiers: tuple[str, ...], *, cost: int) -> bool:
        try:
            return await self._limiter.hit(item, *identifiers, cost=cost)
        except StorageError as exc:
            self._storage_failed(exc)
            return True

    async def _test(self, item: RateLimitItem, identifiers: tuple[str, ...], *, cost: int) -> bool:
        try:
            return await self._limiter.test(item, *identifiers, cost=cost)
        except StorageError as exc:
            self._storage_failed(exc)
            return True

    async def _retry_after(self, item: RateLimitItem, identifiers: tuple[str, ...]) -> int:
        """Whole seconds until the oldest request in the window leaves it (at least 1)."""
        try:
            stats = await self._limiter.get_window_stats(item, *identifiers)
        except StorageError as exc:
            self._storage_failed(exc)
            return item.get_expiry()
        return max(1, min(item.get_expiry(), math.ceil(stats.reset_time - time.time())))

    def _storage_failed(self, exc: StorageError) -> None:
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL:
            self._last_failure_log = now
            log.warning("rate limits are not counted: %s", exc.storage_error)
