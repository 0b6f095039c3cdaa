"""The Sentry ingestion protocol, so that an application's Sentry SDK only needs its DSN
pointed at errorgraph.

Endpoints (both also without the trailing slash, and open to browsers through CORS):

- `POST /api/{project_id}/envelope/`: an envelope (develop.sentry.dev, "Envelopes").
  Items of type `event` are ingested (at most one per envelope, as the spec says);
  `client_report` items are stored (see `app.services.client_reports`); every other type
  (`transaction`, `session`, `sessions`, `attachment`, `user_report`, `check_in`, `log`,
  `span`, `profile`, `replay`, unknown ones) is read past and skipped. Answers
  `200 {"id": "<event_id>"}`, or `200 {}` when the envelope carries no event.
- `POST /api/{project_id}/store/`: one event as JSON, or as base64 of zlib-compressed
  JSON (the old Raven clients). `GET /api/{project_id}/store/?sentry_data=…` (JSON or
  base64+zlib in the query, for image beacons) answers a 1x1 GIF.

Authentication, in this order: the `sentry_key` query parameter, `X-Sentry-Auth: Sentry
sentry_key=…, sentry_version=7, sentry_client=…`, `Authorization` (`Sentry …` like
X-Sentry-Auth, `DSN <dsn>` or `Bearer <key>`), the envelope header's `dsn`. No key →
401; keys in two places that differ → 401; an unknown or revoked key → 401; a key of
another project → 403; a project id that does not exist → 404. Every error is
`{"detail": "…"}`: 400 for input that cannot be read (naming the field), 413 past a limit.

Limits (Relay's): the request body 20 MiB as received, an envelope 100 MiB decompressed,
an event 1 MiB. `Content-Encoding` gzip, deflate (zlib, else raw deflate) and br, also
stacked; an empty or `UTF-8` value is ignored. The body is decoded and the envelope
parsed as the bytes arrive, keeping only the event and client report payloads, so a
decompression bomb stops at the first limit it passes without being expanded in memory.
JSON may hold `NaN` and `±Infinity` (Python's json writes them); they are stored as the
strings "NaN", "Infinity" and "-Infinity", since JSON columns cannot hold them.

Rate limits (`app.services.quotas`): past the client address's limit or the key's event
quota, 429 with `Retry-After` and `X-Sentry-Rate-Limits` (develop.sentry.dev, "Rate
Limiting"): `<seconds>::ip:ip_rate_limit` for the address (every category), and
`<seconds>:default;error:key:key_quota` for the key's events, so that an SDK stops sending
events for that long but not its other items. Scopes `ip` and reasons are errorgraph's
own; SDKs read only the seconds and categories.

Mapping of a Sentry event onto `EventIn`. Sentry's chain and frame order (oldest
exception first, outermost frame first) is EventIn's, so nothing is reversed.

Sentry event → EventIn:

- event_id (32 hex or dashed UUID; the envelope header's wins) → event_id, 32 hex
- timestamp (RFC 3339 or Unix seconds) → timestamp (now when absent)
- level (`warn`, `critical`, `log` accepted) → level (error when absent)
- platform → platform (`other` when absent)
- logger, release, environment, server_name, transaction → the same
- dist → tags["dist"], unless a tag of that name was sent
- exception.values[] (or a bare list, or one object) → exceptions[]:
  type, value, module, mechanism → the same; stacktrace.frames[] (else the stack of
  the thread named by thread_id) → frames[]
- frame filename, abs_path, function, module, lineno, colno, in_app, context_line,
  pre_context, post_context, vars, platform → the same (other frame fields, such as
  native addresses, are not kept)
- no exception, but a top-level stacktrace or the crashed/current thread's stack →
  exceptions = [one exception without type], so the frames are kept and grouped on
- logentry, or message (a string or {formatted, message, params}) → message: the
  formatted text, else the template with its %s / %(name)s placeholders filled; the
  template and params → contexts["logentry"] = {message, params}
- an event with neither exception nor message → message "<unlabeled event>"
- tags (a dict or a list of pairs) → tags
- user {id, email, username, name, ip_address, data, …} → user; an ip_address of
  `{{auto}}` becomes the client's address; other fields go to user.data
- request → request; request.url → url; its User-Agent header → user_agent
- contexts → contexts; breadcrumbs (a list or {values}) → breadcrumbs; extra → extra
- fingerprint (`{{ default }}` kept: grouping expands it) → fingerprint
- sdk {name, version, integrations, packages} → contexts["sdk"]; modules →
  contexts["modules"]
- type `transaction` → not ingested (accepted and skipped)
- culprit, other threads, debug_meta → not kept (the culprit is recomputed)

The legacy interface names (`sentry.interfaces.Exception`, `.Message`, `.Http`, `.User`,
`.Stacktrace`, `.Breadcrumbs`) are read as their modern names. `dialect` is `sentry`,
`client_ip` the peer address.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from starlette.requests import Request
from starlette.responses import Response

from app.domain.event import (
    MAX_JSON_DEPTH,
    EventIn,
    EventType,
    ExceptionIn,
    Frame,
    Level,
    UserIn,
)
from app.errors import (
    ErrorgraphError,
    Forbidden,
    InvalidInput,
    InvalidKey,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
)
from app.services.client_reports import DiscardedEvents, record_client_reports
from app.services.ingest import ingest_events
from app.services.keys import KeyGrant, grant_for_project_key, project_by_id_or_slug
from app.services.runtime import Runtime
from rest_compat.common import (
    JSONOut,
    browser_route,
    client_ip,
    error_response,
    iter_decoded_body,
    limit_client,
    read_decoded_body,
    runtime_of,
)

MiB = 1024 * 1024
MAX_BODY_BYTES = 20 * MiB
MAX_ENVELOPE_BYTES = 100 * MiB
MAX_EVENT_BYTES = 1 * MiB
MAX_CLIENT_REPORT_BYTES = 64 * 1024
# A header line is a small JSON object; a "line" this long is garbage or a bomb.
MAX_HEADER_LINE = 64 * 1024
# Items per envelope: SDKs send a few; many thousands of tiny ones are an attack.
MAX_ITEMS = 10_000
# The store endpoint's body is one event, possibly base64 (4/3 larger) of zlib data.
MAX_STORE_DECODED_BYTES = 2 * MiB

# The payloads that are read; every other item type is skipped unread.
KEPT_ITEMS = {"event": MAX_EVENT_BYTES, "client_report": MAX_CLIENT_REPORT_BYTES}

# A transparent 1x1 GIF, the answer to an image beacon.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

KEY_HELP = (
    "send the key as ?sentry_key=…, in X-Sentry-Auth: Sentry sentry_key=…, "
    "or in the envelope header's dsn"
)


# --- Authentication --------------------------------------------------------------------


def _auth_fields(value: str) -> dict[str, str]:
    """The `k=v, k=v` pairs of an X-Sentry-Auth value (the `Sentry ` scheme optional)."""
    text = value.strip()
    if text[:7].lower() == "sentry ":
        text = text[7:]
    fields: dict[str, str] = {}
    for part in text.split(","):
        name, sep, item = part.partition("=")
        if sep:
            fields[name.strip().lower()] = item.strip().strip('"')
    return fields


def _dsn_key(dsn: object) -> str | None:
    """The public key of a DSN (`https://<key>@host/<project>`), or None."""
    if not isinstance(dsn, str):
        return None
    try:
        return urlsplit(dsn.strip()).username or None
    except ValueError:
        return None


def _authorization_key(value: str) -> str | None:
    scheme, _, rest = value.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "sentry":
        return _auth_fields(rest).get("sentry_key") or None
    if scheme == "dsn":
        return _dsn_key(rest)
    if scheme == "bearer":
        return rest.strip() or None
    return None


def keys_in_request(request: Request) -> list[tuple[str, str]]:
    """Every key the request carries outside its body, as (where, key), in the order
    the protocol tries them."""
    found: list[tuple[str, str]] = []
    if query_key := request.query_params.get("sentry_key", "").strip():
        found.append(("the sentry_key query parameter", query_key))
    header_key = _auth_fields(request.headers.get("x-sentry-auth", "")).get("sentry_key")
    if header_key:
        found.append(("X-Sentry-Auth", header_key))
    auth_key = _authorization_key(request.headers.get("authorization", ""))
    if auth_key:
        found.append(("Authorization", auth_key))
    return found


def one_key(found: list[tuple[str, str]]) -> str | None:
    """The key, when every place that carries one carries the same; InvalidKey otherwise,
    since a request with two different keys cannot be attributed to either."""
    if not found:
        return None
    first_where, first = found[0]
    for where, key in found[1:]:
        if key != first:
            raise InvalidKey(f"the keys in {first_where} and {where} differ")
    return first


async def grant_for(runtime: Runtime, *, project_id: int, key: str) -> KeyGrant:
    """The grant of `key` for the project in the URL; 404 when that project does not
    exist, 403 when the key belongs to another one."""
    sessions = runtime.database.sessions
    grant = await grant_for_project_key(sessions=sessions, secret=key, scope="ingest")
    if grant.project.id != project_id:
        try:
            await project_by_id_or_slug(sessions=sessions, ref=project_id)
        except NotFound:
            raise NotFound(f"no project {project_id}", field="project_id") from None
        raise Forbidden(f"this key belongs to another project, not to project {project_id}")
    return grant


# --- JSON ------------------------------------------------------------------------------

_NON_FINITE = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}


# One half of a UTF-16 surrogate pair, alone: the standard library reads `"\udc80"`
# into a string holding it (a pair becomes the character it encodes).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


# The integers orjson reads and writes as integers; it reads larger ones as floats.
_INTEGERS = range(-(2**63), 2**64)


def _storable(value: Any) -> Any:
    """`value` as orjson would have read it, where it can, so that it can be stored:

    - NaN and ±Infinity become their names as strings;
    - every lone surrogate becomes U+FFFD. Python writes a file name it could not decode
      with such halves (`os.fsdecode`), and the SDK's JSON escapes them; no database
      stores them in text, so writing an event holding one failed (its request
      answered 503) instead of keeping it;
    - integers beyond 64 bits become floats, as orjson reads them (the events' JSON is
      written with orjson, which refuses them: the same 503).
    """
    if isinstance(value, str):
        if value.isascii() or not _LONE_SURROGATE.search(value):
            return value
        return _LONE_SURROGATE.sub("\ufffd", value)
    if type(value) is int and value not in _INTEGERS:
        try:
            value = float(value)
        except OverflowError:
            return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


def _check_depth(value: Any, *, what: str) -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH, for what the standard library parsed
    (see `load_json`): the fallback would carry it on into code that recurses before the
    event's free-form fields are checked (`app.domain.event.free_form`)."""
    # One level at a time, and only containers go on to the next: most of an event's
    # values are scalars, and pushing each of them was a twentieth of ingest's time.
    level = [value] if isinstance(value, dict | list) else []
    depth = 1
    while level:
        if depth > MAX_JSON_DEPTH:
            raise _too_deep(what)
        deeper: list[Any] = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            deeper += [child for child in children if isinstance(child, dict | list)]
        level = deeper
        depth += 1


def _too_deep(what: str) -> InvalidInput:
    return InvalidInput(f"the {what} is nested deeper than {MAX_JSON_DEPTH} levels", field=what)


def load_json(data: bytes, *, what: str) -> Any:
    """Parse `data`; orjson first (fast), the standard library when orjson refuses,
    because the Python SDK writes NaN and Infinity, and lone surrogates' escapes, which
    only the latter reads (see `_storable`)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        first_error = str(exc)
    else:
        # How deep what is kept may nest is checked with it (`app.domain.event.free_form`).
        return value
    try:
        value = json.loads(data, parse_constant=lambda name: _NON_FINITE[name])
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(f"the {what} is not valid JSON: {first_error}", field=what) from None
    except RecursionError:
        raise _too_deep(what) from None
    _check_depth(value, what=what)
    return _storable(value)


def _json_object(data: bytes, *, what: str) -> dict[str, Any]:
    value = load_json(data, what=what)
    if not isinstance(value, dict):
        raise InvalidInput(f"the {what} must be a JSON object", field=what)
    return value


def normalise_event_id(value: object, *, where: str) -> str:
    """Sentry's event ids are UUIDs, sent as 32 hex digits or dashed; stored as 32 hex."""
    try:
        return uuid.UUID(str(value)).hex
    except ValueError:
        raise InvalidInput(
            f"{where} must be a UUID (32 hex digits), got {str(value)[:60]!r}", field=where
        ) from None


# --- Envelopes -------------------------------------------------------------------------


@dataclass
class EnvelopeItem:
    type: str
    headers: dict[str, Any]
    payload: bytes


@dataclass
class Envelope:
    headers: dict[str, Any]
    # The items whose payload was kept (KEPT_ITEMS), in order.
    items: list[EnvelopeItem]
    # How many items of each other type were read past.
    skipped: Counter[str] = field(default_factory=Counter)


class EnvelopeParser:
    """An envelope read incrementally: `feed` it bytes as they are decoded, then `finish`.

    Follows develop.sentry.dev "Envelopes": a JSON header line, then items, each a JSON
    header line (with `type` and an optional `length`) and a payload that is `length`
    bytes or, without `length`, runs to the next newline. The newline after a payload and
    at the very end is optional; blank lines between items are tolerated. Only the
    payloads of KEPT_ITEMS are held in memory, each within its limit; the others are
    counted and dropped as they pass.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._headers: dict[str, Any] | None = None
        self._items: list[EnvelopeItem] = []
        self._skipped: Counter[str] = Counter()
        self._count = 0
        # The item being read: its header, the bytes still due (None: up to a newline),
        # and its payload so far (None when skipped).
        self._item: dict[str, Any] | None = None
        self._remaining: int | None = None
        self._payload: bytearray | None = None
        self._newline_may_follow = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        self._advance(final=False)

    def finish(self) -> Envelope:
        self._advance(final=True)
        if self._headers is None:
            raise InvalidInput("the envelope is empty", field="envelope")
        return Envelope(headers=self._headers, items=self._items, skipped=self._skipped)

    def _line(self, *, final: bool) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_HEADER_LINE:
                raise PayloadTooLarge(f"an envelope header line is longer than {MAX_HEADER_LINE}")
            if final and self._buffer:
                line = bytes(self._buffer)
                self._buffer.clear()
                return line
            return None
        if end > MAX_HEADER_LINE:
            raise PayloadTooLarge(f"an envelope header line is longer than {MAX_HEADER_LINE}")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    def _header(self, line: bytes, *, what: str) -> dict[str, Any]:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the {what} is not valid JSON: {exc}", field=what) from None
        if not isinstance(value, dict):
            raise InvalidInput(f"the {what} must be a JSON object", field=what)
        return value

    def _start_item(self, line: bytes) -> None:
        self._count += 1
        what = f"header of item {self._count}"
        if self._count > MAX_ITEMS:
            raise PayloadTooLarge(f"the envelope has more than {MAX_ITEMS} items")
        header = self._header(line, what=what)
        kind = header.get("type")
        if not isinstance(kind, str) or not kind:
            raise InvalidInput(f"the {what} has no type", field=f"items[{self._count - 1}].type")
        length = header.get("length")
        if length is not None and (
            not isinstance(length, int) or isinstance(length, bool) or length < 0
        ):
            raise InvalidInput(
                f"the {what} has a length that is not a non-negative integer",
                field=f"items[{self._count - 1}].length",
            )
        limit = KEPT_ITEMS.get(kind)
        if limit is not None and length is not None and length > limit:
            raise PayloadTooLarge(f"the {kind} item is larger than {limit} bytes")
        self._item, self._remaining = header, length
        self._payload = bytearray() if limit is not None else None

    def _keep(self, data: bytes | bytearray) -> None:
        if self._payload is None or not data:
            return
        assert self._item is not None
        self._payload += data
        limit = KEPT_ITEMS[self._item["type"]]
        if len(self._payload) > limit:
            raise PayloadTooLarge(f"the {self._item['type']} item is larger than {limit} bytes")

    def _end_item(self) -> None:
        assert self._item is not None
        kind = self._item["type"]
        if self._payload is not None:
            self._items.append(EnvelopeItem(kind, self._item, bytes(self._payload)))
        else:
            self._skipped[kind[:100]] += 1
        self._item, self._remaining, self._payload = None, None, None

    def _advance(self, *, final: bool) -> None:
        while True:
            if self._newline_may_follow:
                if not self._buffer:
                    return
                if self._buffer[0] == 0x0A:
                    del self._buffer[0]
                self._newline_may_follow = False
            if self._headers is None:
                line = self._line(final=final)
                if line is None:
                    return
                self._headers = self._header(line, what="envelope header")
                continue
            if self._item is None:
                if not self._buffer:
                    return
                line = self._line(final=final)
                if line is None:
                    return
                # Blank lines between items and at the end carry nothing.
                if line.strip():
                    self._start_item(line)
                continue
            if self._remaining is not None:
                take = min(self._remaining, len(self._buffer))
                if self._payload is not None:
                    self._keep(self._buffer[:take])
                del self._buffer[:take]
                self._remaining -= take
                if self._remaining:
                    if final:
                        raise InvalidInput(
                            f"item {self._count} ends before its length of "
                            f"{self._item['length']} bytes",
                            field=f"items[{self._count - 1}].length",
                        )
                    return
                self._end_item()
                self._newline_may_follow = True
                continue
            end = self._buffer.find(b"\n")
            if end < 0:
                self._keep(self._buffer)
                self._buffer.clear()
                if final:
                    self._end_item()
                return
            if self._payload is not None:
                self._keep(self._buffer[:end])
            del self._buffer[: end + 1]
            self._end_item()


# --- Sentry events ---------------------------------------------------------------------

# Old clients name the interfaces by their class paths.
_LEGACY_NAMES = {
    "sentry.interfaces.Exception": "exception",
    "sentry.interfaces.Message": "logentry",
    "sentry.interfaces.Http": "request",
    "sentry.interfaces.User": "user",
    "sentry.interfaces.Stacktrace": "stacktrace",
    "sentry.interfaces.Breadcrumbs": "breadcrumbs",
}


def _unwrap_values(value: Any) -> Any:
    """Sentry's list interfaces arrive as `{"values": [...]}`, a bare list, or one object."""
    if isinstance(value, dict):
        if "values" in value:
            return value["values"] if value["values"] is not None else []
        return [value]
    if value is None:
        return []
    return value


class _SentryModel(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)


# Read straight into the canonical `Frame`, whose fields are Sentry's names: building a
# second model per frame was a third of the time spent reading an event.
class SentryFrame(Frame):
    """One stack frame, outermost call first (Sentry's order)."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Documented as clients send a frame (see `_SentryFrameInput`), not as stored."""
        schema = handler(_SentryFrameInput.__pydantic_core_schema__["schema"])
        schema["title"] = "SentryFrame"
        return schema

    @model_validator(mode="before")
    @classmethod
    def _sentry_shape(cls, data: Any) -> Any:
        """Variables as a list (the JavaScript SDK's arguments) become a mapping by
        position; null lists and lines become empty; at most 50 source lines each side,
        the nearest kept. `minified` is errorgraph's own, never a client's."""
        if not isinstance(data, dict):
            return data
        variables = data.get("vars")
        pre = data.get("pre_context")
        post = data.get("post_context")
        if not (
            "minified" in data
            or (variables is not None and not isinstance(variables, dict))
            or (variables is None and "vars" in data)
            or ("pre_context" in data and not _plain_lines(pre))
            or ("post_context" in data and not _plain_lines(post))
        ):
            return data
        data = dict(data)
        data.pop("minified", None)
        if isinstance(variables, list):
            data["vars"] = {str(index): value for index, value in enumerate(variables)}
        elif variables is None:
            data.pop("vars", None)
        for name, keep in (("pre_context", slice(-50, None)), ("post_context", slice(50))):
            lines = data.get(name)
            if lines is None:
                data.pop(name, None)
            elif isinstance(lines, list):
                data[name] = ["" if line is None else line for line in lines][keep]
        return data


class _SentryFrameInput(_SentryModel):
    """A frame as clients send it: the documented form of `SentryFrame`."""

    filename: str | None = None
    abs_path: str | None = None
    function: str | None = None
    module: str | None = None
    lineno: int | None = None
    colno: int | None = None
    in_app: bool | None = None
    context_line: str | None = None
    pre_context: list[str | None] = Field(default_factory=list)
    post_context: list[str | None] = Field(default_factory=list)
    vars: dict[str, Any] | list[Any] | None = None
    platform: str | None = None


def _plain_lines(lines: Any) -> bool:
    """Source lines that need no change: absent, or at most 50 with no null."""
    return lines is None or (isinstance(lines, list) and len(lines) <= 50 and None not in lines)


class SentryStacktrace(_SentryModel):
    frames: list[SentryFrame] = Field(default_factory=list)

    @field_validator("frames", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


class SentryException(_SentryModel):
    type: str | None = None
    value: str | None = None
    module: str | None = None
    mechanism: dict[str, Any] | None = None
    stacktrace: SentryStacktrace | None = None
    thread_id: str | None = None


class SentryThread(_SentryModel):
    id: str | None = None
    crashed: bool | None = None
    current: bool | None = None
    stacktrace: SentryStacktrace | None = None


class SentryLogEntry(_SentryModel):
    formatted: str | None = None
    message: str | None = None
    params: list[Any] | dict[str, Any] | None = None


class SentryUser(_SentryModel):
    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    id: str | None = None
    email: str | None = None
    username: str | None = None
    name: str | None = None
    ip_address: str | None = None
    data: dict[str, Any] | None = None


class SentryEvent(_SentryModel):
    """The fields of a Sentry event that errorgraph reads (develop.sentry.dev, "Event
    Payloads"); the rest is ignored."""

    event_id: str | None = None
    timestamp: datetime | None = None
    type: str | None = None
    level: str | None = None
    platform: str | None = None
    logger: str | None = None
    transaction: str | None = None
    server_name: str | None = None
    release: str | None = None
    dist: str | None = None
    environment: str | None = None
    message: str | SentryLogEntry | None = None
    logentry: SentryLogEntry | None = None
    exception: list[SentryException] = Field(default_factory=list)
    stacktrace: SentryStacktrace | None = None
    threads: list[SentryThread] = Field(default_factory=list)
    tags: dict[str, Any] | list[Any] | None = None
    user: SentryUser | None = None
    request: dict[str, Any] | None = None
    contexts: dict[str, Any] | None = None
    breadcrumbs: list[dict[str, Any]] = Field(default_factory=list)
    extra: dict[str, Any] | None = None
    fingerprint: list[str] | None = None
    sdk: dict[str, Any] | None = None
    modules: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _modern_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for legacy, modern in _LEGACY_NAMES.items():
            if legacy in data:
                value = data.pop(legacy)
                data.setdefault(modern, value)
        for name in ("exception", "threads", "breadcrumbs"):
            if name in data:
                data[name] = _unwrap_values(data[name])
        return data

    @field_validator("event_id", mode="after")
    @classmethod
    def _uuid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return uuid.UUID(value).hex
        except ValueError:
            raise ValueError("must be a UUID (32 hex digits)") from None

    @field_validator("level", mode="after")
    @classmethod
    def _known_level(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return Level.parse(value).value
        except ValueError:
            raise ValueError(
                f"{value[:40]!r} is not one of debug, info, warning, error, fatal"
            ) from None


_PLACEHOLDER = re.compile(r"%(?:\((?P<name>[^)]{0,100})\))?(?P<conv>[sdifr%])")


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


def format_logentry(template: str, params: list[Any] | dict[str, Any] | None) -> str:
    """Fill `%s` (and `%d`, `%i`, `%f`, `%r`) or `%(name)s` placeholders from `params`.

    Only plain placeholders are filled: Python's `%` would also honour widths, and a
    client's `%999999999d` must not make the server build a gigabyte string.
    """
    if not params:
        return template
    positional = iter(params) if isinstance(params, list) else None

    def fill(match: re.Match[str]) -> str:
        if match["conv"] == "%":
            return "%"
        name = match["name"]
        if name is not None:
            if isinstance(params, dict) and name in params:
                return _param_text(params[name])
            return match[0]
        if positional is None:
            return match[0]
        try:
            return _param_text(next(positional))
        except StopIteration:
            return match[0]

    return _PLACEHOLDER.sub(fill, template)


def _frames(stacktrace: SentryStacktrace | None) -> list[Frame]:
    return list(stacktrace.frames) if stacktrace is not None else []


def _thread_stack(event: SentryEvent, thread_id: str | None = None) -> SentryStacktrace | None:
    """A thread's stack: the one with `thread_id`, else the crashed, else the current one,
    else the only thread's."""
    with_stack = [thread for thread in event.threads if thread.stacktrace is not None]
    if thread_id is not None:
        return next((t.stacktrace for t in with_stack if t.id == thread_id), None)
    for wanted in ("crashed", "current"):
        for thread in with_stack:
            if getattr(thread, wanted):
                return thread.stacktrace
    return with_stack[0].stacktrace if len(with_stack) == 1 else None


def _message(event: SentryEvent) -> tuple[str | None, dict[str, Any] | None]:
    """The formatted message, and the template and params when the client sent them."""
    entry = event.logentry
    if entry is None and isinstance(event.message, SentryLogEntry):
        entry = event.message
    if entry is None:
        text = event.message if isinstance(event.message, str) else None
        return text, None
    template = entry.message
    if entry.formatted:
        text = entry.formatted
    elif template:
        text = format_logentry(template, entry.params)
    else:
        text = event.message if isinstance(event.message, str) else None
    kept = None
    if template and (entry.params or template != text):
        kept = {"message": template, "params": entry.params}
    return text, kept


def _header_value(headers: Any, name: str) -> str | None:
    """A header from Sentry's request.headers, a dict or a list of pairs."""
    if isinstance(headers, dict):
        pairs: list[Any] = list(headers.items())
    elif isinstance(headers, list):
        pairs = headers
    else:
        return None
    for pair in pairs:
        if isinstance(pair, list | tuple) and len(pair) == 2:
            key, value = pair
            if isinstance(key, str) and key.lower() == name and isinstance(value, str):
                return value
    return None


def _user(user: SentryUser | None, *, ip: str | None) -> UserIn | None:
    if user is None:
        return None
    data = dict(user.data or {})
    data.update(user.model_extra or {})
    address = user.ip_address
    if address == "{{auto}}":
        address = ip
    if not any((user.id, user.email, user.username, user.name, address, data)):
        return None
    return UserIn(
        id=user.id,
        email=user.email,
        username=user.username,
        name=user.name,
        ip_address=address,
        data=data,
    )


def _tags(event: SentryEvent) -> dict[str, Any]:
    tags: dict[str, Any] = {}
    if isinstance(event.tags, dict):
        tags.update(event.tags)
    elif isinstance(event.tags, list):
        for pair in event.tags:
            if isinstance(pair, list | tuple) and len(pair) == 2 and pair[0] is not None:
                tags[str(pair[0])] = pair[1]
    if event.dist:
        tags.setdefault("dist", event.dist)
    return tags


def _field_errors(exc: ValidationError, *, what: str) -> InvalidInput:
    """One 400 naming the first few fields pydantic refused, in the client's terms."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    described = [
        f"{'.'.join(str(part) for part in error['loc']) or what}: "
        + error["msg"].removeprefix("Value error, ")
        for error in errors[:5]
    ]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    first = ".".join(str(part) for part in errors[0]["loc"]) if errors else what
    return InvalidInput(f"invalid {what}: {'; '.join(described)}{more}", field=first)


def event_from_sentry(
    payload: dict[str, Any], *, ip: str | None, event_id: str | None = None
) -> EventIn | None:
    """The canonical event for a Sentry event payload, or None for a transaction (which
    is accepted and not kept). `event_id` (from the envelope header) wins over the
    payload's. InvalidInput names the field that cannot be read."""
    try:
        event = SentryEvent.model_validate(payload)
    except ValidationError as exc:
        raise _field_errors(exc, what="event") from None
    if event.type == "transaction":
        return None
    exceptions = []
    for value in event.exception:
        stack = value.stacktrace
        if stack is None and value.thread_id is not None:
            stack = _thread_stack(event, value.thread_id)
        exceptions.append(
            ExceptionIn(
                type=value.type,
                value=value.value,
                module=value.module,
                mechanism=value.mechanism,
                frames=_frames(stack),
            )
        )
    kind = EventType.EXCEPTION if exceptions else EventType.MESSAGE
    if not exceptions:
        frames = _frames(event.stacktrace or _thread_stack(event))
        if frames:
            exceptions = [ExceptionIn(frames=frames)]
    message, logentry = _message(event)
    if kind is EventType.MESSAGE and not message:
        # Sentry accepts an event with nothing to show and titles it so.
        message = "<unlabeled event>"
    contexts = dict(event.contexts or {})
    if event.sdk:
        contexts.setdefault("sdk", event.sdk)
    if logentry:
        contexts.setdefault("logentry", logentry)
    if event.modules:
        contexts.setdefault("modules", event.modules)
    request = event.request
    headers = request.get("headers") if request else None
    url = request.get("url") if request else None
    fields: dict[str, Any] = {
        "event_id": event_id or event.event_id or uuid.uuid4().hex,
        "type": kind,
        "level": event.level or Level.ERROR,
        "platform": event.platform or "other",
        "logger": event.logger,
        "environment": event.environment,
        "release": event.release,
        "server_name": event.server_name,
        "transaction": event.transaction,
        "message": message,
        "exceptions": exceptions,
        "url": url if isinstance(url, str) else None,
        "user_agent": _header_value(headers, "user-agent") if headers else None,
        "request": request,
        "user": _user(event.user, ip=ip),
        "breadcrumbs": event.breadcrumbs,
        "tags": _tags(event),
        "extra": event.extra or {},
        "contexts": contexts,
        "fingerprint": event.fingerprint or None,
        "dialect": "sentry",
        "client_ip": ip,
    }
    if event.timestamp is not None:
        fields["timestamp"] = event.timestamp
    try:
        return EventIn(**fields)
    except ValidationError as exc:
        raise _field_errors(exc, what="event") from None


# --- Client reports --------------------------------------------------------------------


class _Discarded(BaseModel):
    model_config = ConfigDict(extra="ignore")

    reason: str = Field(min_length=1)
    category: str = Field(min_length=1)
    quantity: int = Field(ge=0)


class _ClientReport(BaseModel):
    """develop.sentry.dev, "Client Reports": what the SDK dropped, per reason and category."""

    model_config = ConfigDict(extra="ignore")

    timestamp: datetime | None = None
    discarded_events: list[_Discarded] = Field(default_factory=list, max_length=1000)


def discarded_from_report(payload: bytes, *, received: datetime) -> list[DiscardedEvents]:
    try:
        report = _ClientReport.model_validate(_json_object(payload, what="client_report"))
    except ValidationError as exc:
        raise _field_errors(exc, what="client_report") from None
    when = report.timestamp or received
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return [
        DiscardedEvents(
            reason=entry.reason, category=entry.category, quantity=entry.quantity, timestamp=when
        )
        for entry in report.discarded_events
    ]


# --- Endpoints -------------------------------------------------------------------------

DIALECT = "sentry"
# X-Sentry-Rate-Limits reason codes, by what was counted (`QuotaExceeded.scope`).
RATE_LIMIT_REASONS = {"ip": "ip_rate_limit", "key": "key_quota", "project": "project_quota"}


def rate_limits_header(exc: QuotaExceeded) -> str:
    """One `retry_after:categories:scope:reason_code` entry (develop.sentry.dev, "Rate
    Limiting"): a client address's limit covers every category (empty), an event quota
    the event categories only, so an SDK keeps sending sessions and client reports."""
    categories = "" if exc.scope == "ip" else "default;error"
    reason = RATE_LIMIT_REASONS.get(exc.scope, "rate_limit")
    return f"{exc.retry_after}:{categories}:{exc.scope}:{reason}"


def _refusal(exc: ErrorgraphError) -> Response:
    response = error_response(exc)
    if isinstance(exc, QuotaExceeded):
        response.headers["X-Sentry-Rate-Limits"] = rate_limits_header(exc)
    return response


async def _grant_from_headers(
    request: Request, runtime: Runtime
) -> tuple[str | None, KeyGrant | None]:
    """The key the request carries outside its body and its grant (None, None without)."""
    key = one_key(keys_in_request(request))
    if key is None:
        return None, None
    return key, await grant_for(runtime, project_id=request.path_params["project_id"], key=key)


@dataclass
class _EnvelopeRead:
    grant: KeyGrant
    events: list[EventIn]
    discarded: list[DiscardedEvents]
    received: datetime


async def _read_envelope(request: Request, runtime: Runtime) -> _EnvelopeRead:
    """Authenticate and read an envelope request into canonical events.

    Apart from `envelope` so that the body, the parsed JSON and the envelope die when it
    returns, before the request waits for the writer: 32 requests waiting with theirs
    kept the event loop's working set out of the processor's caches, and reading the
    next request cost a twentieth more."""
    project_id: int = request.path_params["project_id"]
    key, grant = await _grant_from_headers(request, runtime)
    parser = EnvelopeParser()
    async for piece in iter_decoded_body(
        request, limit=MAX_BODY_BYTES, decoded_limit=MAX_ENVELOPE_BYTES
    ):
        parser.feed(piece)
    parsed = parser.finish()
    dsn_key = _dsn_key(parsed.headers.get("dsn"))
    if key is not None and dsn_key is not None and dsn_key != key:
        raise InvalidKey("the key in the envelope header's dsn differs from the request's")
    if grant is None:
        if dsn_key is None:
            raise InvalidKey(f"no key: {KEY_HELP}")
        grant = await grant_for(runtime, project_id=project_id, key=dsn_key)
    header_id = parsed.headers.get("event_id")
    event_id = normalise_event_id(header_id, where="event_id") if header_id is not None else None
    read = _EnvelopeRead(grant=grant, events=[], discarded=[], received=datetime.now(UTC))
    if sum(item.type == "event" for item in parsed.items) > 1:
        raise InvalidInput("an envelope may carry at most one event item", field="items")
    for item in parsed.items:
        if item.type == "event":
            payload = _json_object(item.payload, what="event")
            event = event_from_sentry(payload, ip=client_ip(request), event_id=event_id)
            if event is not None:
                read.events.append(event)
        elif item.type == "client_report":
            read.discarded.extend(discarded_from_report(item.payload, received=read.received))
    return read


async def envelope(request: Request) -> Response:
    runtime = runtime_of(request)
    try:
        await limit_client(request, dialect=DIALECT)
        read = await _read_envelope(request, runtime)
        results = await ingest_events(
            writer=runtime.writer,
            project=read.grant.project,
            events=read.events,
            key_id=read.grant.key_id,
        )
        if read.discarded:
            assert read.grant.project.id is not None
            await record_client_reports(
                sessions=runtime.database.sessions,
                project_id=read.grant.project.id,
                entries=read.discarded,
                received_at=read.received,
            )
    except ErrorgraphError as exc:
        return _refusal(exc)
    return JSONOut({"id": results[0].event_id} if results else {})


def _store_event_bytes(data: bytes) -> bytes:
    """The JSON of a store body: JSON itself, or base64 of zlib-compressed (or plain)
    JSON, which the old Raven clients sent."""
    stripped = data.strip()
    # `[`, `"`: JSON all the same (base64 has neither), which `_json_object` refuses by name.
    if stripped[:1] in (b"{", b"[", b'"'):
        if len(stripped) > MAX_EVENT_BYTES:
            raise PayloadTooLarge(f"the event is larger than {MAX_EVENT_BYTES} bytes")
        return stripped
    compact = re.sub(rb"\s+", b"", stripped)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        try:
            raw = base64.b64decode(compact, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(
                "the body is neither JSON nor base64 of zlib-compressed JSON", field="body"
            ) from None
    if raw.lstrip()[:1] == b"{":
        return _store_event_bytes(raw)
    decoder = zlib.decompressobj()
    try:
        text = decoder.decompress(raw, MAX_EVENT_BYTES + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the base64 body is not zlib data ({exc})", field="body") from None
    if len(text) > MAX_EVENT_BYTES:
        raise PayloadTooLarge(f"the event is larger than {MAX_EVENT_BYTES} bytes")
    if not decoder.eof:
        raise InvalidInput("the zlib data in the body is truncated", field="body")
    return text


def _read_store_event(data: bytes, *, ip: str | None) -> EventIn | str:
    """The event of a store body, or the id to answer for a transaction (not kept).
    Apart so that the parsed JSON dies before the request waits (see `_read_envelope`)."""
    payload = _json_object(_store_event_bytes(data), what="event")
    event = event_from_sentry(payload, ip=ip)
    if event is not None:
        return event
    raw_id = payload.get("event_id")
    return normalise_event_id(raw_id, where="event_id") if raw_id else uuid.uuid4().hex


async def _store_event(request: Request, runtime: Runtime, grant: KeyGrant, data: bytes) -> str:
    """Ingest the event of a store request; its id (also for a skipped transaction)."""
    event = _read_store_event(data, ip=client_ip(request))
    if isinstance(event, str):
        return event
    [result] = await ingest_events(
        writer=runtime.writer, project=grant.project, events=[event], key_id=grant.key_id
    )
    return result.event_id


async def store(request: Request) -> Response:
    runtime = runtime_of(request)
    try:
        await limit_client(request, dialect=DIALECT)
        _key, grant = await _grant_from_headers(request, runtime)
        if grant is None:
            raise InvalidKey(f"no key: {KEY_HELP}")
        if request.method == "GET":
            data = request.query_params.get("sentry_data")
            if not data:
                raise InvalidInput(
                    "the sentry_data query parameter is missing", field="sentry_data"
                )
            await _store_event(request, runtime, grant, data.encode("utf-8"))
            return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-cache"})
        body = await read_decoded_body(
            request, limit=MAX_BODY_BYTES, decoded_limit=MAX_STORE_DECODED_BYTES
        )
        event_id = await _store_event(request, runtime, grant, body)
    except ErrorgraphError as exc:
        return _refusal(exc)
    return JSONOut({"id": event_id})


routes = [
    browser_route(path, endpoint, methods=methods)
    for suffix, endpoint, methods in (
        ("envelope", envelope, ["POST"]),
        ("store", store, ["GET", "POST"]),
    )
    for path in (f"/api/{{project_id:int}}/{suffix}/", f"/api/{{project_id:int}}/{suffix}")
]
