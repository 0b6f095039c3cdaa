"""Grouping: which issue an event belongs to, decided by pure code.

Grouping never touches the database: it turns one `EventIn` into a `Grouping` (a hash,
the versioned id of the strategy that made it, and a sentence saying why), and storage
looks the hash up. The strategy id is stored with the group because a hash only means
something under the rules that produced it; changing what a strategy hashes (even the
serialisation) must come with a new version, never an edit of the current one.

Strategies (the registry `STRATEGIES` holds the current version of each):

- `frames` (default): the primary exception's type and its three innermost in-app frames,
  each as function + file (or, for Python, module). The file is its base name without
  host, directories, query, fragment or bundler hash, so the same file served from two
  hosts or deployed to two directories groups together. Never line or column numbers, so
  that moving code, adding an import or reformatting does not split an issue. Only the
  primary exception's type counts, not the chain's: a wrapper raised around the same
  failure is the same problem, and the frames already say where it happened.
  Hash: sha256 of the canonical JSON of the components, hex, first 32 characters.
- `location`: for projects moving from the "Error Tracker" API, whose issues are keyed
  by where the error was raised: md5 hex of `f"{project}:{type}:{file}:{line}"` of
  the innermost frame, where `project` is the project's name, as that API's clients send
  it (`../shared/seeds/003_5d6793c66178ddef.txt`), so the fingerprints they see are the
  ones they had. It uses the line on purpose, so issues match what those users had.

Both fall back to the exception type and a normalised message when there is no stack
(see `normalize_message`), and both honour a client's own `fingerprint`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from app.domain.event import EventIn, EventType, Frame

FRAMES_USED = 3
TITLE_LIMIT = 200
REASON_TEXT_LIMIT = 120
EMPTY_TEXT = "<empty>"
UNKNOWN_TITLE = "<unknown error>"


@dataclass(frozen=True)
class Grouping:
    """The outcome of grouping one event.

    `reason` is stored with the group so that people can see why events were merged,
    which is the first question anyone asks about a surprising issue.
    """

    hash: str
    strategy: str
    reason: str


# A strategy turns an event (and the project's name, for strategies that key on it) into
# the hash and the reason; `digest` is how it hashes a client fingerprint.
Compute = Callable[[EventIn, str], tuple[str, str]]


@dataclass(frozen=True)
class Strategy:
    """One versioned grouping strategy."""

    name: str
    version: int
    compute: Compute
    digest: Callable[[str], str]

    @property
    def id(self) -> str:
        return f"{self.name}:{self.version}"


# --- message normalisation -------------------------------------------------------------

# Order matters: a quoted value, URL, e-mail or path is replaced whole before its parts
# could be taken for numbers; UUIDs and dates before hex and integers; IPs before floats.
_NORMALIZERS: tuple[tuple[re.Pattern[str], str], ...] = (
    # 'x', "x" and `x`. A single quote only opens after a non-word character and only
    # closes before one, so the apostrophes of "can't" and "users'" are left alone.
    (re.compile(r"""(?<!\w)'[^'\n]*'(?!\w)|"[^"\n]*"|`[^`\n]*`"""), "<quoted>"),
    (
        re.compile(
            r"""\b[a-z][a-z0-9+.\-]*://[^\s<>'"`]*[^\s<>'"`.,;:!?)\]}]""",
            re.IGNORECASE,
        ),
        "<url>",
    ),
    (re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    # Unix paths with at least one segment (/tmp, ./src/a.py, ~/x), Windows drive
    # paths and UNC paths. A slash after a word character ("and/or", "1/2") is no path.
    (re.compile(r"(?<![\w<>/.~])(?:~|\.{1,2})?(?:/[\w.@%+~-]+)+/?"), "<path>"),
    (re.compile(r"""(?<!\w)[a-z]:\\[^\s'"`<>]*""", re.IGNORECASE), "<path>"),
    (re.compile(r"""(?<!\S)\\\\[\w.$-]+\\[^\s'"`<>]*"""), "<path>"),
    (
        re.compile(
            r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
            re.IGNORECASE,
        ),
        "<uuid>",
    ),
    (
        re.compile(
            r"\b\d{4}-\d{2}-\d{2}"
            r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?"
            r"(?!\w)"
        ),
        "<date>",
    ),
    # IPv6: the full eight groups, or a compressed form with "::". It must hold a
    # digit, so that "Foo::Bar" and "abc::def" (scope operators) stay; "10:32:01" has
    # neither eight groups nor "::".
    (
        re.compile(
            r"(?<![\w:.])(?=[0-9a-f:]*\d)"
            r"(?:(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}"
            r"|(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6})?::"
            r"(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6})?)"
            r"(?::\d{1,3}(?:\.\d{1,3}){3})?"
            r"(?![\w:]|\.\d)",
            re.IGNORECASE,
        ),
        "<ip>",
    ),
    (re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)"), "<ip>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.IGNORECASE), "<hex>"),
    # Long hex runs (hashes, object ids) must mix digits and letters: pure digits are
    # numbers, and pure letters are more likely words ("deadbeef" stays).
    (
        re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.IGNORECASE),
        "<hex>",
    ),
    # Digits glued to a word ("utf8", "item_42") are part of a name, not a value; a unit
    # after a number ("30s", "5ms") is kept.
    (re.compile(r"(?<![\w.])-?\d+(?:\.\d+)+(?:e[+-]?\d+)?", re.IGNORECASE), "<float>"),
    (re.compile(r"(?<![\w.])-?\d+"), "<int>"),
    (re.compile(r"\s+"), " "),
)


def normalize_message(text: str) -> str:
    """Replace the variable parts of a message with placeholders.

    Without a stack, the message is all there is to group by, and messages carry ids,
    counts, addresses and timestamps that differ on every occurrence of the same problem.
    Only values are replaced; words are kept, so different problems stay apart.
    """
    for pattern, placeholder in _NORMALIZERS:
        text = pattern.sub(placeholder, text)
    return text.strip()


# --- frames ----------------------------------------------------------------------------


def _has_content(frame: Frame) -> bool:
    """A frame without a function or any location says nothing about where we are."""
    return bool(frame.function or frame.filename or frame.abs_path or frame.module)


def _select_in_app(frames: list[Frame]) -> tuple[list[Frame], str]:
    """In-app frames and how they were chosen, for the reason string."""
    usable = [frame for frame in frames if _has_content(frame)]
    marked = [frame for frame in usable if frame.in_app is True]
    if marked:
        return marked, "in-app"
    unknown = [frame for frame in usable if frame.in_app is not False]
    if unknown:
        return unknown, "in-app not marked"
    return usable, "none in-app"


def in_app_frames(frames: list[Frame]) -> list[Frame]:
    """The frames that belong to the application, outermost first.

    Library frames (node_modules, site-packages) are the same for every bug that passes
    through them, so they would merge unrelated issues; and they change with library
    upgrades, which would split one issue. When a client marked some frames in-app, only
    those count; when it marked none, every frame not marked as library counts; when all
    are library frames, all of them count, because something is better than nothing.
    Frames with neither a function nor a file are ignored throughout.
    """
    return _select_in_app(frames)[0]


def _stack_frames(event: EventIn) -> list[Frame]:
    """The frames of the primary exception, or of the nearest exception in the chain
    that has some, because some clients attach the stack to only one link of a chain."""
    for exception in reversed(event.exceptions):
        frames = [frame for frame in exception.frames if _has_content(frame)]
        if frames:
            return frames
    return []


def _basename(path: str) -> str:
    """The last path component, without scheme, host, query or fragment.

    The same file is served from several hosts and CDNs, with cache-busting queries, and
    lives under different directories on different machines and releases
    (/srv/releases/20240101/app/utils.py, /static/v1.2.3/app.js): only its name is stable.
    """
    path = urlsplit(path).path if "://" in path else re.split(r"[?#]", path, maxsplit=1)[0]
    return re.split(r"[/\\]", path.rstrip("/\\"))[-1]


# A dot- or dash-separated segment of 5 to 32 letters and digits, at least one a digit,
# right before the extension(s): a bundler's content hash or chunk id.
_BUILD_HASH = re.compile(
    r"^(?P<stem>.+?)[.-](?=[0-9A-Za-z_]*\d)[0-9A-Za-z_]{5,32}(?P<ext>(?:\.[A-Za-z]+)+)$"
)


def _strip_build_hash(name: str) -> str:
    """app.3f2a1.js → app.js: the hash changes with every deploy, the code may not."""
    match = _BUILD_HASH.match(name)
    return match.group("stem") + match.group("ext") if match else name


def _is_python(frame: Frame, platform: str | None) -> bool:
    frame_platform = (frame.platform or platform or "").lower()
    name = frame.filename or frame.abs_path or ""
    return frame_platform == "python" or name.endswith((".py", ".pyw", ".pyc"))


def _frame_location(frame: Frame, platform: str | None) -> str:
    """Python's module is its dotted import path, the same in every virtualenv and
    checkout; elsewhere the module is often derived from the path, so the file is used."""
    if frame.module and _is_python(frame, platform):
        return frame.module
    return _strip_build_hash(_basename(frame.filename or frame.abs_path or ""))


def _describe_frame(function: str, location: str) -> str:
    if not location:
        return function or "?"
    return f"{function or '?'} ({location})"


def _exception_type(event: EventIn) -> str:
    primary = event.primary_exception
    return (primary.type or "").strip() if primary is not None else ""


# --- no stack --------------------------------------------------------------------------


def _message_basis(event: EventIn) -> tuple[str, str]:
    """The normalised text to group a stackless event by, and where it came from.

    The message wins over the exception value because a client that sends both chose the
    message as the summary. Only when there is neither a message nor an exception type
    does the raw stack text stand in, since then it is the only thing that tells events
    apart; failing that, every such event shares "<empty>".
    """
    primary = event.primary_exception
    text = (event.message or "").strip() or (
        (primary.value or "").strip() if primary is not None else ""
    )
    if text:
        return normalize_message(text), "message"
    if _exception_type(event):
        return "", "none"
    raw = normalize_message(event.raw_stacktrace or "")
    if raw:
        return raw, "raw"
    return EMPTY_TEXT, "empty"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _no_stack_reason(event: EventIn, exception_type: str, text: str, source: str) -> str:
    head = "stack trace not parsed" if event.raw_stacktrace else "no stack"
    parts = [f"type {exception_type}"] if exception_type else []
    quoted = f"'{_shorten(text, REASON_TEXT_LIMIT)}'"
    if source == "message":
        parts.append(f"normalised message {quoted}")
    elif source == "raw":
        parts.append(f"normalised raw stack trace {quoted}")
    elif source == "empty":
        parts.append(f"nothing else to go on, {quoted}")
    else:
        parts.append("no message")
    return f"{head}: {' + '.join(parts)}"


# --- strategies ------------------------------------------------------------------------


def _sha256_32(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def _canonical(payload: object) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _frames_strategy(event: EventIn, project: str) -> tuple[str, str]:
    """Hash of the canonical JSON of `["frames", type, [[function, location], …]]`, or
    `["message", type, normalised text]` without a stack. The project is not part of it:
    hashes are only ever compared within one project."""
    exception_type = _exception_type(event)
    frames = _stack_frames(event)
    if not frames:
        text, source = _message_basis(event)
        return (
            _sha256_32(_canonical(["message", exception_type, text])),
            _no_stack_reason(event, exception_type, text, source),
        )
    selected, how = _select_in_app(frames)
    used = selected[-FRAMES_USED:]
    components = [
        [(frame.function or "").strip(), _frame_location(frame, event.platform)] for frame in used
    ]
    count = len(used)
    noun = "frame" if count == 1 else "frames"
    counted = f"{count} in-app {noun}" if how == "in-app" else f"{count} {noun} ({how})"
    head = f"exception type {exception_type}" if exception_type else "no exception type"
    path = " → ".join(_describe_frame(function, location) for function, location in components)
    return (
        _sha256_32(_canonical(["frames", exception_type, components])),
        f"{head} + {counted}, innermost last: {path}",
    )


def _location_strategy(event: EventIn, project: str) -> tuple[str, str]:
    """md5 of `project:type:file:line` of the innermost frame, as the API it replaces.

    `file` is the frame's filename exactly as sent (its abs_path when it has no
    filename), `line` its line number; missing parts are empty strings. Without a
    stack: md5 of `project:type:normalised message`, the same text the frames strategy
    uses.
    """
    exception_type = _exception_type(event)
    frames = _stack_frames(event)
    if not frames:
        text, source = _message_basis(event)
        return (
            _md5(f"{project}:{exception_type}:{text}"),
            _no_stack_reason(event, exception_type, text, source),
        )
    innermost = frames[-1]
    file = innermost.filename or innermost.abs_path or ""
    line = "" if innermost.lineno is None else str(innermost.lineno)
    head = f"exception type {exception_type}" if exception_type else "no exception type"
    return (
        _md5(f"{project}:{exception_type}:{file}:{line}"),
        f"{head} + innermost frame at {file or '?'}:{line or '?'} (line numbers count)",
    )


STRATEGIES: dict[str, Strategy] = {
    "frames": Strategy(name="frames", version=1, compute=_frames_strategy, digest=_sha256_32),
    "location": Strategy(name="location", version=1, compute=_location_strategy, digest=_md5),
}

_DEFAULT_ENTRY = re.compile(r"\s*\{\{\s*default\s*\}\}\s*")


def _strategy(name: str) -> Strategy:
    """Accept a name or the current versioned id; an old version cannot be computed."""
    by_name = STRATEGIES.get(name.split(":", 1)[0])
    if by_name is None or name not in (by_name.name, by_name.id):
        known = ", ".join(sorted(STRATEGIES))
        raise ValueError(f"unknown grouping strategy {name!r}; known: {known}")
    return by_name


def grouping_for_event(
    event: EventIn,
    *,
    strategy: str = "frames",
    project_id: int | str = "",
    project_name: str | None = None,
) -> Grouping:
    """Group `event` under `strategy` (a name, or the current versioned id).

    A client fingerprint overrides the strategy: the client knows things about its
    errors that no heuristic can. Entries `{{ default }}` stand for the strategy's own
    hash, so a client can split a default group further instead of replacing it; a
    fingerprint of only `{{ default }}` is the default grouping itself.

    `project_name` is the project as strategies that key on it see it (`location`);
    without it, `project_id` stands in.
    """
    chosen = _strategy(strategy)
    digest, reason = chosen.compute(
        event, project_name if project_name is not None else str(project_id)
    )
    fingerprint = event.fingerprint
    if not fingerprint:
        return Grouping(hash=digest, strategy=chosen.id, reason=reason)
    defaults = [_DEFAULT_ENTRY.fullmatch(entry) is not None for entry in fingerprint]
    if all(defaults):
        return Grouping(
            hash=digest,
            strategy=chosen.id,
            reason=f"client fingerprint {fingerprint!r} is the default: {reason}",
        )
    resolved = [
        digest if is_default else entry
        for entry, is_default in zip(fingerprint, defaults, strict=True)
    ]
    explained = f"client fingerprint {fingerprint!r}"
    if any(defaults):
        explained += f", where {{{{ default }}}} is {reason}"
    return Grouping(
        hash=chosen.digest(_canonical(["fingerprint", resolved])),
        strategy=chosen.id,
        reason=explained,
    )


# --- title and culprit -----------------------------------------------------------------


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def title_and_culprit(event: EventIn) -> tuple[str, str | None]:
    """What an issue is called and where it happened, for lists where one line must do.

    Title: for message and log events their message; otherwise "Type: first line of the
    value", the type alone, the value alone, the message, or "<unknown error>", cut to
    200 characters. Culprit: the innermost in-app frame as "module in function" (when
    the frame has a module) or "function (file)", else the event's transaction, else None.
    """
    primary = event.primary_exception
    exception_type = _exception_type(event)
    value = _first_line(primary.value) if primary is not None else ""
    message = _first_line(event.message)
    if event.type in (EventType.MESSAGE, EventType.LOG) and message:
        title = message
    elif exception_type and value:
        title = f"{exception_type}: {value}"
    else:
        title = exception_type or value or message or UNKNOWN_TITLE
    return _shorten(title, TITLE_LIMIT), _culprit(event)


def _culprit(event: EventIn) -> str | None:
    frames = _stack_frames(event)
    if frames:
        frame = in_app_frames(frames)[-1]
        function = (frame.function or "").strip()
        file = _basename(frame.filename or frame.abs_path or "")
        if frame.module and function:
            return _shorten(f"{frame.module} in {function}", TITLE_LIMIT)
        described = _describe_frame(function, file) if function else frame.module or file
        if described:
            return _shorten(described, TITLE_LIMIT)
    return _shorten(event.transaction, TITLE_LIMIT) if event.transaction else None
