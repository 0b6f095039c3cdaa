"""Source-map resolution over the committed builds in tests/fixtures/sourcemaps (two
minifiers, one source; see its README)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from app.domain.event import EventIn, ExceptionIn, Frame
from app.domain.grouping import grouping_for_event
from app.domain.sourcemap import (
    InvalidSourceMap,
    LoadedSourceMap,
    frame_urls,
    lookup_keys,
    resolve_event,
    stored_key,
)
from app.domain.stacktrace import parse_stacktrace

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sourcemaps"
BUILDS = ["esbuild", "terser"]
BUNDLE_URL = "https://shop.example.com/static/app.min.js"


def loaded(build: str) -> LoadedSourceMap:
    return LoadedSourceMap.from_bytes((FIXTURES / build / "app.min.js.map").read_bytes())


def minified_event(build: str) -> EventIn:
    stack = (FIXTURES / build / "stack.txt").read_text()
    return EventIn(exceptions=parse_stacktrace(stack), platform="javascript", release="1.0")


def resolved_event(build: str) -> EventIn:
    event = minified_event(build)
    return resolve_event(event, {BUNDLE_URL: loaded(build)})


def source_line(name: str, lineno: int) -> str:
    return (FIXTURES / "src" / name).read_text().splitlines()[lineno - 1]


@pytest.mark.parametrize("build", BUILDS)
def test_frames_resolve_to_the_original_source(build: str):
    frames = resolved_event(build).exceptions[-1].frames
    bundle = [frame for frame in frames if frame.minified is not None]
    assert [(f.function, f.filename, f.lineno, f.colno) for f in bundle] == [
        ("_onTimeout", "src/main.js", 13, 3),
        ("onCheckoutClick", "src/main.js", 7, 19),
        ("formatReceipt", "src/receipt.js", 4, 22),
        ("total", "src/cart.js", 11, 14),
        ("lineTotal", "src/cart.js", 19, 11),
    ]
    crash = bundle[-1]
    assert crash.abs_path == "https://shop.example.com/src/cart.js"
    assert crash.in_app is True
    assert crash.context_line == source_line("cart.js", 19)
    assert crash.pre_context == [source_line("cart.js", n) for n in range(14, 19)]
    assert crash.post_context == [source_line("cart.js", n) for n in range(20, 23)]
    # The minified frame is kept as it arrived.
    assert crash.minified is not None
    assert crash.minified.abs_path == BUNDLE_URL
    assert crash.minified.filename == "/static/app.min.js"
    assert crash.minified.lineno == 1
    assert crash.minified.function in {"i", "n"}
    # Node's own frames have no map: untouched.
    assert [f.filename for f in frames if f.minified is None] == ["node:internal/timers"] * 2


def test_two_builds_group_together_only_when_resolved():
    minified = [grouping_for_event(minified_event(build)) for build in BUILDS]
    resolved = [grouping_for_event(resolved_event(build)) for build in BUILDS]
    assert minified[0].hash != minified[1].hash
    assert resolved[0].hash == resolved[1].hash
    assert (
        "formatReceipt (receipt.js) → total (cart.js) → lineTotal (cart.js)" in resolved[0].reason
    )


def test_a_raw_stack_names_its_files():
    event = EventIn(raw_stacktrace=(FIXTURES / "esbuild" / "stack.txt").read_text())
    assert BUNDLE_URL in frame_urls(event)


def test_frames_without_a_map_or_a_column_stay_as_they_are():
    frames = [
        Frame(abs_path=BUNDLE_URL, filename="/static/app.min.js", function="i", lineno=1),
        Frame(abs_path="https://cdn.example.com/vendor.js", function="x", lineno=1, colno=5),
        # Line 2 of a one-line bundle: symbolic would answer with line 1's last mapping.
        Frame(abs_path=BUNDLE_URL, function="i", lineno=2, colno=1),
        Frame(abs_path=BUNDLE_URL, function="i", lineno=0, colno=-4),
    ]
    event = EventIn(exceptions=[ExceptionIn(type="Error", frames=frames)])
    assert resolve_event(event, {BUNDLE_URL: loaded("esbuild")}) is event


def test_resolving_twice_changes_nothing():
    once = resolved_event("esbuild")
    assert resolve_event(once, {BUNDLE_URL: loaded("esbuild")}) is once


def test_caller_names_the_function_and_a_library_source_is_not_in_app():
    """A hand-made map: line 1 col 1 is inside a library, line 1 col 11 calls `doWork`
    (minified `a`) from the app."""
    document = {
        "version": 3,
        "sources": ["webpack://shop/./node_modules/lib/index.js", "webpack://shop/./src/app.js"],
        "sourcesContent": ["export function doWork() {\n  throw new Error('x');\n}\n", None],
        "names": ["doWork"],
        # [0,0]→lib 2:2 ; [0,10]→app 5:4 named doWork
        "mappings": "AACE,UCGEA",
    }
    source_map = LoadedSourceMap.from_bytes(orjson.dumps(document))
    url = "https://shop.example.com/app.js"
    frames = [
        Frame(abs_path=url, function="Object.run", lineno=1, colno=11, in_app=True),
        Frame(abs_path=url, function="t.a", lineno=1, colno=1, in_app=True),
    ]
    event = EventIn(exceptions=[ExceptionIn(type="Error", frames=frames)])
    outer, inner = resolve_event(event, {url: source_map}).exceptions[0].frames
    assert (inner.function, inner.filename, inner.lineno, inner.colno) == (
        "doWork",
        "node_modules/lib/index.js",
        2,
        3,
    )
    assert inner.in_app is False
    assert inner.context_line == "  throw new Error('x');"
    assert (outer.function, outer.filename, outer.abs_path) == (
        "run",
        "src/app.js",
        "webpack://shop/./src/app.js",
    )
    assert outer.in_app is True
    assert outer.context_line is None  # no sourcesContent for it


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not JSON"),
        (b"[]", "not an object"),
        (b'{"version": 2, "mappings": ""}', "version 3"),
        (b'{"version": 3}', "neither mappings nor sections"),
        (b'{"version": 3, "sources": ["a.js"], "mappings": "AAAA,!!!"}', "unreadable"),
        (b'{"version": 3, "sources": [], "mappings": ""}', "maps nothing"),
    ],
)
def test_what_is_not_a_source_map(content: bytes, reason: str):
    with pytest.raises(InvalidSourceMap, match=reason):
        LoadedSourceMap.from_bytes(content)


def test_sources_are_listed():
    assert loaded("terser").sources == ("../src/cart.js", "../src/receipt.js", "../src/main.js")


@pytest.mark.parametrize(
    ("stored", "frame", "matches"),
    [
        (BUNDLE_URL, BUNDLE_URL, True),
        (BUNDLE_URL, BUNDLE_URL + "?v=3#x", True),
        (BUNDLE_URL, "https://cdn.example.com/static/app.min.js", False),
        ("~/static/app.min.js", "https://cdn.example.com/static/app.min.js", True),
        ("/static/app.min.js", "https://cdn.example.com/static/app.min.js?v=2", True),
        ("static/app.min.js", "https://cdn.example.com/static/app.min.js", True),
        ("~/static/app.min.js", "https://cdn.example.com/other/app.min.js", False),
        ("app.min.js", "https://cdn.example.com/other/app.min.js", True),
        ("app.min.js", "https://cdn.example.com/other/vendor.min.js", False),
        ("/srv/app/dist/server.js", "/srv/app/dist/server.js", True),
        ("server.js", "file:///srv/app/dist/server.js", True),
    ],
)
def test_which_stored_url_serves_which_frame(stored: str, frame: str, matches: bool):
    assert (stored_key(stored) in lookup_keys(frame)) is matches


def test_the_most_specific_key_comes_first():
    assert lookup_keys(BUNDLE_URL + "?v=1") == [
        BUNDLE_URL + "?v=1",
        BUNDLE_URL,
        "~/static/app.min.js",
        "app.min.js",
    ]
