"""Source maps: minified JavaScript frames back to the code people wrote.

Pure code over maps that are already loaded; which maps exist for an event's release is
the source map service's business (`app.services.sourcemaps`). Resolution uses Sentry's
`symbolic` (`SourceMapView`), which reads source maps revision 3 (ECMA-426), index maps
included.

What a resolved frame holds:

- `lineno`, `colno`: the original position (1-based, as V8 prints them).
- `abs_path`: the original source as the map names it, resolved against the minified
  file's URL or path (a map's `sources` are relative to the map, which sits beside the
  minified file): `../src/cart.js` under `https://shop.example.com/static/app.min.js`
  is `https://shop.example.com/src/cart.js`. Sources that are URLs already (`webpack://…`)
  are kept as they are.
- `filename`: the source's path without scheme, host, or leading `./` and `../`
  (`src/cart.js`; `webpack://shop/./src/cart.js` is `src/cart.js`), so it reads like a
  path in the repository and is the same whatever directory the map was built in.
- `context_line`, `pre_context`, `post_context`: up to five lines around the position,
  from the map's `sourcesContent`; none when the map has no content for that source.
- `function`: the original name. Without the minified file, the scope a position is in
  cannot be read, so the name comes from the caller: the identifier at the call site
  in the next outer frame, mapped to its original name (`o+=f(r)` calls `lineTotal`).
  When that frame was not resolved or its call site carries no name (a method called
  as `cart.total()`), the minified name is kept without its receiver (`r.total` →
  `total`): a receiver is the class name, which the minifier renamed, while method and
  property names survive minification. So the names, and with them the groups, stay
  the same from one build to the next.
- `in_app`: false for sources under `node_modules` or webpack's runtime (`webpack/…`),
  else as the minified frame said: a bundle mixes the app's code with its libraries,
  and only the map knows which is which.
- `minified`: the frame as it arrived (file, line, column, function), for display and
  for debugging a map.

A frame is left as it was when it has no line and column, when no map covers its file,
when its position is before the first mapping of its line (the map says nothing about
it), or when it was resolved already. Resolution never fails an event: a map that
cannot answer leaves the frame minified.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import orjson
from symbolic import SourceMapView, SymbolicError
from symbolic.sourcemap import SourceMapTokenMatch

from app.domain.event import EventIn, ExceptionIn, Frame, MinifiedFrame
from app.domain.stacktrace import parse_stacktrace

CONTEXT_LINES = 5
# Positions are 32-bit in symbolic; a larger number is no position in any real file.
_MAX_POSITION = 2**31
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_LIBRARY_SOURCE = re.compile(r"(?:^|/)node_modules/|^webpack/|/webpack/(?:bootstrap|runtime)")


class InvalidSourceMap(ValueError):
    """Bytes that are not a usable source map; the message says why."""


@dataclass(frozen=True)
class LoadedSourceMap:
    """A parsed source map, ready for lookups. Built once per stored map and reused."""

    view: SourceMapView
    sources: tuple[str, ...]

    @classmethod
    def from_bytes(cls, content: bytes) -> LoadedSourceMap:
        """Parse and check `content`; InvalidSourceMap says what is wrong with it."""
        _check_document(content)
        try:
            view = SourceMapView.from_json_bytes(content)
        except SymbolicError as exc:
            raise InvalidSourceMap(f"unreadable source map: {exc}") from None
        if len(view) == 0:
            raise InvalidSourceMap("the source map maps nothing (no mappings)")
        sources = tuple(name or "" for _, name in view.iter_sources())
        return cls(view=view, sources=sources)


def _check_document(content: bytes) -> None:
    """What symbolic does not check: JSON, an object, version 3, mappings or sections.
    A function of its own so that the parsed document (as large as the map) is gone
    before symbolic's view of the map (larger) is built."""
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise InvalidSourceMap(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidSourceMap("not a source map: the JSON is not an object")
    if document.get("version") != 3:
        raise InvalidSourceMap(
            f"not a source map of version 3 (version is {document.get('version')!r})"
        )
    if not isinstance(document.get("mappings"), str) and not isinstance(
        document.get("sections"), list
    ):
        raise InvalidSourceMap("not a source map: it has neither mappings nor sections")


# --- which stored map serves which frame -----------------------------------------------


def _path_of(url: str) -> str:
    """The path of a URL or file name, without scheme, host, query or fragment."""
    if _URL.match(url):
        try:
            return urlsplit(url).path
        except ValueError:
            return url
    return re.split(r"[?#]", url, maxsplit=1)[0]


def stored_key(url: str) -> str:
    """The key an uploaded map's `url` is indexed by.

    A full URL matches that URL (query and fragment aside); `~/static/app.js` (Sentry's
    notation), `/static/app.js` and `static/app.js` match that path on any host; a bare
    name (`app.min.js`) matches any file of that name.
    """
    url = url.strip()
    if _URL.match(url):
        return re.split(r"[?#]", url, maxsplit=1)[0]
    if url.startswith("~/"):
        return url
    if "/" in url:
        return "~/" + url.lstrip("/")
    return url


def lookup_keys(frame_url: str) -> list[str]:
    """The keys a frame's file is looked up by, the most specific first: the URL itself,
    the URL without query and fragment, its path on any host, its file name."""
    keys = [frame_url]
    bare = re.split(r"[?#]", frame_url, maxsplit=1)[0]
    path = _path_of(frame_url)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    keys += [bare, "~/" + path.lstrip("/"), name]
    unique: list[str] = []
    for key in keys:
        if key and key not in unique:
            unique.append(key)
    return unique


def _frame_url(frame: Frame) -> str | None:
    return frame.abs_path or frame.filename


def _resolvable(frame: Frame) -> bool:
    return (
        frame.minified is None
        and frame.lineno is not None
        and frame.colno is not None
        and 0 < frame.lineno < _MAX_POSITION
        and 0 < frame.colno < _MAX_POSITION
        and bool(_frame_url(frame))
    )


def _frames_of(event: EventIn) -> Iterable[Frame]:
    exceptions = event.exceptions
    if not any(exception.frames for exception in exceptions) and event.raw_stacktrace:
        # The ingest service parses the raw text the same way before resolving.
        exceptions = parse_stacktrace(event.raw_stacktrace)
    for exception in exceptions:
        yield from exception.frames


def frame_urls(event: EventIn) -> set[str]:
    """The files of the event's frames that a source map could resolve."""
    return {url for frame in _frames_of(event) if _resolvable(frame) and (url := _frame_url(frame))}


# --- resolution --------------------------------------------------------------------------


def _source_path(source: str) -> str:
    """`webpack://shop/./src/a.js`, `../src/a.js` → `src/a.js`; an http(s) URL → its path."""
    if _URL.match(source):
        parts = urlsplit(source)
        if parts.scheme in {"http", "https"}:
            return parts.path or source
        source = parts.path
    if not source:
        return source
    parts = posixpath.normpath(source.replace("\\", "/")).split("/")
    return "/".join(part for part in parts if part not in {"", ".", ".."}) or source


def _source_url(source: str, minified_url: str) -> str:
    if not source or _URL.match(source):
        return source
    if _URL.match(minified_url):
        return urljoin(minified_url, source)
    if minified_url.startswith("/"):
        return posixpath.normpath(posixpath.join(posixpath.dirname(minified_url), source))
    return source


def _lookup(loaded: LoadedSourceMap, frame: Frame) -> SourceMapTokenMatch | None:
    assert frame.lineno is not None and frame.colno is not None
    line, column = frame.lineno - 1, frame.colno - 1
    try:
        token = loaded.view.lookup(line, column)
    except (SymbolicError, OverflowError, ValueError):
        return None
    # symbolic answers with the nearest mapping before the position, even on an earlier
    # line; only a mapping on the frame's own line says where that code came from.
    if token is None or token.dst_line != line:
        return None
    return token


def _context(
    loaded: LoadedSourceMap, token: SourceMapTokenMatch
) -> tuple[str | None, list[str], list[str]]:
    if token.src_id is None:
        return None, [], []
    try:
        source = loaded.view.get_sourceview(token.src_id)
        if source is None or token.src_line >= len(source):
            return None, [], []
        first = max(0, token.src_line - CONTEXT_LINES)
        end = token.src_line + 1 + CONTEXT_LINES
        lines = [line.rstrip("\r\n") for line in source[first:end]]
        if end >= len(source) and len(lines) > token.src_line - first + 1 and not lines[-1]:
            # The text after a file's final newline, which no editor shows as a line.
            lines.pop()
    except (SymbolicError, IndexError, UnicodeDecodeError):
        return None, [], []
    at = token.src_line - first
    return lines[at], lines[:at], lines[at + 1 :]


def _without_receiver(function: str | None) -> str | None:
    """`r.total` → `total`, `new r` → `r`: the minified name's part minifiers keep."""
    if not function:
        return None
    name = function.removeprefix("new ").removeprefix("async ").strip()
    return name.rsplit(".", 1)[-1] or None


def _resolved_frame(
    frame: Frame, loaded: LoadedSourceMap, token: SourceMapTokenMatch, caller_name: str | None
) -> Frame:
    url = _frame_url(frame) or ""
    source = token.src or ""
    context_line, pre_context, post_context = _context(loaded, token)
    in_app = False if _LIBRARY_SOURCE.search(_source_path(source)) else frame.in_app
    return Frame(
        filename=_source_path(source) or frame.filename,
        abs_path=_source_url(source, url) or frame.abs_path,
        function=token.function_name or caller_name or _without_receiver(frame.function),
        module=frame.module,
        lineno=token.src_line + 1,
        colno=token.src_col + 1,
        in_app=in_app,
        context_line=context_line,
        pre_context=pre_context,
        post_context=post_context,
        vars=frame.vars,
        platform=frame.platform,
        minified=MinifiedFrame(
            filename=frame.filename,
            abs_path=frame.abs_path,
            function=frame.function,
            lineno=frame.lineno,
            colno=frame.colno,
        ),
    )


def _map_for(frame: Frame, maps: Mapping[str, LoadedSourceMap]) -> LoadedSourceMap | None:
    if not _resolvable(frame):
        return None
    url = _frame_url(frame)
    return maps.get(url) if url else None


def resolve_frames(frames: list[Frame], maps: Mapping[str, LoadedSourceMap]) -> list[Frame]:
    """`frames` (outermost first) with every frame a map covers resolved; `maps` is keyed
    by the frames' own file URLs (see `frame_urls`)."""
    tokens: list[tuple[LoadedSourceMap, SourceMapTokenMatch] | None] = []
    for frame in frames:
        loaded = _map_for(frame, maps)
        token = _lookup(loaded, frame) if loaded is not None else None
        tokens.append((loaded, token) if loaded is not None and token is not None else None)
    if not any(tokens):
        return frames
    resolved: list[Frame] = []
    for index, (frame, found) in enumerate(zip(frames, tokens, strict=True)):
        if found is None:
            resolved.append(frame)
            continue
        caller = tokens[index - 1] if index > 0 else None
        caller_name = caller[1].name if caller is not None else None
        resolved.append(_resolved_frame(frame, found[0], found[1], caller_name))
    return resolved


def resolve_event(event: EventIn, maps: Mapping[str, LoadedSourceMap]) -> EventIn:
    """`event` with its frames resolved through `maps` (the same event when none is)."""
    if not maps:
        return event
    exceptions: list[ExceptionIn] = []
    changed = False
    for exception in event.exceptions:
        frames = resolve_frames(exception.frames, maps)
        if frames is not exception.frames:
            changed = True
            exception = exception.model_copy(update={"frames": frames})
        exceptions.append(exception)
    return event.model_copy(update={"exceptions": exceptions}) if changed else event
