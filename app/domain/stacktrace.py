"""Turn a pasted or reported stack trace (plain text) into the canonical exception chain.

Several ingest dialects only carry a stack as text. Parsing it here lets grouping and
the UI treat those events like ones that arrived with structured frames; when the text
is in no format we know, the caller keeps the raw text and we return nothing rather
than guess.

The output follows the conventions of `app.domain.event`: the chain runs from the root
cause to the exception that surfaced last, and each exception's frames run from the
outermost call to the crash site. Python prints frames in that order already; V8,
SpiderMonkey and JavaScriptCore print the crash site first, so their frames are
reversed.

Choices that callers can rely on:

- For a frame whose location is a URL with an authority (`https://host/static/app.js`),
  `filename` is the URL's path (`/static/app.js`, no host, query or fragment) and
  `abs_path` is the URL exactly as printed. The path stays stable across hosts, CDNs
  and cache-busting queries, which is what grouping wants; the full URL is kept for
  source-map lookup. Any other location (file paths, `node:` modules, `<anonymous>`)
  is stored as printed in both fields.
- Text with a header line (`TypeError: boom`) but no frames yields `[]`: a message
  alone gives grouping nothing a frame-less event would not, and the caller keeps the
  raw text either way. Inside a Python chain or exception group, an exception without
  frames is kept as long as some exception in the text has frames.
- Eval'd code is reported at the location of the code that called `eval` (V8's
  `eval at f (file:line:col)`, SpiderMonkey's `file line N > eval`), because that
  location exists in a source file and the eval'd text usually does not.
- Node's error codes (`TypeError [ERR_X]: ...`) keep the bare class name as the type,
  as an SDK reporting `error.name` would, so the same class groups the same way.

Everything works line by line with anchored patterns so that a very large paste costs
time proportional to its length.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urlsplit

from app.domain.event import MAX_FRAMES, ExceptionIn, Frame

PYTHON = "python"
V8 = "v8"
FIREFOX = "firefox"
SAFARI = "safari"


def parse_stacktrace(text: str) -> list[ExceptionIn]:
    """Raw stack text -> exception chain; [] when the format is not recognised.

    An empty answer tells the caller to keep the raw text as it is: a wrong parse
    would group events by frames that are not there.

    Every event of a bug sends the same text, so texts up to CACHED_TEXT_LENGTH are
    parsed once and their chain reused (a list of its own each time; the models in it
    are never changed in place, only copied): parsing was most of the CPU time of an
    event sent as traceback text.
    """
    if len(text) <= CACHED_TEXT_LENGTH:
        return list(_parse_cached(text))
    return _parse(text)


# Up to 512 texts of at most 64 KiB: a few MiB at worst, most tracebacks are a few KiB.
CACHED_TEXT_LENGTH = 64 * 1024


@lru_cache(maxsize=512)
def _parse_cached(text: str) -> tuple[ExceptionIn, ...]:
    return tuple(_parse(text))


def _parse(text: str) -> list[ExceptionIn]:
    lines = _lines(text)
    fmt = _detect(lines)
    if fmt is None:
        return []
    if fmt == PYTHON:
        return _parse_python(lines)
    frame_parser = _parse_v8_frame if fmt == V8 else _parse_gecko_frame
    return _parse_js(lines, frame_parser)


def detect_format(text: str) -> str | None:
    """Name the dialect of a stack trace ("python", "v8", "firefox", "safari") or None.

    SpiderMonkey and JavaScriptCore share the `function@location` frame syntax, so they
    are told apart by marks only one of them prints; a trace with neither kind of mark
    is called "firefox" (the frames parse the same either way).
    """
    return _detect(_lines(text))


def _lines(text: str) -> list[str]:
    """Split on any newline convention: traces pasted from Windows tools carry CRLF."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


@dataclass
class _RawFrame:
    """A parsed frame not yet validated into a `Frame`.

    Validation is the costly part of a frame, and a huge paste keeps only its two
    ends, so frames are validated after the list has been bounded.
    """

    filename: str | None
    abs_path: str | None
    function: str | None
    lineno: int | None
    colno: int | None
    in_app: bool
    context_line: str | None = None

    def build(self) -> Frame:
        return Frame(
            filename=self.filename,
            abs_path=self.abs_path,
            function=self.function,
            lineno=self.lineno,
            colno=self.colno,
            in_app=self.in_app,
            context_line=self.context_line,
        )


def _build_frames(frames: list[_RawFrame]) -> list[Frame]:
    """Validate the frames the event model can keep.

    The model keeps at most MAX_FRAMES from the two ends of the list and decides how
    to split them; handing it the first and last MAX_FRAMES leaves that choice intact.
    """
    if len(frames) > 2 * MAX_FRAMES:
        frames = frames[:MAX_FRAMES] + frames[-MAX_FRAMES:]
    return [frame.build() for frame in frames]


# --------------------------------------------------------------------------- detection

_PY_TRACEBACK = re.compile(r"^(?:Exception Group )?Traceback \(most recent call last\):$")
_PY_FILE_LINE = re.compile(r'^File ".*", line \d+')

_SAFARI_NAMES = frozenset({"global code", "eval code", "module code"})


def _detect(lines: list[str]) -> str | None:
    """One pass: a Python marker anywhere wins, then any V8 frame, then `@` frames."""
    v8_frames = 0
    gecko_frames = 0
    safari_marks = 0
    firefox_marks = 0
    for line in lines:
        unmarked = line.lstrip(" \t|+").rstrip()  # exception groups draw a "  | " margin
        if _PY_TRACEBACK.match(unmarked) or _PY_FILE_LINE.match(unmarked):
            return PYTHON
        if v8_frames:
            continue
        v8 = _parse_v8_frame(line)
        if v8 is not None and _is_evidence(v8):
            v8_frames += 1
            continue
        gecko = _parse_gecko_frame(line)
        if gecko is None:
            continue
        if _is_evidence(gecko):
            gecko_frames += 1
        safari_marks += _safari_mark(line, gecko)
        firefox_marks += _firefox_mark(line)
    if v8_frames:
        return V8
    if not gecko_frames:
        return None
    if safari_marks > firefox_marks:
        return SAFARI
    return FIREFOX


def _is_evidence(frame: _RawFrame) -> bool:
    """A frame with a line number or a native marker; a bare `name@` line proves nothing."""
    return frame.lineno is not None or frame.filename in ("[native code]", "native")


def _safari_mark(line: str, frame: _RawFrame) -> int:
    """1 for what only JavaScriptCore prints."""
    stripped = line.strip()
    if frame.filename == "[native code]" or frame.function in _SAFARI_NAMES:
        return 1
    # JavaScriptCore prints eval'd and Function-built code with an empty location.
    return int(stripped.endswith("@") and frame.function is not None)


def _firefox_mark(line: str) -> int:
    """1 for what only SpiderMonkey prints: eval positions, `/<` closures, async causes."""
    stripped = line.strip()
    if _GECKO_EVAL_MARK.search(stripped) or "<@" in stripped:
        return 1
    at = stripped.find("@")
    return int(at > 0 and "*" in stripped[:at])


# --------------------------------------------------------------------------- frames


_LIBRARY_PATH = re.compile(
    r"node_modules|bower_components|site-packages|dist-packages"
    r"|^<frozen|^node:|^internal/"
    r"|[/\\]lib[/\\]python\d"  # /usr/lib/python3.11, venv and pyenv standard libraries
    r"|[/\\]python\d*[/\\]lib[/\\]",  # C:\Python311\Lib\ on Windows
    re.IGNORECASE,
)
_NATIVE_LOCATIONS = frozenset({"[native code]", "native"})


def _in_app(path: str | None, lineno: int | None, native: bool = False) -> bool:
    """Guess whether a frame is the application's own code or library/runtime code.

    Only the path is available in text, so this follows the layout conventions of the
    package managers and runtimes; frames with no path at all are given the benefit
    of the doubt unless the runtime marked them native.
    """
    if native:
        return False
    if path is None:
        return True
    if path in _NATIVE_LOCATIONS:
        return False
    if path == "<anonymous>" and lineno is None:
        return False
    return _LIBRARY_PATH.search(path) is None


_URL_WITH_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _location_names(location: str) -> tuple[str, str]:
    """(filename, abs_path) for a location as printed; see the module docstring."""
    if _URL_WITH_AUTHORITY.match(location):
        try:
            path = urlsplit(location).path
        except ValueError:
            return location, location
        return path or "/", location
    return location, location


def _make_frame(
    location: str | None,
    function: str | None,
    lineno: int | None,
    colno: int | None,
    *,
    native: bool = False,
) -> _RawFrame:
    filename = abs_path = None
    if location:
        filename, abs_path = _location_names(location)
    return _RawFrame(
        filename=filename,
        abs_path=abs_path,
        function=function or None,
        lineno=lineno,
        colno=colno,
        in_app=_in_app(abs_path, lineno, native),
    )


_LINE_COL = re.compile(r"^(?P<file>.*):(?P<line>\d+):(?P<col>\d+)$")
_LINE_ONLY = re.compile(r"^(?P<file>.*):(?P<line>\d+)$")


def _split_position(location: str) -> tuple[str, int | None, int | None]:
    """`file:line:col` -> parts, reading from the right so drive letters and ports survive."""
    match = _LINE_COL.match(location)
    if match:
        return match["file"], int(match["line"]), int(match["col"])
    match = _LINE_ONLY.match(location)
    if match:
        return match["file"], int(match["line"]), None
    return location, None, None


# V8: "    at func (location)" or "    at location".
_V8_AT = re.compile(r"^at\s+(?P<rest>\S.*)$")
_V8_EVAL_ORIGIN = re.compile(r"\((?P<file>[^()\s]+):(?P<line>\d+):(?P<col>\d+)\)")
_V8_INDEX = re.compile(r"^index \d+$")
_V8_NO_POSITION = frozenset({"native", "<anonymous>", "unknown location"})


def _split_call(rest: str) -> tuple[str | None, str]:
    """Split `func (location)` at the parenthesis that closes the line.

    Function names can hold parentheses (`fn.(anonymous function)`) and so can eval
    locations, so the opening parenthesis is found by balancing from the end.
    """
    if not rest.endswith(")"):
        return None, rest
    opening = rest.rfind("(")
    if opening < 0:
        return None, rest
    if ")" not in rest[opening + 1 : -1]:  # the usual case: nothing nested
        function = rest[:opening].strip()
        return (function or None), rest[opening + 1 : -1]
    depth = 0
    for index in range(len(rest) - 1, -1, -1):
        char = rest[index]
        if char == ")":
            depth += 1
        elif char == "(":
            depth -= 1
            if depth == 0:
                function = rest[:index].strip()
                return (function or None), rest[index + 1 : -1]
    return None, rest


def _parse_v8_frame(line: str) -> _RawFrame | None:
    """One `at ...` line, or None when the line is not a V8 frame with a usable location."""
    stripped = line.strip()
    if stripped.endswith(" {"):  # Node prints the error's own properties after the last frame
        stripped = stripped[:-2].rstrip()
    match = _V8_AT.match(stripped)
    if match is None:
        return None
    rest = match["rest"]
    if rest.startswith("async "):
        rest = rest[len("async ") :]
    function, location = _split_call(rest)
    if function == "<anonymous>":
        function = None
    location = location.strip()
    if location.startswith("address at "):  # bytecode engines print an address first
        location = location[len("address at ") :]

    if location.startswith("eval at "):
        origin = _V8_EVAL_ORIGIN.search(location)
        if origin is not None:
            return _make_frame(origin["file"], function, int(origin["line"]), int(origin["col"]))
        location = location.rpartition(", ")[2]
    if _V8_INDEX.match(location):  # `Promise.all (index 0)`: a built-in, no source
        return _make_frame(None, function, None, None, native=True)
    if location in _V8_NO_POSITION:
        return _make_frame(location, function, None, None)
    return _positioned_frame(location, function)


def _positioned_frame(location: str, function: str | None) -> _RawFrame | None:
    """A frame for `file:line[:col]`; None when there is no position or no real file."""
    filename, lineno, colno = _split_position(location)
    if lineno is None or not filename or filename.isdigit():
        return None
    return _make_frame(filename, function, lineno, colno)


# SpiderMonkey and JavaScriptCore: "func@location", "@location", "[native code]".
_GECKO_EVAL = re.compile(r"^(?P<file>.+?) line (?P<line>\d+) > (?:eval|Function|injectedScript)")
_GECKO_EVAL_MARK = re.compile(r" line \d+ > (?:eval|Function|injectedScript)")
_GECKO_SPLIT_HINT = re.compile(r"@(?=[A-Za-z][A-Za-z0-9+.-]*:|/|\[native code\]|[A-Za-z]:\\)")
_GECKO_FUNCTION = re.compile(r"^(?:(?:get|set|async|static) )?\S*$")
_BARE_LOCATION = re.compile(r"^[^\s@]*:\d+(?::\d+)?$")


def _split_at(line: str) -> tuple[str, str] | None:
    """Split `func@location` where the location starts.

    Both names and URLs can contain `@` (`./node_modules/@scope/pkg/x.js@https://...`,
    `https://cdn/npm/lib@1.2.3/x.js`), so an `@` followed by something that opens a
    location (a scheme, an absolute path, `[native code]`) wins over the first `@`.
    """
    hint = _GECKO_SPLIT_HINT.search(line)
    at = hint.start() if hint is not None else line.find("@")
    if at < 0:
        return None
    return line[:at], line[at + 1 :]


def _parse_gecko_frame(line: str) -> _RawFrame | None:
    """One SpiderMonkey/JavaScriptCore frame line, or None.

    The name before `@` may not contain spaces (apart from a getter's `get `, an async
    cause and JavaScriptCore's `global code` kind of names): that is what keeps
    sentences with an e-mail address in them from passing for frames.
    """
    stripped = line.strip()
    if not stripped:
        return None
    if stripped == "[native code]":
        return _make_frame("[native code]", None, None, None)
    if stripped == "eval code":  # older JavaScriptCore prints eval'd code bare
        return _make_frame(None, "eval code", None, None)
    parts = _split_at(stripped)
    if parts is None:
        if _BARE_LOCATION.match(stripped) and ("/" in stripped or "." in stripped):
            # JavaScriptCore's anonymous frame: a bare URL or path with a position.
            return _positioned_frame(stripped, None)
        return None
    function, location = parts
    # Frames past an async boundary carry its cause: `async*f`, `promise callback*f`.
    function = function.rpartition("*")[2]
    if function not in _SAFARI_NAMES and not _GECKO_FUNCTION.match(function):
        return None
    if not location:
        return _make_frame(None, function, None, None) if function else None
    if location == "[native code]":
        return _make_frame(location, function, None, None)
    evaluated = _GECKO_EVAL.match(location)
    if evaluated is not None:
        return _make_frame(evaluated["file"], function, int(evaluated["line"]), None)
    return _positioned_frame(location, function)


# --------------------------------------------------------------------------- JavaScript

_JS_HEADER = re.compile(
    r"^(?:Uncaught\s+(?:\(in promise\)\s+)?)?"
    r"(?P<type>[A-Za-z_$][\w$.]*)(?:\s\[[^\]]*\])?"
    r"(?:(?P<colon>:)(?: (?P<value>.*))?)?$"
)
_JS_CAUSE = re.compile(r"^\s*\[cause\]:\s?(?P<header>.*)$")
_JS_SKIPPED = re.compile(r"^\s*\.\.\. \d+ (?:more|lines matching cause stack trace \.\.\.)\s*$")


@dataclass
class _Segment:
    header: list[str]
    frames: list[_RawFrame] = field(default_factory=list)


def _parse_js(
    lines: list[str], parse_frame: Callable[[str], _RawFrame | None]
) -> list[ExceptionIn]:
    """Group frame runs with the lines printed above them, one segment per error.

    Node prints an error's `cause` (and the errors of an AggregateError) after the
    error itself, so the segments are returned last-printed first: root cause first.
    """
    segments: list[_Segment] = []
    pending: list[str] = []
    current: _Segment | None = None
    for line in lines:
        if _JS_SKIPPED.match(line):
            continue
        frame = parse_frame(line)
        if frame is None:
            if line.strip():  # a blank line does not end a trace; any other text does
                current = None
            pending.append(line)
            continue
        if current is None:
            current = _Segment(header=pending)
            segments.append(current)
        pending = []
        current.frames.append(frame)

    chain: list[ExceptionIn] = []
    for segment in reversed(segments):
        error_type, value = _js_header(segment.header)
        chain.append(
            ExceptionIn(type=error_type, value=value, frames=_build_frames(segment.frames[::-1]))
        )
    return chain


def _js_header(block: list[str]) -> tuple[str | None, str | None]:
    """Find `Type: message` among the lines above a frame run.

    Those lines can also hold the source excerpt Node prints for an uncaught error, or
    the tail of the previous error's properties, so a `[cause]:` line wins, then the
    first unindented header-shaped line, then an indented one; the lines after it, up
    to the frames, continue a multi-line message.
    """
    for index, line in enumerate(block):
        cause = _JS_CAUSE.match(line)
        if cause is not None:
            return _js_header_at(cause["header"], block[index + 1 :])
    for must_be_flush in (True, False):
        for index, line in enumerate(block):
            if must_be_flush and line[:1].isspace():
                continue
            candidate = line.strip()
            match = _JS_HEADER.match(candidate)
            if match is not None and match["colon"]:
                return _js_header_at(candidate, block[index + 1 :])
    last = next((line.strip() for line in reversed(block) if line.strip()), None)
    if last is not None:
        match = _JS_HEADER.match(last)
        if match is not None and not match["colon"]:
            return _js_header_at(last, [])
    return None, None


def _js_header_at(header: str, following: list[str]) -> tuple[str | None, str | None]:
    match = _JS_HEADER.match(header.strip())
    if match is None:
        return None, _join_message([header, *following])
    return match["type"], _join_message([match["value"] or "", *following])


def _join_message(lines: Iterable[str]) -> str | None:
    text = "\n".join(line.rstrip() for line in lines).strip("\n")
    return text if text.strip() else None


# --------------------------------------------------------------------------- Python

_PY_SEPARATORS = frozenset(
    {
        "During handling of the above exception, another exception occurred:",
        "The above exception was the direct cause of the following exception:",
    }
)
_PY_FRAME = re.compile(
    r'^(?P<indent>\s*)File "(?P<path>.*)", line (?P<line>\d+)(?:, in (?P<func>.*))?$'
)
_PY_CARET = re.compile(r"^\s*[\^~]+\s*$")
_PY_REPEATED = re.compile(r"^\s*\[Previous line repeated \d+ more times?\]$")
_PY_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_<][\w.<>]*)(?:: ?(?P<value>.*))?$")

# Exception groups draw a margin: "  + Exception Group Traceback", "  | content",
# "  +-+---- 1 ----" (first sub-exception, one level deeper), "    +---- 2 ----" (next
# sibling), "    +------" (end of the level).
_PY_GROUP_START = re.compile(r"^(?P<indent> *)\+ (?P<header>Exception Group Traceback .*)$")
_PY_GROUP_FIRST = re.compile(r"^(?P<indent> *)\+-\+-+ (?:\d+|\.\.\.) -+\s*$")
_PY_GROUP_NEXT = re.compile(r"^(?P<indent> *)\+-+ (?:\d+|\.\.\.) -+\s*$")
_PY_GROUP_END = re.compile(r"^(?P<indent> *)\+-+\s*$")
_PY_GROUP_CONTENT = re.compile(r"^(?P<indent> *)\|(?: (?P<content>.*))?$")


@dataclass
class _PyException:
    frames: list[_RawFrame] = field(default_factory=list)
    message: list[str] = field(default_factory=list)


@dataclass
class _PySection:
    """A run of lines at one margin depth: a top-level chain or one sub-exception."""

    column: int
    lines: list[str] = field(default_factory=list)
    children: list[_PySection] = field(default_factory=list)
    is_child: bool = False


def _parse_python(lines: list[str]) -> list[ExceptionIn]:
    """Chains and groups in the order Python prints them: the cause before its effect."""
    top = _python_sections(lines)
    chain: list[ExceptionIn] = []
    for section in top:
        chain.extend(_emit_section(section))
    if not any(exc.frames for exc in chain):
        return []
    return chain


def _emit_section(section: _PySection) -> list[ExceptionIn]:
    """A group's sub-exceptions come before the group: they are what it was raised for.

    The group is the last exception of its section (anything before it in the section
    is its own context chain), so the children are slotted in just ahead of it.
    """
    parsed = _parse_python_block(section.lines, allow_bare=section.is_child)
    children = [exc for child in section.children for exc in _emit_section(child)]
    return parsed[:-1] + children + parsed[-1:]


def _python_sections(lines: list[str]) -> list[_PySection]:
    """Cut the text into margin sections and attach sub-exceptions to their group."""
    has_groups = any(_PY_GROUP_START.match(line) for line in lines)
    root = _PySection(column=-1)
    if not has_groups:
        root.lines = lines
        return [root]

    top: list[_PySection] = [root]
    latest_at: dict[int, _PySection] = {-1: root}
    current = root

    def open_section(column: int, *, child: bool) -> _PySection:
        section = _PySection(column=column, is_child=child)
        parent = latest_at.get(column - 2) if child else None
        if parent is not None:
            parent.children.append(section)
        else:
            top.append(section)
        latest_at[column] = section
        return section

    for line in lines:
        start = _PY_GROUP_START.match(line)
        if start is not None:
            current = open_section(len(start["indent"]), child=False)
            current.lines.append(start["header"])
            continue
        first = _PY_GROUP_FIRST.match(line)
        if first is not None:
            current = open_section(len(first["indent"]) + 2, child=True)
            continue
        following = _PY_GROUP_NEXT.match(line)
        if following is not None:
            current = open_section(len(following["indent"]), child=True)
            continue
        if _PY_GROUP_END.match(line):
            continue
        content = _PY_GROUP_CONTENT.match(line)
        if content is not None and len(content["indent"]) in latest_at:
            column = len(content["indent"])
            if current.column != column:
                current = latest_at[column]
            current.lines.append(content["content"] or "")
            continue
        if current is not root:
            current = root = _PySection(column=-1)
            top.append(root)
            latest_at[-1] = root
        root.lines.append(line)
    return top


def _parse_python_block(lines: list[str], *, allow_bare: bool) -> list[ExceptionIn]:
    """Parse a chain of plain tracebacks (no group margins).

    `allow_bare` accepts an exception line with no traceback above it, which is how
    a group prints a sub-exception that was never raised on its own.
    """
    done: list[_PyException] = []
    current: _PyException | None = None
    in_message = False
    frame_indent = 0

    def finish() -> None:
        nonlocal current, in_message
        if current is not None:
            done.append(current)
        current = None
        in_message = False

    for raw in lines:
        line = raw.rstrip()
        stripped = line.strip()
        if stripped in _PY_SEPARATORS or _PY_TRACEBACK.match(stripped):
            finish()
            if stripped not in _PY_SEPARATORS:
                current = _PyException()
            continue
        if in_message and current is not None:
            current.message.append(line)
            continue
        frame = _PY_FRAME.match(line)
        if frame is not None:
            if current is None:  # SyntaxError printed for a script: no traceback header
                current = _PyException()
            current.frames.append(_python_frame(frame["path"], frame["func"], int(frame["line"])))
            frame_indent = len(frame["indent"])
            continue
        if not stripped or _PY_REPEATED.match(stripped):
            continue
        if current is None:
            if allow_bare and _PY_EXCEPTION_LINE.match(stripped):
                current = _PyException(message=[line])
                in_message = True
            continue
        indent = len(line) - len(line.lstrip())
        if current.frames and indent > frame_indent:
            last = current.frames[-1]
            if not _PY_CARET.match(line) and last.context_line is None:
                last.context_line = stripped
            continue
        current.message.append(line)
        in_message = True
    finish()

    chain: list[ExceptionIn] = []
    for exc in done:
        error_type, value = _python_message(exc.message)
        if exc.frames or error_type or value:
            frames = _build_frames(exc.frames)
            chain.append(ExceptionIn(type=error_type, value=value, frames=frames))
    return chain


def _python_frame(path: str, function: str | None, lineno: int) -> _RawFrame:
    """Python prints the path as the interpreter knew it, so both names are that path."""
    return _RawFrame(
        filename=path,
        abs_path=path,
        function=function or None,
        lineno=lineno,
        colno=None,
        in_app=_in_app(path, lineno),
    )


def _python_message(lines: list[str]) -> tuple[str | None, str | None]:
    """`module.Type: message` over one or more lines; a bare `Type` has no message."""
    if not lines:
        return None, None
    first = lines[0].strip()
    match = _PY_EXCEPTION_LINE.match(first)
    if match is None:
        return None, _join_message(lines)
    return match["type"], _join_message([match["value"] or "", *lines[1:]])
