"""Grouping decides which issue an event joins; these tests pin what must merge and split.

Pairs of events live in tests/fixtures/grouping/, one JSON file each, named
`together__<what it shows>.json` (the two events must share a hash) or
`apart__<what it shows>.json` (they must not). A file may name a `strategy` and a
`project_id`, and may pin the exact `reasons`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from app.domain.event import EventIn, ExceptionIn, Frame
from app.domain.grouping import (
    STRATEGIES,
    Grouping,
    grouping_for_event,
    in_app_frames,
    normalize_message,
    title_and_culprit,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "grouping"
PAIRS = sorted(FIXTURES.glob("*.json"))


def frame(function: str | None, filename: str | None, lineno: int = 1, **fields: Any) -> Frame:
    return Frame(function=function, filename=filename, lineno=lineno, **fields)


def error(
    frames: list[Frame], type_: str | None = "TypeError", value: str = "boom", **fields: Any
) -> EventIn:
    return EventIn(exceptions=[ExceptionIn(type=type_, value=value, frames=frames)], **fields)


def app_stack() -> list[Frame]:
    """Outermost first: a library frame, four in-app frames, a library frame at the top."""
    return [
        frame("Layer.handle", "node_modules/express/lib/router/layer.js", 95, in_app=False),
        frame("main", "src/server.js", 12, in_app=True),
        frame("handleRequest", "src/api.js", 40, in_app=True),
        frame("loadOrder", "src/orders.js", 88, in_app=True),
        frame("processData", "src/utils.js", 17, in_app=True),
        frame("baseGet", "node_modules/lodash/lodash.js", 3104, in_app=False),
    ]


def group(event: EventIn, **options: Any) -> Grouping:
    return grouping_for_event(event, **options)


# --- fixture pairs ---------------------------------------------------------------------


@pytest.mark.parametrize("path", PAIRS, ids=lambda path: path.stem)
def test_fixture_pair(path: Path):
    spec = json.loads(path.read_text())
    strategy = spec.get("strategy", "frames")
    project_id = spec.get("project_id", "")
    first = group(EventIn.model_validate(spec["a"]), strategy=strategy, project_id=project_id)
    second = group(EventIn.model_validate(spec["b"]), strategy=strategy, project_id=project_id)

    expectation = path.stem.split("__", 1)[0]
    if expectation == "together":
        assert first.hash == second.hash, spec["why"]
    elif expectation == "apart":
        assert first.hash != second.hash, spec["why"]
    else:
        pytest.fail(f"{path.name} must start with together__ or apart__")
    assert first.strategy == second.strategy == f"{strategy}:1"
    if "reasons" in spec:
        assert first.reason == spec["reasons"]["a"]
        assert second.reason == spec["reasons"]["b"]


def test_fixtures_hold_both_kinds_of_pair():
    kinds = Counter(path.stem.split("__", 1)[0] for path in PAIRS)
    assert kinds == Counter({"together": 14, "apart": 9})


# --- frames strategy -------------------------------------------------------------------


def test_frames_hash_is_stable_across_releases():
    """Changing this hash means changing what `frames:1` computes: bump the version."""
    event = error(
        [
            frame("main", "src/server.js", 1, in_app=True),
            frame("handleRequest", "src/api.js", 2, in_app=True),
            frame("processData", "src/utils.js", 3, in_app=True),
        ]
    )
    payload = (
        '["frames","TypeError",'
        '[["main","server.js"],["handleRequest","api.js"],["processData","utils.js"]]]'
    )
    assert group(event) == Grouping(
        hash="fefb2677b7981b8953fe128d8390b6c2",
        strategy="frames:1",
        reason=(
            "exception type TypeError + 3 in-app frames, innermost last: "
            "main (server.js) → handleRequest (api.js) → processData (utils.js)"
        ),
    )
    assert group(event).hash == hashlib.sha256(payload.encode()).hexdigest()[:32]


@pytest.mark.parametrize("index", range(6))
def test_moving_any_frame_to_another_line_or_column_keeps_the_group(index: int):
    moved = app_stack()
    moved[index] = moved[index].model_copy(update={"lineno": 999, "colno": 42})
    assert group(error(moved)).hash == group(error(app_stack())).hash


@pytest.mark.parametrize(("index", "same"), [(1, True), (2, False), (3, False), (4, False)])
def test_only_the_three_innermost_in_app_functions_count(index: int, same: bool):
    renamed = app_stack()
    renamed[index] = renamed[index].model_copy(update={"function": "renamed"})
    assert (group(error(renamed)).hash == group(error(app_stack())).hash) is same


@pytest.mark.parametrize(("index", "same"), [(0, True), (1, True), (4, False), (5, True)])
def test_library_and_outer_frames_files_do_not_count(index: int, same: bool):
    moved = app_stack()
    moved[index] = moved[index].model_copy(update={"filename": "elsewhere/other.js"})
    assert (group(error(moved)).hash == group(error(app_stack())).hash) is same


def test_exception_value_does_not_count_when_there_is_a_stack():
    assert group(error(app_stack(), value="a")).hash == group(error(app_stack(), value="b")).hash


def test_frames_without_function_or_file_are_ignored():
    noisy = [*app_stack(), Frame(lineno=7, colno=3, in_app=True), Frame(in_app=True)]
    assert group(error(noisy)) == group(error(app_stack()))


def test_only_the_primary_exception_type_counts_in_a_chain():
    def chained(cause: str) -> EventIn:
        return EventIn(
            exceptions=[
                ExceptionIn(type=cause, value="inner", frames=[frame("connect", "db.js")]),
                ExceptionIn(type="OrderError", value="outer", frames=app_stack()),
            ]
        )

    assert group(chained("ECONNRESET")).hash == group(chained("ETIMEDOUT")).hash
    assert group(chained("ECONNRESET")).reason.startswith("exception type OrderError + ")


def test_frames_come_from_the_nearest_exception_in_the_chain_that_has_them():
    event = EventIn(
        exceptions=[
            ExceptionIn(type="IOError", frames=[frame("read", "io.js", in_app=True)]),
            ExceptionIn(type="OrderError", value="wrapped"),
        ]
    )
    assert group(event).reason == (
        "exception type OrderError + 1 in-app frame, innermost last: read (io.js)"
    )


def test_python_frames_use_the_module_and_others_the_file():
    python = error(
        [frame("charge", "/srv/a/shop/billing.py", module="shop.billing")],
        type_="ValueError",
        platform="python",
    )
    node = error([frame("charge", "/srv/a/shop/billing.js", module="shop:billing")])
    by_extension = error([frame("charge", "/srv/a/shop/billing.py", module="shop.billing")])
    assert group(python).reason == (
        "exception type ValueError + 1 frame (in-app not marked), innermost last: "
        "charge (shop.billing)"
    )
    assert group(node).reason.endswith(": charge (billing.js)")
    assert group(by_extension).reason.endswith(": charge (shop.billing)")


@pytest.mark.parametrize(
    "filename",
    [
        "https://cdn.example.com/static/js/app.3f2a1b.js?v=2",
        "https://other.example.org/app.js#frag",
        "app:///static/js/app.js",
        "webpack:///./src/app.js",
        "/srv/releases/42/public/app.js",
        "C:\\build\\out\\app-9c8d7e0f.js",
        "app.js",
    ],
)
def test_files_are_compared_by_name_without_host_query_or_build_hash(filename: str):
    assert group(error([frame("run", filename)])).reason == (
        "exception type TypeError + 1 frame (in-app not marked), innermost last: run (app.js)"
    )


@pytest.mark.parametrize(
    ("filename", "key"),
    [
        ("jquery-3.6.0.min.js", "jquery-3.6.0.min.js"),
        ("vendor-chunk.js", "vendor-chunk.js"),
        ("main.8e0c44a1.chunk.js", "main.chunk.js"),
        ("index-BfR3x9aZ.js", "index.js"),
    ],
)
def test_only_hash_like_segments_are_stripped_from_file_names(filename: str, key: str):
    assert group(error([frame("run", filename)])).reason.endswith(f": run ({key})")


def test_in_app_frames_prefers_frames_marked_in_app():
    stack = app_stack()
    assert in_app_frames(stack) == stack[1:5]


def test_in_app_frames_without_marks_takes_everything_not_marked_as_library():
    stack = [
        frame("a", "a.js"),
        frame("b", "node_modules/b.js", in_app=False),
        frame("c", "c.js"),
    ]
    assert in_app_frames(stack) == [stack[0], stack[2]]


def test_in_app_frames_when_all_are_library_takes_them_all():
    stack = [frame("a", "node_modules/a.js", in_app=False), frame("b", "b.js", in_app=False)]
    assert in_app_frames(stack) == stack
    assert group(error(stack)).reason == (
        "exception type TypeError + 2 frames (none in-app), innermost last: a (a.js) → b (b.js)"
    )


def test_in_app_frames_drops_frames_without_function_or_file():
    kept = [frame(None, "a.js", in_app=True), frame("b", None, in_app=True)]
    stack = [Frame(lineno=3, in_app=True), *kept, Frame(colno=9)]
    assert in_app_frames(stack) == kept
    assert in_app_frames([]) == []


def test_reason_without_exception_type_or_function():
    event = error([frame(None, "lib.js"), frame("run", None)], type_=None)
    assert group(event).reason == (
        "no exception type + 2 frames (in-app not marked), innermost last: ? (lib.js) → run"
    )


# --- no stack --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        (
            "Connection to 10.0.0.12 timed out after 30s",
            "Connection to <ip> timed out after <int>s",
        ),
        (
            "load -0.75 and -4 and 2.5e10 and 1.2.3",
            "load <float> and <int> and <float> and <float>",
        ),
        ("User 8F14E45F-CEEA-467F-A0E8-123456789ABC gone", "User <uuid> gone"),
        ("ptr 0x7ffd1f, object 5f8d0d55b54764421b7156c3", "ptr <hex>, object <hex>"),
        ("order 12345678 and deadbeef stay", "order <int> and deadbeef stay"),
        ("hosts fe80::1, 2001:db8::8a2e:370:7334, ::ffff:192.168.0.1", "hosts <ip>, <ip>, <ip>"),
        ("Foo::Bar and std::vector at 10:32:01", "Foo::Bar and std::vector at <int>:<int>:<int>"),
        ("from bob.smith+x@example.co.uk", "from <email>"),
        (
            "at 2024-03-01T10:00:00.123Z, 2024-03-01 10:00 and 2024-03-01",
            "at <date>, <date> and <date>",
        ),
        (
            "can't find 'foo' in \"bar\" or `baz`; users' data",
            "can't find <quoted> in <quoted> or <quoted>; users' data",
        ),
        ("GET https://api.example.com/v1/users?id=3. failed", "GET <url>. failed"),
        (
            "open /var/log/app/2024.log, ./src/a.py and C:\\Temp\\x.txt",
            "open <path>, <path> and <path>",
        ),
        ("share \\\\fileserver\\docs\\a.txt missing", "share <path> missing"),
        ("I/O error and/or 1/2 on GET /api/users/42", "I/O error and/or <int>/<int> on GET <path>"),
        ("utf8 item_42 order-1234 x=-7", "utf8 item_42 order-<int> x=<int>"),
        ("  lots   of\n\n whitespace\t", "lots of whitespace"),
        ("", ""),
    ],
)
def test_normalize_message(text: str, normalised: str):
    assert normalize_message(text) == normalised


def test_normalize_message_replaces_whole_values_before_their_parts():
    # A UUID is not a run of hex and numbers, a URL is not a path, a quoted value is one.
    assert normalize_message("id 123e4567-e89b-12d3-a456-426614174000") == "id <uuid>"
    assert normalize_message("see https://x.io/a/b/c.py") == "see <url>"
    assert normalize_message("key '10.0.0.1:80/x'") == "key <quoted>"
    assert normalize_message("file /data/2024-01-01/0xff.bin") == "file <path>"


def test_message_event_groups_by_normalised_message():
    event = EventIn(type="message", message="Disk 93% full on /dev/sda1")
    assert group(event) == Grouping(
        hash="76753106914ae2f97a814ffda86cb207",
        strategy="frames:1",
        reason="no stack: normalised message 'Disk <int>% full on <path>'",
    )
    assert group(EventIn(type="message", message="Disk 12% full on /dev/nvme0n1")) == group(event)


def test_message_wins_over_exception_value_without_stack():
    event = EventIn(message="Payment 42 failed", exceptions=[ExceptionIn(type="E", value="x")])
    assert group(event).reason == "no stack: type E + normalised message 'Payment <int> failed'"


def test_type_without_message():
    event = EventIn(exceptions=[ExceptionIn(type="SystemExit")], raw_stacktrace="???")
    assert group(event).reason == "stack trace not parsed: type SystemExit + no message"


def test_raw_stack_text_is_the_last_resort():
    first = EventIn(exceptions=[ExceptionIn()], raw_stacktrace="fault in module 12\n  at x+0x1f")
    second = EventIn(exceptions=[ExceptionIn()], raw_stacktrace="fault in module 99  at x+0x20")
    other = EventIn(exceptions=[ExceptionIn()], raw_stacktrace="panic in module 12")
    assert group(first).reason == (
        "stack trace not parsed: normalised raw stack trace 'fault in module <int> at x+<hex>'"
    )
    assert group(first).hash == group(second).hash
    assert group(first).hash != group(other).hash


def test_nothing_at_all_groups_as_empty():
    event = EventIn(exceptions=[ExceptionIn(value="   ")])
    assert group(event).reason == "no stack: nothing else to go on, '<empty>'"
    assert group(event).hash == group(EventIn(type="log")).hash


def test_long_messages_are_shortened_in_the_reason_only():
    long_a = EventIn(type="message", message="word " * 100 + "a")
    long_b = EventIn(type="message", message="word " * 100 + "b")
    reason = group(long_a).reason
    assert reason == "no stack: normalised message '" + ("word " * 24)[:119] + "…'"
    assert group(long_a).hash != group(long_b).hash


# --- client fingerprint ----------------------------------------------------------------


def test_fingerprint_without_default_replaces_grouping():
    first = error(app_stack(), fingerprint=["billing", "card-declined"])
    second = EventIn(type="message", message="other", fingerprint=["billing", "card-declined"])
    assert group(first) == group(second)
    assert group(first).reason == "client fingerprint ['billing', 'card-declined']"
    assert group(first).hash != group(error(app_stack())).hash
    assert len(group(first).hash) == 32


@pytest.mark.parametrize("spelling", ["{{ default }}", "{{default}}", "  {{   default\t}} "])
def test_fingerprint_default_stands_for_the_default_hash(spelling: str):
    plain = group(error(app_stack()))
    assert group(error(app_stack(), fingerprint=[spelling])).hash == plain.hash
    with_prefix = group(error(app_stack(), fingerprint=["checkout", spelling]))
    assert (
        with_prefix.hash
        == group(error(app_stack(), fingerprint=["checkout", "{{ default }}"])).hash
    )
    assert with_prefix.hash != plain.hash
    assert with_prefix.hash != group(error(app_stack(), fingerprint=["checkout"])).hash


def test_fingerprint_reasons_name_the_client_list_and_the_default():
    prefixed = group(error(app_stack(), fingerprint=["checkout", "{{ default }}"]))
    only_default = group(error(app_stack(), fingerprint=["{{default}}"]))
    default_reason = group(error(app_stack())).reason
    assert prefixed.reason == (
        f"client fingerprint ['checkout', '{{{{ default }}}}'], where {{{{ default }}}} is "
        f"{default_reason}"
    )
    assert only_default.reason == (
        f"client fingerprint ['{{{{default}}}}'] is the default: {default_reason}"
    )


def test_empty_fingerprint_is_no_fingerprint():
    assert group(error(app_stack(), fingerprint=[])) == group(error(app_stack()))


# --- location strategy -----------------------------------------------------------------


def test_location_is_the_documented_md5_of_the_innermost_frame():
    event = error(
        [frame("main", "app/server.rb", 10), frame("create", "app/orders.rb", 42)],
        type_="NoMethodError",
    )
    expected = hashlib.md5(b"7:NoMethodError:app/orders.rb:42").hexdigest()
    assert group(event, strategy="location", project_id=7) == Grouping(
        hash=expected,
        strategy="location:1",
        reason=(
            "exception type NoMethodError + innermost frame at app/orders.rb:42 "
            "(line numbers count)"
        ),
    )
    assert group(event, strategy="location", project_id="7").hash == expected


def test_location_changes_with_the_line_file_type_and_project():
    def located(filename: str = "a.py", lineno: int = 5, type_: str = "E", project: int = 1):
        event = error([frame("f", filename, lineno)], type_=type_)
        return group(event, strategy="location", project_id=project).hash

    base = located()
    assert located(lineno=6) != base
    assert located(filename="b.py") != base
    assert located(type_="F") != base
    assert located(project=2) != base


def test_location_uses_the_filename_as_given_and_empty_strings_when_missing():
    given = error([frame("f", "https://x.io/app.js?v=1", 3)])
    no_line = error([Frame(function="f", abs_path="/srv/app.py")], type_=None)
    assert group(given, strategy="location", project_id=1).hash == (
        hashlib.md5(b"1:TypeError:https://x.io/app.js?v=1:3").hexdigest()
    )
    assert group(no_line, strategy="location", project_id=1).hash == (
        hashlib.md5(b"1::/srv/app.py:").hexdigest()
    )
    assert group(no_line, strategy="location").reason == (
        "no exception type + innermost frame at /srv/app.py:? (line numbers count)"
    )


def test_location_without_frames_falls_back_to_type_and_normalised_message():
    event = EventIn(exceptions=[ExceptionIn(type="Timeout", value="after 30s on 10.0.0.1")])
    assert group(event, strategy="location", project_id=3) == Grouping(
        hash=hashlib.md5(b"3:Timeout:after <int>s on <ip>").hexdigest(),
        strategy="location:1",
        reason="no stack: type Timeout + normalised message 'after <int>s on <ip>'",
    )


def test_location_honours_the_client_fingerprint():
    event = error([frame("f", "a.py", 5)], fingerprint=["x", "{{ default }}"])
    located = group(event, strategy="location", project_id=1)
    default_hash = hashlib.md5(b"1:TypeError:a.py:5").hexdigest()
    assert (
        located.hash == hashlib.md5(f'["fingerprint",["x","{default_hash}"]]'.encode()).hexdigest()
    )
    assert located.strategy == "location:1"


# --- registry --------------------------------------------------------------------------


def test_registry_holds_the_current_version_of_each_strategy():
    assert {name: strategy.id for name, strategy in STRATEGIES.items()} == {
        "frames": "frames:1",
        "location": "location:1",
    }


def test_strategy_can_be_named_by_its_current_id():
    assert group(error(app_stack()), strategy="frames:1") == group(error(app_stack()))


@pytest.mark.parametrize("name", ["frames:2", "stack", ""])
def test_unknown_strategy_is_refused(name: str):
    with pytest.raises(ValueError) as raised:
        group(error(app_stack()), strategy=name)
    assert str(raised.value) == f"unknown grouping strategy {name!r}; known: frames, location"


# --- title and culprit -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "title", "culprit"),
    [
        (
            error(app_stack(), value="Cannot read property 'foo' of undefined"),
            "TypeError: Cannot read property 'foo' of undefined",
            "processData (utils.js)",
        ),
        (
            error([frame("run", "https://cdn.x.io/js/app.3f2a1b.js?v=1")], value="\n  bad\nmore"),
            "TypeError: bad",
            "run (app.3f2a1b.js)",
        ),
        (
            error(
                [frame("charge", "/srv/shop/billing.py", module="shop.billing")],
                type_="ValueError",
                value="",
            ),
            "ValueError",
            "shop.billing in charge",
        ),
        (
            EventIn(type="message", message="Disk almost full\nsda1 at 93%", transaction="/cron"),
            "Disk almost full",
            "/cron",
        ),
        (
            EventIn(type="log", message="cache miss", exceptions=[ExceptionIn(type="KeyError")]),
            "cache miss",
            None,
        ),
        (error([], type_=None, value="something broke"), "something broke", None),
        (EventIn(message="only a message"), "only a message", None),
        (EventIn(exceptions=[ExceptionIn()]), "<unknown error>", None),
        (error([frame(None, "lib/x.js"), Frame(module="mod")], type_="E"), "E: boom", "mod"),
        (error([frame(None, "lib/x.js")], type_="E"), "E: boom", "x.js"),
    ],
)
def test_title_and_culprit(event: EventIn, title: str, culprit: str | None):
    assert title_and_culprit(event) == (title, culprit)


def test_title_is_cut_to_200_characters():
    title, _ = title_and_culprit(error([], value="x" * 500))
    assert title == "TypeError: " + "x" * 188 + "…"
    assert len(title) == 200
