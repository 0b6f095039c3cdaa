"""Stack-trace text parsing, checked against traces captured from the real runtimes.

Each `tests/fixtures/stacktraces/NAME.txt` is a trace as a runtime printed it; the
`NAME.json` beside it holds where it came from, the format it must be detected as and
the exact chain it must parse to. The inline cases below cover frame shapes that no
runtime at hand prints any more, and inputs that must not be mistaken for a trace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.domain.event import MAX_FRAMES, ExceptionIn
from app.domain.stacktrace import detect_format, parse_stacktrace

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "stacktraces"
FIXTURE_NAMES = sorted(path.stem for path in FIXTURES.glob("*.txt"))
FRAME_KEYS = ("filename", "abs_path", "function", "lineno", "colno", "in_app", "context_line")


def _as_data(chain: list[ExceptionIn]) -> list[dict[str, Any]]:
    return [
        {
            "type": exc.type,
            "value": exc.value,
            "frames": [{key: getattr(frame, key) for key in FRAME_KEYS} for frame in exc.frames],
        }
        for exc in chain
    ]


def _expected(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def _text(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text(encoding="utf-8")


def test_every_fixture_has_an_expectation() -> None:
    """A trace without its .json would silently test nothing, and so would a lone .json."""
    assert len(FIXTURE_NAMES) >= 30
    assert sorted(path.stem for path in FIXTURES.glob("*.json")) == FIXTURE_NAMES
    prefixes = {name.split("_", 1)[0] for name in FIXTURE_NAMES}
    assert prefixes == {"python", "v8", "firefox", "safari"}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_parses_to_expected_chain(name: str) -> None:
    expected = _expected(name)
    assert expected["exceptions"], "every fixture is a trace that must parse"
    assert _as_data(parse_stacktrace(_text(name))) == expected["exceptions"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_format_is_detected(name: str) -> None:
    expected = _expected(name)
    assert expected["format"] == name.split("_", 1)[0]
    assert detect_format(_text(name)) == expected["format"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_parses_the_same_with_windows_newlines(name: str) -> None:
    text = _text(name)
    assert parse_stacktrace(text.replace("\n", "\r\n")) == parse_stacktrace(text)


# --------------------------------------------------------------------------- shapes


def test_chained_python_exceptions_run_from_root_cause_to_surfaced() -> None:
    chain = parse_stacktrace(_text("python_chained_context"))
    assert [exc.type for exc in chain] == ["KeyError", "shop.errors.OrderNotFound"]
    assert chain[-1].frames[-1].function == "find_order"
    assert chain[-1].frames[-1].context_line == (
        'raise OrderNotFound(f"no order with id {order_id!r}")'
    )


def test_python_caret_lines_never_become_source_lines() -> None:
    for name in ("python_caret_lines_311", "python_caret_lines_313", "python_syntax_error_import"):
        for exc in parse_stacktrace(_text(name)):
            for frame in exc.frames:
                assert frame.context_line is None or not set(frame.context_line) <= set("^~ ")


def test_node_cause_comes_before_the_error_that_wraps_it() -> None:
    chain = parse_stacktrace(_text("v8_node_error_cause"))
    assert [(exc.type, exc.value) for exc in chain] == [
        ("SyntaxError", "Expected property name or '}' in JSON at position 1"),
        ("Error", "could not read order file"),
    ]
    assert chain[0].frames[-1].function == "JSON.parse"
    assert chain[0].frames[-1].in_app is False


def test_url_frames_keep_the_path_as_filename_and_the_url_as_abs_path() -> None:
    frame = parse_stacktrace(_text("firefox_vite_node_modules"))[0].frames[-1]
    assert frame.filename == "/src/components/CartSummary.tsx"
    assert frame.abs_path == "http://localhost:5173/src/components/CartSummary.tsx?t=1718000000000"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "Error: boom\n    at native",
            [(None, "native", None, None, False)],
            id="v8-bare-native",
        ),
        pytest.param(
            "Error: test\n    at Error (native)\n"
            "    at s (blob:http%3A//localhost%3A8080/ab:31:29)",
            [
                ("s", "blob:http%3A//localhost%3A8080/ab", 31, 29, True),
                ("Error", "native", None, None, False),
            ],
            id="v8-native-and-blob",
        ),
        pytest.param(
            "Error: x\n    at async Promise.all (index 0)\n    at async main (/srv/app.js:4:3)",
            [("main", "/srv/app.js", 4, 3, True), ("Promise.all", None, None, None, False)],
            id="v8-promise-all-index",
        ),
        pytest.param(
            "Error: x\n    at I.e.fn.(anonymous function) [as index] (http://h/file.js:10:3651)",
            [("I.e.fn.(anonymous function) [as index]", "/file.js", 10, 3651, True)],
            id="v8-parentheses-in-name",
        ),
        pytest.param(
            "Error: x\n    at eval (eval at <anonymous> (/app/x.js:1:1), <anonymous>:1:1)",
            [("eval", "/app/x.js", 1, 1, True)],
            id="v8-eval-at-anonymous",
        ),
        pytest.param(
            "Error: message string\n"
            "at baz (eval at foo (eval at speak (http://localhost:8080/file.js:21:17)), "
            "<anonymous>:1:30)",
            [("baz", "/file.js", 21, 17, True)],
            id="v8-nested-eval",
        ),
        pytest.param(
            "Error: x\n    at eval (eval at run (<anonymous>), <anonymous>:2:5)",
            [("eval", "<anonymous>", 2, 5, True)],
            id="v8-eval-without-origin",
        ),
        pytest.param(
            "Error: foo\n    at foo (http://example.com/js/file.js:4283)\n    at file:///srv/js/file.js:878",
            [
                (None, "/srv/js/file.js", 878, None, True),
                ("foo", "/js/file.js", 4283, None, True),
            ],
            id="v8-no-column",
        ),
        pytest.param(
            "Error: x\n    at render (C:\\shop\\src\\view.js:3:7)\n"
            "    at Object.<anonymous> (C:\\shop\\node_modules\\lib\\index.js:1:1)",
            [
                ("Object.<anonymous>", "C:\\shop\\node_modules\\lib\\index.js", 1, 1, False),
                ("render", "C:\\shop\\src\\view.js", 3, 7, True),
            ],
            id="v8-windows-paths",
        ),
        pytest.param(
            "Error: x\n    at Module._compile (internal/modules/cjs/loader.js:999:30)\n"
            "    at go (/srv/app.js:1:2)",
            [
                ("go", "/srv/app.js", 1, 2, True),
                ("Module._compile", "internal/modules/cjs/loader.js", 999, 30, False),
            ],
            id="v8-old-node-internal",
        ),
        pytest.param(
            "Error: x\n    at <anonymous>:3:7\n    at new Promise (<anonymous>)",
            [("new Promise", "<anonymous>", None, None, False), (None, "<anonymous>", 3, 7, True)],
            id="v8-anonymous-script",
        ),
        pytest.param(
            "schedule/<@https://cdn.example.com/npm/monaco-editor@0.52.2/min/editor.js:122:16400\n"
            "setTimeout handler*schedule@https://cdn.example.com/npm/monaco-editor@0.52.2/min/editor.js:122:16211\n"
            "promise callback*run@https://app.example.com/main.js:7:3",
            [
                ("run", "/main.js", 7, 3, True),
                ("schedule", "/npm/monaco-editor@0.52.2/min/editor.js", 122, 16211, True),
                ("schedule/<", "/npm/monaco-editor@0.52.2/min/editor.js", 122, 16400, True),
            ],
            id="firefox-async-causes-and-at-in-url",
        ),
        pytest.param(
            "./node_modules/@scope/pkg/lib/refresh.js/enqueue<@http://localhost:3000/bundle.js:18:17\n"
            "get total@http://localhost:3000/bundle.js:1:25",
            [
                ("get total", "/bundle.js", 1, 25, True),
                ("./node_modules/@scope/pkg/lib/refresh.js/enqueue<", "/bundle.js", 18, 17, True),
            ],
            id="firefox-at-in-function-name-and-getter",
        ),
        pytest.param(
            "@http://localhost:8080/file.js line 26 > eval line 2 > eval:1:30\n"
            "@debugger eval code:1:7\n"
            "render@resource://app/content/bundle.js:5529:16",
            [
                ("render", "/content/bundle.js", 5529, 16, True),
                (None, "debugger eval code", 1, 7, True),
                (None, "/file.js", 26, None, True),
            ],
            id="firefox-nested-eval-and-console",
        ),
        pytest.param(
            "http://example.com/js/file.js:47:22\nfoo@http://example.com/js/file.js:52:15\n"
            "eval code\neval@[native code]\n[native code]",
            [
                (None, "[native code]", None, None, False),
                ("eval", "[native code]", None, None, False),
                ("eval code", None, None, None, True),
                ("foo", "/js/file.js", 52, 15, True),
                (None, "/js/file.js", 47, 22, True),
            ],
            id="safari-bare-location-and-eval-code",
        ),
    ],
)
def test_frame_shapes(
    text: str, expected: list[tuple[str | None, str | None, int | None, int | None, bool]]
) -> None:
    """Frames come back outermost first: (function, filename, lineno, colno, in_app)."""
    [exc] = parse_stacktrace(text)
    assert [
        (frame.function, frame.filename, frame.lineno, frame.colno, frame.in_app)
        for frame in exc.frames
    ] == expected


@pytest.mark.parametrize(
    ("text", "error_type", "value"),
    [
        pytest.param(
            "Uncaught (in promise) Error: nope\n    at f (/a.js:1:1)",
            "Error",
            "nope",
            id="in-promise",
        ),
        pytest.param("Error\n    at f (/a.js:1:1)", "Error", None, id="type-only"),
        pytest.param(
            "Error: first line\nsecond line\n    at f (/a.js:1:1)",
            "Error",
            "first line\nsecond line",
            id="multi-line",
        ),
        pytest.param("    at f (/a.js:1:1)\n    at g (/a.js:2:1)", None, None, id="no-header"),
        pytest.param(
            "NS_ERROR_FAILURE: \n@file:///path/index.html:23:1",
            "NS_ERROR_FAILURE",
            None,
            id="empty-message",
        ),
        pytest.param(
            "log line before\n  Traceback (most recent call last):\n"
            '    File "/srv/app.py", line 2, in run\n      go()\n  RuntimeError: indented',
            "RuntimeError",
            "indented",
            id="python-indented-in-a-log",
        ),
    ],
)
def test_headers(text: str, error_type: str | None, value: str | None) -> None:
    [exc] = parse_stacktrace(text)
    assert (exc.type, exc.value) == (error_type, value)


def test_python_exception_group_sub_exceptions_precede_their_group() -> None:
    chain = parse_stacktrace(_text("python_exception_group"))
    assert [(exc.type, exc.value) for exc in chain] == [
        ("ValueError", "negative: -2"),
        ("ZeroDivisionError", "division by zero"),
        ("ExceptionGroup", "inner (2 sub-exceptions)"),
        ("ValueError", "negative: -1"),
        ("TypeError", "bad config"),
        ("ExceptionGroup", "several checks failed (2 sub-exceptions)"),
    ]


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("Traceback (most recent call last):\n", "python"),
        ('  File "x.py", line 3, in f\n', "python"),
        ("TestError: This is a test\n    at test.js:1:1", "v8"),
        ("foo@http://x/a.js:1:2\n@http://x/a.js:3:4", "firefox"),
        ("foo@http://x/a.js line 4 > Function:1:2", "firefox"),
        ("foo@http://x/a.js:1:2\nglobal code@http://x/a.js:3:4", "safari"),
        ("foo@http://x/a.js:1:2\nmap@[native code]", "safari"),
        ("module code@/srv/a.mjs:1:2", "safari"),
    ],
)
def test_detect_format(text: str, fmt: str) -> None:
    assert detect_format(text) == fmt


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\n\t",
        "hello world",
        "...",
        "TypeError: boom",
        "Uncaught TypeError: Cannot read properties of undefined (reading 'x')",
        "Traceback (most recent call last):",
        "see you at the station (platform 3)",
        "meet me at 10:30",
        "write to support@example.com or admin@example.com:8080 for help",
        "Error: connection refused\nretrying in 5s\nError: gave up",
        "2024-05-01 12:00:00 INFO started\n2024-05-01 12:00:01 WARN slow: 1200ms",
        "\x00\x01\x02 binary \xff junk @ :::: at ( ) [native",
    ],
)
def test_text_that_is_not_a_stack_gives_nothing(text: str) -> None:
    assert parse_stacktrace(text) == []


@pytest.mark.parametrize(
    "text",
    ["", "hello world", "...", "TypeError: boom", "see you at the station", "a@b"],
)
def test_text_that_is_not_a_stack_has_no_format(text: str) -> None:
    assert detect_format(text) is None


# --------------------------------------------------------------------------- size


def test_huge_python_traceback_keeps_both_ends() -> None:
    """100k lines parse in one pass; the event's frame cap keeps head and tail."""
    depth = 50_000
    lines = ["Traceback (most recent call last):"]
    for number in range(1, depth + 1):
        lines.append(f'  File "/srv/app/deep.py", line {number}, in level_{number}')
        lines.append(f"    level_{number + 1}()")
    lines.append("RecursionError: maximum recursion depth exceeded")
    assert len(lines) == 100_002

    [exc] = parse_stacktrace("\n".join(lines))

    assert exc.type == "RecursionError"
    assert len(exc.frames) == MAX_FRAMES
    head = MAX_FRAMES // 5
    assert [f.lineno for f in exc.frames[:head]] == list(range(1, head + 1))
    tail = MAX_FRAMES - head
    assert [f.lineno for f in exc.frames[head:]] == list(range(depth - tail + 1, depth + 1))
    assert exc.frames[-1].context_line == f"level_{depth + 1}()"


def test_huge_v8_trace_keeps_both_ends() -> None:
    depth = 100_000
    frames = [f"    at fn{n} (/srv/app/deep.js:{n}:1)" for n in range(depth, 0, -1)]
    [exc] = parse_stacktrace("RangeError: Maximum call stack size exceeded\n" + "\n".join(frames))
    assert (exc.type, exc.value) == ("RangeError", "Maximum call stack size exceeded")
    assert len(exc.frames) == MAX_FRAMES
    assert exc.frames[0].function == "fn1"
    assert exc.frames[-1].function == f"fn{depth}"
    assert exc.frames[-1].lineno == depth


def test_huge_garbage_and_long_lines_give_nothing() -> None:
    assert parse_stacktrace("not a frame: just words\n" * 100_000) == []
    assert parse_stacktrace("x" * 1_000_000) == []
    assert parse_stacktrace(("a:1:" * 200_000) + " @ at (" * 1000) == []
    for line in ("." * 1_000_000, "@" * 200_000, "a.b:" * 200_000, "at " + "(" * 200_000):
        assert parse_stacktrace(line) == []
