"""The canonical event: what every dialect's request becomes before ingest.

Every REST dialect and the Sentry protocol map their payloads onto `EventIn`; nothing
after the dialect module knows where an event came from except through `dialect`.

Conventions, following the Sentry event protocol so that mapping is direct:

- `exceptions` is the chain in the order it happened: the first raised (the root
  cause) first, the one that surfaced last. The last item is the primary exception.
- `frames` in each exception run from the outermost call to the innermost, so the
  crash site is the last frame.

Limits are applied here, at the edge, so that storage and grouping never see
unbounded input: long strings are cut and marked, frame lists keep both ends, and
only the most recent breadcrumbs are kept.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from itertools import accumulate
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

TRUNCATION_MARKER = "…[truncated]"

MAX_FRAMES = 250
MAX_BREADCRUMBS = 100
MAX_EXCEPTIONS = 25
MAX_TAGS = 200


# Free-form data (variables, request, contexts, extra…) nests at most this deep: storing,
# scrubbing and displaying it recurse, and SDKs cut theirs far shallower (the Python SDK
# at 10 levels). JSON parsers accept up to a thousand levels, where a Python walk would
# end in RecursionError.
MAX_JSON_DEPTH = 64
TOO_DEEP = f"nested deeper than {MAX_JSON_DEPTH} levels"

# What a bracket does to the nesting depth, by byte value; every other byte is deleted.
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_DEPTH_STEP = [0] * 256
for _byte in b"[{":
    _DEPTH_STEP[_byte] = 1
for _byte in b"]}":
    _DEPTH_STEP[_byte] = -1


def json_depth(text: bytes) -> int:
    """How deep the containers of `text`, UTF-8 JSON that has parsed, nest (0: a scalar).

    Read off the bytes in C-level passes rather than by walking the parsed value:
    escaped backslashes and then escaped quotes are dropped, which leaves every `"` a
    string's start or end, so the brackets outside strings are every other piece of a
    split on `"`; the depth is the highest running sum of those brackets, `[`/`{` up and
    `]`/`}` down.
    """
    unescaped = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def without_nul(value: Any) -> Any:
    """`value` with NUL characters removed from every string in it.

    PostgreSQL refuses NUL in text and JSON, and no tracker needs it; removing it here
    keeps one database from rejecting what the other accepts. Returns `value` itself
    when there is nothing to remove: the common case, found by serialising the value once
    in C (orjson writes NUL as `\\u0000`) rather than walking it in Python, which was a
    twentieth of ingest's time.
    """
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict | list):
        try:
            if b"\\u0000" not in orjson.dumps(value):
                return value
        except TypeError:
            pass  # not JSON as orjson writes it (keys that are not text, deep nesting): walk
    return _walk_without_nul(value)


def free_form(value: Any) -> Any:
    """`value`, free-form data of an event, as it may be stored: without NUL (see
    `without_nul`), and ValueError when nested deeper than MAX_JSON_DEPTH.

    Both come from one serialisation in C: the depth is read off it only when it holds
    more than MAX_JSON_DEPTH brackets at all, which small values (a frame's variables)
    never do. Checked here, on what is kept, for every dialect, rather than over each
    request's whole text in the dialect (a sixth of the event loop's time per Sentry
    event, and the other dialects did not check: a thousand levels were a 500).
    """
    if not isinstance(value, dict | list):
        return without_nul(value)
    try:
        blob = orjson.dumps(value)
    except TypeError:  # keys that are not text, or deeper than orjson writes: walk
        return _walk_without_nul(value, limit=MAX_JSON_DEPTH)
    if blob.count(b"[") + blob.count(b"{") > MAX_JSON_DEPTH and json_depth(blob) > MAX_JSON_DEPTH:
        raise ValueError(TOO_DEEP)
    return value if b"\\u0000" not in blob else _walk_without_nul(value)


def _walk_without_nul(value: Any, *, limit: int | None = None, depth: int = 0) -> Any:
    """`value` without NUL; ValueError past `limit` levels of containers (when given)."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict | list):
        depth += 1
        if limit is not None and depth > limit:
            raise ValueError(TOO_DEEP)
    if isinstance(value, dict):
        cleaned = {
            _walk_without_nul(k): _walk_without_nul(v, limit=limit, depth=depth)
            for k, v in value.items()
        }
        return value if cleaned == value else cleaned
    if isinstance(value, list):
        items = [_walk_without_nul(item, limit=limit, depth=depth) for item in value]
        return value if items == value else items
    return value


def _truncator(limit: int) -> AfterValidator:
    """Cut a string to `limit` characters, marking the cut so nobody mistakes it for data."""

    def cut(value: str) -> str:
        if "\x00" in value:
            value = value.replace("\x00", "")
        if len(value) <= limit:
            return value
        return value[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER

    return AfterValidator(cut)


ShortStr = Annotated[str, _truncator(200)]
NameStr = Annotated[str, _truncator(512)]
PathStr = Annotated[str, _truncator(1024)]
TextStr = Annotated[str, _truncator(8192)]
StackText = Annotated[str, _truncator(262_144)]


class Level(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    FATAL = "fatal"

    @classmethod
    def parse(cls, value: object, default: Level | None = None) -> Level:
        """Read the level names clients actually send (`warn`, `critical`, `log`, any case)."""
        if value is None and default is not None:
            return default
        text = str(value).strip().lower()
        aliases = {
            "warn": cls.WARNING,
            "critical": cls.FATAL,
            "log": cls.INFO,
            "notice": cls.INFO,
            "trace": cls.DEBUG,
            "err": cls.ERROR,
            "exception": cls.ERROR,
        }
        if text in aliases:
            return aliases[text]
        return cls(text)


class EventType(StrEnum):
    EXCEPTION = "exception"
    MESSAGE = "message"
    LOG = "log"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    # The free-form fields, checked by `free_form` (text fields remove NUL in their own
    # types, nested models in their own validators): naming them, not "*", spares a call
    # per field of every frame.
    @field_validator(
        "vars",
        "mechanism",
        "data",
        "request",
        "breadcrumbs",
        "tags",
        "extra",
        "contexts",
        "fingerprint",
        mode="after",
        check_fields=False,
    )
    @classmethod
    def _free_form_field(cls, value: Any) -> Any:
        if isinstance(value, dict | list):
            return free_form(value)
        return value


class MinifiedFrame(_Model):
    """Where a frame was in minified code, kept when a source map resolved it: what the
    client reported, for display and for checking a map (see `app.domain.sourcemap`)."""

    filename: PathStr | None = None
    abs_path: PathStr | None = None
    function: NameStr | None = None
    lineno: int | None = None
    colno: int | None = None


class Frame(_Model):
    """One stack frame. Every field is optional: parsers fill what the format carries.

    `minified` is set only on frames resolved through a source map; the other fields
    then describe the original source.
    """

    filename: PathStr | None = None
    abs_path: PathStr | None = None
    function: NameStr | None = None
    module: NameStr | None = None
    lineno: int | None = None
    colno: int | None = None
    in_app: bool | None = None
    context_line: TextStr | None = None
    pre_context: list[TextStr] = Field(default_factory=list, max_length=50)
    post_context: list[TextStr] = Field(default_factory=list, max_length=50)
    vars: dict[str, Any] = Field(default_factory=dict)
    platform: ShortStr | None = None
    minified: MinifiedFrame | None = None


class ExceptionIn(_Model):
    type: NameStr | None = None
    value: TextStr | None = None
    module: NameStr | None = None
    mechanism: dict[str, Any] | None = None
    frames: list[Frame] = Field(default_factory=list)

    @field_validator("frames", mode="after")
    @classmethod
    def _keep_both_ends(cls, frames: list[Frame]) -> list[Frame]:
        """Keep the outermost and innermost frames of a deep stack (recursion), like Sentry."""
        if len(frames) <= MAX_FRAMES:
            return frames
        head = MAX_FRAMES // 5
        return frames[:head] + frames[-(MAX_FRAMES - head) :]


class UserIn(_Model):
    """The end user an error hit. `id` is the client's identifier, not ours."""

    id: ShortStr | None = None
    email: ShortStr | None = None
    username: ShortStr | None = None
    name: ShortStr | None = None
    ip_address: ShortStr | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value

    def external_id(self) -> str | None:
        """The identity used to count users: id, else e-mail, else username, else IP."""
        return self.id or self.email or self.username or self.ip_address


class AccountIn(_Model):
    """The customer account (organisation) of a B2B application."""

    id: ShortStr | None = None
    name: ShortStr | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


def _new_event_id() -> str:
    return uuid.uuid4().hex


def _utcnow() -> datetime:
    return datetime.now(UTC)


class EventIn(_Model):
    """One event, as every dialect hands it to the ingest service."""

    event_id: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        default_factory=_new_event_id
    )
    timestamp: datetime = Field(default_factory=_utcnow)
    type: EventType = EventType.EXCEPTION
    level: Level = Level.ERROR
    platform: ShortStr | None = None
    logger: ShortStr | None = None
    environment: ShortStr | None = None
    release: ShortStr | None = None
    server_name: ShortStr | None = None
    transaction: NameStr | None = None
    message: TextStr | None = None
    exceptions: list[ExceptionIn] = Field(default_factory=list)
    raw_stacktrace: StackText | None = None
    url: PathStr | None = None
    user_agent: TextStr | None = None
    request: dict[str, Any] | None = None
    user: UserIn | None = None
    account: AccountIn | None = None
    session_id: ShortStr | None = None
    window_id: ShortStr | None = None
    breadcrumbs: list[dict[str, Any]] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    contexts: dict[str, Any] = Field(default_factory=dict)
    fingerprint: list[str] | None = None
    dialect: ShortStr = "api"
    client_ip: ShortStr | None = None

    @field_validator("level", mode="before")
    @classmethod
    def _level_aliases(cls, value: object) -> object:
        return Level.parse(value) if value is not None else Level.ERROR

    @field_validator("timestamp", mode="after")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        """Naive timestamps are taken as UTC, the only zone clients are told to send."""
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:
            # 0001-01-01T00:00+01:00 is a valid time that has no UTC date Python can hold.
            raise ValueError("timestamp is out of range once converted to UTC") from None

    @field_validator("exceptions", mode="after")
    @classmethod
    def _bounded_chain(cls, value: list[ExceptionIn]) -> list[ExceptionIn]:
        return value[-MAX_EXCEPTIONS:]

    @field_validator("breadcrumbs", mode="after")
    @classmethod
    def _recent_breadcrumbs(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return value[-MAX_BREADCRUMBS:]

    @field_validator("tags", mode="before")
    @classmethod
    def _tags_as_text(cls, value: object) -> object:
        """Tags arrive as a dict or as Sentry's list of pairs; values become short strings."""
        if value is None:
            return {}
        if isinstance(value, list):
            pairs = [item for item in value if isinstance(item, list | tuple) and len(item) == 2]
            value = dict(pairs)
        if isinstance(value, dict):
            out: dict[str, str] = {}
            for key, item in list(value.items())[:MAX_TAGS]:
                if item is None:
                    continue
                text = item if isinstance(item, str) else str(item)
                out[str(key)[:200]] = text[:200]
            return out
        return value

    @property
    def primary_exception(self) -> ExceptionIn | None:
        return self.exceptions[-1] if self.exceptions else None
