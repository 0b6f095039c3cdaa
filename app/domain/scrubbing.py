"""Scrubbing: what looks like a secret is replaced before an event is stored.

The ingest service runs `scrub_event` on every event of every dialect before grouping, so
no table — events, groups (their titles come from messages), users, the search index —
ever holds what was filtered. Pure code: the rules come in as arguments.

Three kinds of rule, as Sentry's and Bugsink's data scrubbers apply them:

1. **By key.** In every mapping of an event's free-form data — the request (its data,
   headers, cookies, query string, env), extra, contexts, breadcrumbs and their data, the
   user's and account's data, tags, exception mechanisms and frame variables — a value
   whose key names a secret becomes `[Filtered]`, whatever it held (a nested object
   too). A key names a secret when, lower-cased and stripped of everything but letters
   and digits, it contains one of `SECRET_KEY_PARTS` (so `X-Api-Key`, `apiKey` and
   `api_key` all contain `apikey`), equals one of `SECRET_KEYS`, or contains a field the
   project added; `session` hides text and numbers (a session id) but a session object
   is walked. Lists of `[name, value]` pairs (Sentry's form for headers, cookies and
   query strings) are read as mappings.
2. **In text.** In every string of the event — message, exception values, raw stack
   text, URL, transaction, breadcrumb messages, source lines and every string in the
   data above — `name=value` and `name: value` (also quoted, as JSON or a Python repr
   writes them) where the name names a secret, `Bearer <token>`, the password of
   `scheme://user:password@host`, JSON Web Tokens and the secret keys of errorgraph and
   a few well-known services, and payment card numbers (13 to 19 digits, spaces or
   dashes allowed between them, with a card issuer's prefix and a valid Luhn check digit:
   a millisecond timestamp or a random id rarely passes both) are replaced. Integers of
   card length in the data are checked the same way.
3. **IP addresses**, when the project asks: the client's address, the user's
   `ip_address`, the request's `REMOTE_ADDR` and the headers proxies put addresses in are
   dropped.

Filtering errs towards hiding: a key such as `prompt_tokens` loses its value too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from app.domain.event import EventIn, ExceptionIn, Frame, UserIn

FILTERED = "[Filtered]"

# Parts of key names (compacted: lower case, letters and digits only) that mark a secret.
SECRET_KEY_PARTS: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "authorization",
    "cookie",
    "csrf",
    "xsrf",
    "credential",
    "privatekey",
    "creditcard",
    "cardnumber",
    "cvv",
    "cvc",
)
# Parts that mark a secret only when the value is text or a number (a session id): a
# session object (Airbrake's `session`, a framework's session dump) is walked instead,
# its own secret keys filtered, since hiding it whole would lose what the client reports.
SCALAR_SECRET_KEY_PARTS: tuple[str, ...] = ("session",)
# Short names that are secrets only as the whole key (as parts they are in too many words).
SECRET_KEYS: frozenset[str] = frozenset({"auth", "pass", "pwd", "pin", "jwt", "ssn"})

# Request headers in which proxies and CDNs carry the client's address (lower case).
IP_HEADERS: frozenset[str] = frozenset(
    {
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
        "x-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "true-client-ip",
        "fastly-client-ip",
    }
)
IP_ENV: frozenset[str] = frozenset({"remote_addr", "http_x_forwarded_for", "http_x_real_ip"})

# Data nested deeper than this is not walked but filtered whole: it cannot be checked
# without recursing without bound, and no client sends such data on purpose.
MAX_DEPTH = 100
TRANSACTION_LENGTH = 512

_NON_ALNUM = re.compile(r"[^a-z0-9]+")

# `name=value` and `name: value`, the name optionally quoted; the value is read from where
# this match ends (see `_VALUE`), only when the name names a secret.
_KEY_SEP = re.compile(r"""(?P<key>[A-Za-z_][\w.\-]*)(?P<kq>["']?)\s*[=:]\s*""")
# A value: quoted (to the closing quote, or the end when there is none), or up to a
# delimiter. An auth scheme word before it (`Authorization: Basic …`) is taken with it, so
# the credentials after the word do not survive.
_VALUE = re.compile(
    r"""(?P<done>\[Filtered\])
      | (?P<dq>"[^"]*"?)
      | (?P<sq>'[^']*'?)
      | (?P<bare>(?:(?:basic|bearer|digest|token|negotiate)\s+)?[^\s&;,"'\#)}\]]+)""",
    re.VERBOSE | re.IGNORECASE,
)
_BEARER = re.compile(r"\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^@/\s]+(?=@)", re.I)
_TOKENS = re.compile(
    r"""\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*  # JSON Web Token
      | \b(?:sk|egt)_[0-9a-f]{32}\b                 # errorgraph API keys and tokens
      | \bgh[pousr]_[A-Za-z0-9]{36}\b               # GitHub tokens
      | \b(?:sk|rk)_live_[A-Za-z0-9]{16,}\b         # Stripe secret keys
      | \bxox[abprs]-[A-Za-z0-9\-]{10,}             # Slack tokens
      | \bAKIA[0-9A-Z]{16}\b                        # AWS access key ids
    """,
    re.VERBOSE,
)
_CARD = re.compile(r"(?<![\w\-.])\d(?:[ \-]?\d){12,18}(?![\w\-])")
# Issuer prefixes: Visa 4; Mastercard 51-55 and 22-27; American Express 34, 37; Diners
# 30, 36, 38, 39; JCB 35; Discover, UnionPay and Maestro 6 (and Maestro 50, 56-58).
_CARD_PREFIX = re.compile(r"^(?:4|5[0-8]|2[2-7]|3[0456789]|6)")


@dataclass(frozen=True)
class ScrubRules:
    """What to filter: the project's own key parts on top of the defaults, and whether
    addresses go."""

    extra_keys: tuple[str, ...] = ()
    drop_ip_addresses: bool = False

    @classmethod
    def for_project(
        cls, scrub_fields: Iterable[str] | None, scrub_ip_addresses: bool | None
    ) -> ScrubRules:
        parts = []
        for field in scrub_fields or ():
            compact = _compact(field)
            if compact and compact not in parts:
                parts.append(compact)
        return cls(extra_keys=tuple(parts), drop_ip_addresses=bool(scrub_ip_addresses))

    def is_secret_key(self, key: str, value: Any = "") -> bool:
        """Whether `key` names a secret, for a `value` of this kind (see the parts)."""
        verdicts = _verdicts(self.extra_keys)
        kind = verdicts.kinds.get(key) or verdicts.kind(key)
        return kind is _SECRET or (
            kind is _SCALAR_SECRET and not isinstance(value, dict | list | tuple)
        )


_SECRET, _SCALAR_SECRET, _PLAIN = "secret", "scalar", "plain"


# Remembered per key name in `_Verdicts.kinds`: events of one application repeat the same
# few hundred key names (headers, frame variables, installed modules), and working a
# verdict out (lower-casing, a regex, some twenty substring tests) was a tenth of ingest's
# time.
def _key_kind(key: str, extra_keys: tuple[str, ...]) -> str:
    compact = _compact(key)
    if not compact:
        return _PLAIN
    if compact in SECRET_KEYS:
        return _SECRET
    if any(part in compact for part in SECRET_KEY_PARTS) or any(
        part in compact for part in extra_keys
    ):
        return _SECRET
    if any(part in compact for part in SCALAR_SECRET_KEY_PARTS):
        return _SCALAR_SECRET
    return _PLAIN


def _compact(name: str) -> str:
    return _NON_ALNUM.sub("", name.lower())


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number passes."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def looks_like_card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn_valid(digits)


def _card_match(match: re.Match[str]) -> str:
    """The matched run of digit groups with any card number in it filtered: the run may
    hold more than the card (`order 12 4111 1111 1111 1111`), so every span of whole
    groups is tried, longest first from each start."""
    text = match.group(0)
    groups = [(m.start(), m.end()) for m in re.finditer(r"\d+", text)]
    out: list[str] = []
    cursor = 0
    start = 0
    while start < len(groups):
        for end in range(len(groups) - 1, start - 1, -1):
            digits = "".join(text[a:b] for a, b in groups[start : end + 1])
            if looks_like_card(digits):
                out.append(text[cursor : groups[start][0]])
                out.append(FILTERED)
                cursor = groups[end][1]
                start = end + 1
                break
        else:
            start += 1
    out.append(text[cursor:])
    return "".join(out)


def _scrub_key_values(text: str, rules: ScrubRules) -> str:
    out: list[str] = []
    cursor = 0
    for match in _KEY_SEP.finditer(text):
        if match.start() < cursor or not rules.is_secret_key(match["key"]):
            continue
        value = _VALUE.match(text, match.end())
        if value is None:
            continue
        out.append(text[cursor : match.end()])
        if value["done"] is not None:
            out.append(FILTERED)
        elif value["dq"] is not None:
            out.append(f'"{FILTERED}"')
        elif value["sq"] is not None:
            out.append(f"'{FILTERED}'")
        else:
            out.append(FILTERED)
        cursor = value.end()
    if not out:
        return text
    out.append(text[cursor:])
    return "".join(out)


# Texts are remembered with their scrubbed form: source lines, module versions,
# breadcrumb messages and tag values recur from one event to the next, and so does a
# bug's stack trace text; running the text rules' expressions over them again was a
# fifth of ingest's time (two fifths for events with raw tracebacks). Up to 16384 short
# texts per list of key parts (`_Verdicts`) and 256 long ones: a few MiB at worst.
CACHED_TEXT_LENGTH = 256
CACHED_LONG_TEXT_LENGTH = 16 * 1024


def scrub_text(text: str, rules: ScrubRules) -> str:
    """`text` with the secrets rule 2 finds replaced by `[Filtered]`."""
    if not text:
        return text
    if len(text) <= CACHED_TEXT_LENGTH:
        # Keyed by the key parts alone (the text rules use nothing else of the rules).
        verdicts = _verdicts(rules.extra_keys)
        scrubbed = verdicts.texts.get(text)
        return verdicts.text(text) if scrubbed is None else scrubbed
    if len(text) <= CACHED_LONG_TEXT_LENGTH:
        return _scrub_long_text(text, rules.extra_keys)
    return _scrub_text(text, rules)


@lru_cache(maxsize=256)
def _scrub_long_text(text: str, extra_keys: tuple[str, ...]) -> str:
    return _scrub_text(text, ScrubRules(extra_keys=extra_keys))


# Each expression below runs only when the text holds what it cannot match without,
# found by substring tests in C: over a long text (a traceback, a log line) the
# expressions' scans were most of the scrubbing time, and most texts hold no secret.
_TOKEN_MARKS = ("eyJ", "sk_", "rk_", "egt_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "xox", "AKIA")
_DIGITS = "0123456789"


def _may_name_a_secret(lowered: str, rules: ScrubRules) -> bool:
    """Whether a key in `lowered` could name a secret: the text compacted as keys are
    (letters and digits only) holds every compacted key, so what is not in it is in no
    key."""
    squeezed = _NON_ALNUM.sub("", lowered)
    return (
        any(part in squeezed for part in SECRET_KEY_PARTS)
        or any(part in squeezed for part in SCALAR_SECRET_KEY_PARTS)
        or any(key in squeezed for key in SECRET_KEYS)
        or any(part in squeezed for part in rules.extra_keys)
    )


def _scrub_text(text: str, rules: ScrubRules) -> str:
    lowered = text.lower()
    if ("=" in text or ":" in text) and _may_name_a_secret(lowered, rules):
        text = _scrub_key_values(text, rules)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m["head"] + FILTERED, text)
    if "bearer" in lowered:
        text = _BEARER.sub(lambda m: f"{m.group(1)} {FILTERED}", text)
    if any(mark in text for mark in _TOKEN_MARKS):
        text = _TOKENS.sub(FILTERED, text)
    if sum(text.count(digit) for digit in _DIGITS) >= 13:
        text = _CARD.sub(_card_match, text)
    return text


def _pairs(value: list[Any] | tuple[Any, ...]) -> bool:
    """A list of [name, value] pairs, as Sentry sends headers and query strings."""
    return bool(value) and all(
        isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str)
        for item in value
    )


# Whole values found to hold nothing to filter, by a digest of their JSON: the contexts,
# SDK block and installed modules an application sends with every event recur from event
# to event, and reading them value by value cost three times the digest. The JSON is
# written in C and a collision-resistant digest keys the verdict, so a secret never passes
# on the strength of another value's verdict. Only "nothing to filter" is remembered.
CACHED_DATA_BYTES = 16 * 1024
_CLEAN_CACHE_SIZE = 8192
_clean: dict[tuple[bytes, tuple[str, ...]], bool] = {}


def scrub_data(value: Any, rules: ScrubRules, *, depth: int = 0, recurs: bool = True) -> Any:
    """A copy of JSON-like `value` with rules 1 and 2 applied throughout; `value` itself
    when nothing in it is filtered. `recurs=False` for data that differs from event to
    event (frame variables, breadcrumbs), where remembering verdicts only costs."""
    verdicts = _verdicts(rules.extra_keys)
    key = None
    if recurs and depth == 0 and value and (type(value) is dict or type(value) is list):
        try:
            blob = orjson.dumps(value)
        except TypeError:  # not JSON as orjson writes it (keys that are not text, depth)
            blob = b""
        if 0 < len(blob) <= CACHED_DATA_BYTES:
            key = (hashlib.blake2b(blob, digest_size=20).digest(), rules.extra_keys)
            if key in _clean:
                return value
    if _dirty(value, verdicts, depth):
        scrubbed = _scrub_data(value, rules, depth)
        if scrubbed != value:
            return scrubbed
    if key is not None:
        if len(_clean) >= _CLEAN_CACHE_SIZE:
            # Start again rather than evict one by one: taking the oldest of a dict over
            # and over walks the holes the earlier deletions left.
            _clean.clear()
        _clean[key] = True
    return value


# Most data holds nothing to filter, and frame variables and breadcrumbs differ from event
# to event, so no cache of whole values saves their walk: the walk that copies (below)
# built a new dict or list for every container of every event, then compared it with the
# original, a fifth of the event loop's time per Sentry event. This walk only reads, and
# stops at the first thing the copying walk would change.
def _dirty(value: Any, verdicts: _Verdicts, depth: int) -> bool:
    """Whether `_scrub_data(value, …, depth)` would change anything in `value`."""
    if depth > MAX_DEPTH:
        return True
    kind = type(value)
    if kind is str:
        return _text_dirty(value, verdicts)
    if kind is dict:
        kinds, texts = verdicts.kinds, verdicts.texts
        for key, item in value.items():
            if isinstance(key, str):
                verdict = kinds.get(key) or verdicts.kind(key)
                if verdict is _SECRET or (
                    verdict is _SCALAR_SECRET and not isinstance(item, dict | list | tuple)
                ):
                    if item != FILTERED:  # an SDK's own scrubber may have been first
                        return True
                    continue
            kind = type(item)
            if kind is str:
                if 0 < len(item) <= CACHED_TEXT_LENGTH:
                    scrubbed = texts.get(item) or verdicts.text(item)
                    if scrubbed is not item and scrubbed != item:
                        return True
                elif _text_dirty(item, verdicts):
                    return True
            elif not (item is None or kind is float or kind is bool) and _dirty(
                item, verdicts, depth + 1
            ):
                return True
        return False
    if kind is list:
        if _pairs(value):
            for pair in value:
                if type(pair) is not list:  # the copying walk makes lists of them
                    return True
                name, item = pair
                if verdicts.rules.is_secret_key(name, item):
                    if item != FILTERED:
                        return True
                elif _dirty(item, verdicts, depth + 1):
                    return True
            return False
        return any(_dirty(item, verdicts, depth + 1) for item in value)
    if kind is tuple:  # the copying walk makes a list of it
        return True
    return _scrub_scalar(value, verdicts.rules, depth) is not value


def _text_dirty(text: str, verdicts: _Verdicts) -> bool:
    if not text:
        return False
    if len(text) <= CACHED_TEXT_LENGTH:
        scrubbed = verdicts.texts.get(text) or verdicts.text(text)
    else:
        scrubbed = scrub_text(text, verdicts.rules)
    return scrubbed is not text and scrubbed != text


def _scrub_data(value: Any, rules: ScrubRules, depth: int) -> Any:
    if depth > MAX_DEPTH:
        return FILTERED
    kind = type(value)
    if kind is str:
        return scrub_text(value, rules)
    if kind is dict:
        return _scrub_mapping(value, rules, depth)
    if kind is list or kind is tuple:
        if _pairs(value):
            return [
                [name, FILTERED]
                if rules.is_secret_key(name, item)
                else [name, _scrub_data(item, rules, depth + 1)]
                for name, item in value
            ]
        return [
            scrub_text(item, rules) if type(item) is str else _scrub_data(item, rules, depth + 1)
            for item in value
        ]
    return _scrub_scalar(value, rules, depth)


def _scrub_scalar(value: Any, rules: ScrubRules, depth: int) -> Any:
    if isinstance(value, str):
        return scrub_text(value, rules)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        digits = str(abs(value))
        return FILTERED if looks_like_card(digits) else value
    if isinstance(value, dict | list | tuple):  # subclasses of the JSON containers
        return _scrub_data(dict(value) if isinstance(value, dict) else list(value), rules, depth)
    return value


class _Verdicts:
    """The key verdicts and short texts' scrubbed forms already worked out for one set of
    key parts, in plain dicts: the walk's hot loop looks them up with `dict.get`, where an
    `lru_cache` cost a call and a key tuple per value (half the walk). The one place both
    are remembered, for the walks and for `ScrubRules.is_secret_key` alike."""

    LIMIT = 16384

    def __init__(self, extra_keys: tuple[str, ...]) -> None:
        self.extra_keys = extra_keys
        self.rules = ScrubRules(extra_keys=extra_keys)
        self.kinds: dict[str, str] = {}
        self.texts: dict[str, str] = {}

    def kind(self, key: str) -> str:
        if len(self.kinds) >= self.LIMIT:
            self.kinds.clear()
        verdict = self.kinds[key] = _key_kind(key, self.extra_keys)
        return verdict

    def text(self, text: str) -> str:
        if len(self.texts) >= self.LIMIT:
            self.texts.clear()
        scrubbed = self.texts[text] = _scrub_text(text, self.rules)
        return scrubbed


_VERDICTS: dict[tuple[str, ...], _Verdicts] = {}


def _verdicts(extra_keys: tuple[str, ...]) -> _Verdicts:
    found = _VERDICTS.get(extra_keys)
    if found is None:
        if len(_VERDICTS) >= 64:  # projects' own key lists: a handful in practice
            _VERDICTS.clear()
        found = _VERDICTS[extra_keys] = _Verdicts(extra_keys)
    return found


def _scrub_mapping(value: dict[Any, Any], rules: ScrubRules, depth: int) -> dict[Any, Any]:
    # The walk's hot loop (every key of every mapping of every event): the common leaves,
    # short text, floats and None, are handled here rather than in a call per value.
    verdicts = _verdicts(rules.extra_keys)
    kinds, texts = verdicts.kinds, verdicts.texts
    out: dict[Any, Any] = {}
    for key, item in value.items():
        kind = type(item)
        if isinstance(key, str):
            verdict = kinds.get(key) or verdicts.kind(key)
            if verdict is _SECRET or (
                verdict is _SCALAR_SECRET and not isinstance(item, dict | list | tuple)
            ):
                out[key] = FILTERED
                continue
        if kind is str:
            if 0 < len(item) <= CACHED_TEXT_LENGTH:
                scrubbed = texts.get(item)
                out[key] = verdicts.text(item) if scrubbed is None else scrubbed
            else:
                out[key] = scrub_text(item, rules)
        elif item is None or kind is float or kind is bool:
            out[key] = item
        else:
            out[key] = _scrub_data(item, rules, depth + 1)
    return out


def _without_ip_request(request: dict[str, Any]) -> dict[str, Any]:
    out = dict(request)
    headers = out.get("headers")
    if isinstance(headers, dict):
        out["headers"] = {
            name: value
            for name, value in headers.items()
            if not (isinstance(name, str) and name.lower() in IP_HEADERS)
        }
    elif isinstance(headers, list):
        out["headers"] = [
            item
            for item in headers
            if not (
                isinstance(item, list | tuple)
                and item
                and isinstance(item[0], str)
                and item[0].lower() in IP_HEADERS
            )
        ]
    env = out.get("env")
    if isinstance(env, dict):
        out["env"] = {
            name: value
            for name, value in env.items()
            if not (isinstance(name, str) and name.lower() in IP_ENV)
        }
    return out


def _scrub_frame(frame: Frame, rules: ScrubRules) -> Frame:
    verdicts = _verdicts(rules.extra_keys)
    if not (
        _dirty(frame.vars, verdicts, 0)
        or (frame.context_line and _text_dirty(frame.context_line, verdicts))
        or _lines_dirty(frame.pre_context, verdicts)
        or _lines_dirty(frame.post_context, verdicts)
    ):
        return frame
    update = {
        "vars": scrub_data(frame.vars, rules, recurs=False),
        "context_line": scrub_text(frame.context_line, rules) if frame.context_line else None,
        "pre_context": _scrub_lines(frame.pre_context, rules),
        "post_context": _scrub_lines(frame.post_context, rules),
    }
    return _copy_if_changed(frame, update)


def _lines_dirty(lines: list[str], verdicts: _Verdicts) -> bool:
    """Whether any of a frame's source lines (most of them seen before) is filtered."""
    texts = verdicts.texts
    for line in lines:
        scrubbed = texts.get(line)
        if scrubbed is None:
            if _text_dirty(line, verdicts):
                return True
        elif scrubbed is not line and scrubbed != line:
            return True
    return False


def _scrub_lines(lines: list[str], rules: ScrubRules) -> list[str]:
    """Source lines (ten a frame, most of them seen before), looked up in one loop."""
    texts = _verdicts(rules.extra_keys).texts
    out = []
    for line in lines:
        scrubbed = texts.get(line)
        out.append(scrub_text(line, rules) if scrubbed is None else scrubbed)
    return out


def _copy_if_changed(model: Any, update: dict[str, Any]) -> Any:
    """`model` itself when `update` changes nothing (most frames and exceptions hold no
    secret, and a copy per frame was a fifth of scrubbing's time), else a copy."""
    for name, value in update.items():
        current = getattr(model, name)
        if value is not current and value != current:
            return model.model_copy(update=update)
    return model


def _scrub_exception(exception: ExceptionIn, rules: ScrubRules) -> ExceptionIn:
    update = {
        "value": scrub_text(exception.value, rules) if exception.value else exception.value,
        "mechanism": scrub_data(exception.mechanism, rules)
        if exception.mechanism
        else exception.mechanism,
        "frames": [_scrub_frame(frame, rules) for frame in exception.frames],
    }
    return _copy_if_changed(exception, update)


def _scrub_user(user: UserIn, rules: ScrubRules) -> UserIn | None:
    update: dict[str, Any] = {"data": scrub_data(user.data, rules)}
    if rules.drop_ip_addresses:
        update["ip_address"] = None
        # An id that is the address (Retack's user context may be one) goes with it.
        if user.id is not None and user.id == user.ip_address:
            update["id"] = None
    scrubbed = user.model_copy(update=update)
    if not (
        scrubbed.id
        or scrubbed.email
        or scrubbed.username
        or scrubbed.name
        or scrubbed.ip_address
        or scrubbed.data
    ):
        return None
    return scrubbed


def _text(value: str | None, rules: ScrubRules) -> str | None:
    return scrub_text(value, rules) if value else value


def scrub_event(event: EventIn, rules: ScrubRules) -> EventIn:
    """A copy of `event` with every rule applied; `event` itself is left as it was."""
    request = event.request
    if request is not None and rules.drop_ip_addresses:
        request = _without_ip_request(request)
    tags = {
        key: FILTERED if rules.is_secret_key(key) else scrub_text(value, rules)
        for key, value in event.tags.items()
    }
    return event.model_copy(
        update={
            "message": _text(event.message, rules),
            "exceptions": [_scrub_exception(exc, rules) for exc in event.exceptions],
            "raw_stacktrace": _text(event.raw_stacktrace, rules),
            "url": _text(event.url, rules),
            # A stored column of bounded length: `[Filtered]` may be longer than what it hides.
            "transaction": _text(event.transaction, rules)[:TRANSACTION_LENGTH]
            if event.transaction
            else event.transaction,
            "request": scrub_data(request, rules) if request is not None else None,
            "user": _scrub_user(event.user, rules) if event.user is not None else None,
            "account": event.account.model_copy(
                update={"data": scrub_data(event.account.data, rules)}
            )
            if event.account is not None
            else None,
            "breadcrumbs": scrub_data(event.breadcrumbs, rules, recurs=False),
            "tags": tags,
            "extra": scrub_data(event.extra, rules),
            "contexts": scrub_data(event.contexts, rules),
            "client_ip": None if rules.drop_ip_addresses else event.client_ip,
        }
    )
