"""Settings, read from the environment (prefix `ERRORGRAPH_`) and `.env`.

Settings are built once by whoever starts the process (the CLI, `app.main`) and passed
down; nothing reads the environment at import time, so a test builds its own.

The variables of the Error Tracker document (`../shared/seeds/003_5d6793c66178ddef.txt`)
work as aliases, so a deployment configured for it starts unchanged: `API_KEY`,
`DATABASE_PATH` (a file, turned into a SQLite URL), `LOG_LEVEL` (`warn` included),
`RETENTION_DAYS`, and for its e-mail alerts `POSTMARK_API_TOKEN`, `POSTMARK_FROM_EMAIL` and
`ALERT_EMAILS`. The `ERRORGRAPH_` name wins when both are set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from limits import parse_many
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./data/errorgraph.db"
# Requests a minute per client address: the Error Tracker's is its document's ("100
# requests/minute per IP"); the others are errorgraph's, high enough for a busy backend
# behind one address.
DEFAULT_CLIENT_RATE_LIMITS = {"default": "1200/minute", "error_tracker": "100/minute"}

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


def _alias(name: str, seed_name: str) -> AliasChoices:
    """Read `ERRORGRAPH_<name>`, else the Error Tracker's own variable `seed_name`."""
    return AliasChoices(f"ERRORGRAPH_{name}", seed_name)


class SettingsError(Exception):
    """Settings that cannot be used; the message names the setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ERRORGRAPH_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # Aliased fields are still set by their Python name (`Settings(log_level=…)`).
        populate_by_name=True,
    )

    database_url: str = DEFAULT_DATABASE_URL
    # A SQLite file; becomes `database_url` unless that is set too.
    database_path: str | None = Field(
        default=None, validation_alias=_alias("DATABASE_PATH", "DATABASE_PATH")
    )
    # The server-wide key of the Error Tracker dialect: whoever sends it in X-API-Key
    # reports to (and reads) every project, naming the project in the body.
    api_key: SecretStr | None = Field(
        default=None, validation_alias=_alias("API_KEY", "API_KEY"), repr=False
    )
    broadcast_url: str = "memory://"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_url: str | None = None
    log_level: LogLevel = Field(default="info", validation_alias=_alias("LOG_LEVEL", "LOG_LEVEL"))
    # Logs on stderr: JSON lines, text for a person, or `auto` (text on a terminal only).
    log_format: Literal["auto", "json", "console"] = "auto"
    # When set, GET /metrics needs `Authorization: Bearer <this>`; unset, it is open.
    metrics_token: SecretStr | None = Field(default=None, repr=False)
    # On SIGTERM, how long requests in flight may take to be answered before they are cut.
    shutdown_timeout: float = Field(default=30.0, gt=0, le=3600)
    # With `serve --workers N`: a worker whose event loop has not run for this many seconds
    # is hung (work that never yields, a C call that never returns) and is replaced; 0
    # never replaces one that still lives.
    worker_timeout: float = Field(default=60.0, ge=0, le=3600)
    # How long events are kept when no retention policy was set.
    retention_days: int = Field(
        default=90, ge=1, le=3650, validation_alias=_alias("RETENTION_DAYS", "RETENTION_DAYS")
    )
    # The cleanup task (app/services/cleanup.py): whether this process takes part, how
    # often the deployment runs it, events per delete transaction, and events per run
    # (each run is one export file; a project with more goes on in another run).
    retention_enabled: bool = True
    retention_interval_seconds: float = Field(default=3600.0, ge=1, le=7 * 86400)
    retention_batch_size: int = Field(default=500, ge=1, le=10_000)
    retention_run_limit: int = Field(default=100_000, ge=1, le=10_000_000)
    # GraphiQL in the browser at /graphql; the API itself is always on.
    graphiql: bool = True
    # Where the built dashboard is (default: frontend-examples/dashboard/dist).
    dashboard_dir: str | None = None
    # WebSocket subscriptions: the legacy `graphql-ws` protocol beside
    # `graphql-transport-ws`, seconds to wait for connection_init, operations per socket.
    graphql_ws_legacy: bool = False
    ws_connection_init_timeout: float = Field(default=10.0, gt=0, le=600)
    ws_max_subscriptions: int = Field(default=20, ge=1, le=1000)
    # Messages a slow subscriber may fall behind before its oldest are dropped.
    subscriber_queue_size: int = Field(default=1000, ge=1, le=1_000_000)

    # Limits on what a client may send (bytes unless said otherwise).
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Request bodies one process reads and works on at once (app/admission.py); the other
    # requests wait their turn. 0: no limit.
    max_body_bytes_in_flight: int = Field(default=4_194_304, ge=0)
    # A body must keep coming (app/admission.py): after this many seconds of waiting for
    # it, at least this many bytes a second on average, or 408. 0 bytes: any pace.
    body_grace_seconds: float = Field(default=10.0, gt=0, le=3600)
    body_min_bytes_per_second: int = Field(default=16_384, ge=0)
    max_batch_events: int = Field(default=100, ge=1, le=10_000)

    # Rate limits (app/services/quotas.py; counted in Redis when broadcast_url is Redis, so
    # they hold across processes). Requests per client address and dialect, in the
    # `limits` notation ("100/minute", "10/second;1000/hour"); "" turns a dialect's limit
    # off, and a dialect not named takes "default". From the environment as JSON, merged
    # over the defaults: ERRORGRAPH_CLIENT_RATE_LIMITS='{"error_tracker": "300/minute"}'.
    client_rate_limits: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_CLIENT_RATE_LIMITS)
    )
    # Events per project key (per project for events sent without one) and minute or
    # hour, unless the project sets its own; None or 0: no limit.
    events_per_minute: int | None = Field(default=None, ge=0)
    events_per_hour: int | None = Field(default=None, ge=0)

    # Freeze the start-up heap out of the garbage collector's sight and collect less often
    # (app.memory.tune_garbage_collector), collect once large request bodies ended
    # (app.memory.LargeBodyGarbage), and give large freed blocks back to the system
    # (app.memory.return_large_blocks): a served process's memory settings. `errorgraph
    # serve` turns it on for its server processes; off elsewhere, since a frozen heap is
    # never collected (tests build many apps in one process).
    gc_freeze: bool = False
    # How long a process trusts a project key or API token it looked up (and a key's
    # project's settings); changes made through another process take effect here within
    # this time. 0: never.
    key_cache_seconds: float = Field(default=5.0, ge=0, le=3600)

    # The batch writer: how many events one transaction takes at most, and how long the
    # first caller waits for others to join (milliseconds). Larger batches raise
    # throughput on SQLite; the wait bounds the latency it costs.
    writer_max_batch: int = Field(default=500, ge=1, le=50_000)
    writer_max_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    # Batch transactions a process keeps in flight on PostgreSQL, where each commit waits
    # for the server to flush its WAL (on SQLite always one: a file has one writer).
    writer_transactions: int = Field(default=2, ge=1, le=16)

    # Alerts (see app/services/alerts.py). With ALERT_EMAILS and Postmark configured, as
    # in the Error Tracker document, every project gets new-issue mails without a rule.
    alerts_enabled: bool = True
    alert_emails: str | None = Field(
        default=None, validation_alias=_alias("ALERT_EMAILS", "ALERT_EMAILS")
    )
    postmark_api_token: SecretStr | None = Field(
        default=None,
        validation_alias=_alias("POSTMARK_API_TOKEN", "POSTMARK_API_TOKEN"),
        repr=False,
    )
    postmark_from_email: str | None = Field(
        default=None, validation_alias=_alias("POSTMARK_FROM_EMAIL", "POSTMARK_FROM_EMAIL")
    )
    postmark_api_url: str = "https://api.postmarkapp.com"
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = Field(default=None, repr=False)
    smtp_from: str | None = None
    smtp_starttls: bool = True
    # Messages per rule and clock hour before the rest wait for one digest at the hour's end.
    alert_max_per_hour: int = Field(default=20, ge=1, le=10_000)
    # Tries per notification; the wait doubles from alert_retry_seconds between them.
    alert_max_attempts: int = Field(default=5, ge=1, le=50)
    alert_send_timeout: float = Field(default=10.0, gt=0, le=300)
    alert_retry_seconds: float = Field(default=30.0, gt=0, le=3600)
    # How often due retries and digests are looked for.
    alert_sweep_seconds: float = Field(default=5.0, gt=0, le=3600)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme == "sqlite":
            return "sqlite+aiosqlite" + value[len("sqlite") :]
        if scheme == "sqlite+aiosqlite":
            return value
        if scheme in {"postgres", "postgresql", "postgresql+asyncpg"}:
            rest = value.split("://", 1)[1]
            return f"postgresql+asyncpg://{rest}"
        raise ValueError(
            "must start with sqlite+aiosqlite:// or postgresql+asyncpg:// (got scheme "
            f"{scheme or 'none'!r})"
        )

    @field_validator("client_rate_limits")
    @classmethod
    def _known_rate_limits(cls, value: dict[str, str]) -> dict[str, str]:
        merged = {**DEFAULT_CLIENT_RATE_LIMITS, **value}
        for dialect, text in merged.items():
            if text.strip():
                try:
                    parse_many(text)
                except ValueError:
                    raise ValueError(
                        f"{dialect}: {text!r} is not a rate limit like 100/minute"
                    ) from None
        return merged

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_names(cls, value: object) -> object:
        """Any case, and `warn` as the Error Tracker spells it."""
        if isinstance(value, str):
            value = value.strip().lower()
            return "warning" if value == "warn" else value
        return value

    @field_validator("database_path")
    @classmethod
    def _database_file(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("api_key", "metrics_token")
    @classmethod
    def _no_empty_key(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty API_KEY= line means no server key, not a key that is the empty string."""
        if value is None or not value.get_secret_value().strip():
            return None
        return value

    @field_validator("alert_emails", "postmark_from_email", "smtp_host", "smtp_from")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        """An empty `ALERT_EMAILS=` line means none, as an unset variable does."""
        return value.strip() or None if value is not None else None

    @field_validator("postmark_api_token")
    @classmethod
    def _no_empty_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return value

    @field_validator("alert_retry_seconds")
    @classmethod
    def _retry_outlasts_a_send(cls, value: float, info: ValidationInfo) -> float:
        # Another process may retry a notification once its wait is over: a send still in
        # flight then would go out twice.
        timeout = info.data.get("alert_send_timeout")
        if timeout is not None and value < timeout:
            raise ValueError(f"must be at least ERRORGRAPH_ALERT_SEND_TIMEOUT ({timeout:g}s)")
        return value

    @model_validator(mode="after")
    def _database_from_path(self) -> Settings:
        if self.database_path and "database_url" not in self.model_fields_set:
            path = os.path.expanduser(self.database_path)
            self.database_url = f"sqlite+aiosqlite:///{path}"
        return self

    @field_validator("broadcast_url")
    @classmethod
    def _known_broadcast(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in {"memory", "redis", "rediss", "postgres", "postgresql", "kafka"}:
            raise ValueError(f"must be memory://, redis://… or postgres://… (got {value!r})")
        return value

    @field_validator("public_url")
    @classmethod
    def _absolute_public_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(
                f"must be an absolute http(s) URL like http://errors.example.com (got {value!r})"
            )
        return value.rstrip("/")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_path(self) -> Path | None:
        """The database file, or None for PostgreSQL and for SQLite's in-memory database."""
        if not self.is_sqlite:
            return None
        path = self.database_url.split(":///", 1)[1] if ":///" in self.database_url else ""
        path = path.split("?", 1)[0]
        if path in {"", ":memory:"}:
            return None
        return Path(path)

    def base_url(self) -> str:
        """Where clients reach this server: the public URL when set, else host and port."""
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::", ""} else self.host
        return f"http://{host}:{self.port}"

    def dsn_for(self, *, key: str, project_id: int) -> str:
        """The Sentry DSN: the public URL with the key as user and the project id as path."""
        base = urlsplit(self.base_url())
        path = f"{base.path.rstrip('/')}/{project_id}"
        return urlunsplit((base.scheme, f"{key}@{base.netloc}", path, "", ""))

    def alert_email_list(self) -> list[str]:
        """ALERT_EMAILS, comma-separated as the Error Tracker document has it."""
        return [part.strip() for part in (self.alert_emails or "").split(",") if part.strip()]

    def postmark_configured(self) -> bool:
        return self.postmark_api_token is not None and bool(self.postmark_from_email)

    def logging_level(self) -> int:
        return logging.getLevelNamesMapping()[self.log_level.upper()]


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation error into one line per bad setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = _variable_name(error["loc"])
            lines.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(lines)) from None


def _variable_name(loc: tuple[int | str, ...]) -> str:
    """The variable a settings error is about. An aliased field reports its first alias;
    name the one actually set in the environment, so `LOG_LEVEL=loud` is not blamed on
    an `ERRORGRAPH_LOG_LEVEL` nobody set."""
    joined = "_".join(str(part) for part in loc).upper()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices) and str(alias.choices[0]).upper() == joined:
            names = [str(choice) for choice in alias.choices]
            present = {key.upper() for key in os.environ}
            return next((name for name in names if name.upper() in present), names[0])
    return joined if joined.startswith("ERRORGRAPH_") else "ERRORGRAPH_" + joined
