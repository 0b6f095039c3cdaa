"""The canonical event's limits and the names its validation errors give."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from app.domain.event import (
    MAX_BREADCRUMBS,
    MAX_FRAMES,
    MAX_JSON_DEPTH,
    TRUNCATION_MARKER,
    EventIn,
    ExceptionIn,
    Frame,
    Level,
    json_depth,
)


def test_long_strings_are_cut_and_marked():
    event = EventIn(message="x" * 10_000, environment="e" * 500)
    assert event.message is not None and len(event.message) == 8192
    assert event.message.endswith(TRUNCATION_MARKER)
    assert event.environment is not None and len(event.environment) == 200


def test_deep_stacks_keep_both_ends():
    frames = [Frame(function=f"f{i}") for i in range(1000)]
    exc = ExceptionIn(type="RecursionError", frames=frames)
    assert len(exc.frames) == MAX_FRAMES
    assert exc.frames[0].function == "f0"
    assert exc.frames[-1].function == "f999"


def test_only_recent_breadcrumbs_are_kept():
    event = EventIn(breadcrumbs=[{"message": str(i)} for i in range(150)])
    assert len(event.breadcrumbs) == MAX_BREADCRUMBS
    assert event.breadcrumbs[0] == {"message": "50"}


def test_timestamps_become_utc():
    naive = EventIn(timestamp=datetime(2025, 1, 15, 10, 30))
    assert naive.timestamp == datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
    zoned = EventIn(timestamp=datetime(2025, 1, 15, 12, 30, tzinfo=timezone(timedelta(hours=2))))
    assert zoned.timestamp == datetime(2025, 1, 15, 10, 30, tzinfo=UTC)


def test_levels_and_tags_as_clients_send_them():
    assert EventIn(level="warn").level is Level.WARNING
    assert EventIn(level="CRITICAL").level is Level.FATAL
    event = EventIn(tags=[["browser", "Chrome"], ["count", 3]])
    assert event.tags == {"browser": "Chrome", "count": "3"}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"level": "loud"}, "level"),
        ({"timestamp": "not a date"}, "timestamp"),
        ({"event_id": ""}, "event_id"),
        ({"exceptions": [{"frames": [{"lineno": "ten"}]}]}, "lineno"),
    ],
)
def test_validation_errors_name_the_field(data: dict, field: str):
    with pytest.raises(ValidationError) as caught:
        EventIn.model_validate(data)
    assert field in str(caught.value.errors()[0]["loc"])


def test_nul_characters_are_removed_everywhere():
    event = EventIn(
        message="a\x00b",
        extra={"k\x00": ["x\x00y", {"deep": "\x00"}]},
        exceptions=[
            ExceptionIn(type="E\x00", frames=[Frame(function="f\x00", vars={"v": "1\x00"})])
        ],
        tags={"t": "v\x00"},
    )
    assert event.message == "ab"
    assert event.extra == {"k": ["xy", {"deep": ""}]}
    assert event.exceptions[0].type == "E"
    assert event.exceptions[0].frames[0].function == "f"
    assert event.exceptions[0].frames[0].vars == {"v": "1"}
    assert event.tags == {"t": "v"}


def _walked_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_walked_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_walked_depth, value), default=0)
    return 0


@pytest.mark.parametrize(
    "text",
    [
        b"1",
        b'"[[[{"',
        b"[]",
        b'{"a": [1, {"b": []}], "c": {}}',
        # Brackets and quotes inside strings, escaped quotes and backslashes around them.
        b'{"a\\"[": ["]]]\\\\", "\\\\\\"{{", {"x": "\\u005c\\"]"}]}',
        b'["\\\\", ["\\\\\\\\"], [[["}\\"}"]]]]',
        '{"ä[": ["ü]]", [{"€": []}]]}'.encode(),
        b"[" * 70 + b'"]]]"' + b"]" * 70,
    ],
)
def test_json_depth_is_the_parsed_values_depth(text: bytes) -> None:
    """Read off the bytes, the depth must be the parsed value's whatever the strings
    hold: it decides which events are refused as too deep."""
    assert json_depth(text) == _walked_depth(json.loads(text))


def nested(depth: int) -> dict[str, Any]:
    """A mapping whose containers nest `depth` levels deep, lists and mappings in turn."""
    value: Any = "bottom"
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return {"top": value}


def event_with(field: str, value: dict[str, Any]) -> EventIn:
    if field == "vars":
        return EventIn(exceptions=[ExceptionIn(frames=[Frame(vars=value)])])
    if field == "data":
        return EventIn(user={"id": "u", "data": value})
    if field == "breadcrumbs":
        return EventIn(breadcrumbs=[value])
    return EventIn(**{field: value})


@pytest.mark.parametrize("field", ["extra", "contexts", "request", "breadcrumbs", "vars", "data"])
def test_free_form_data_nested_too_deep_is_refused_naming_the_field(field: str):
    """64 levels are kept; one more is a validation error, also where orjson would not
    even write it (a Python walk over a thousand levels ended in RecursionError)."""
    assert json_depth(orjson.dumps(nested(MAX_JSON_DEPTH))) == MAX_JSON_DEPTH
    event_with(field, nested(MAX_JSON_DEPTH - (1 if field == "breadcrumbs" else 0)))
    for depth in (MAX_JSON_DEPTH + 1, 300, 1000):
        with pytest.raises(ValidationError, match="nested deeper than 64 levels"):
            event_with(field, nested(depth))


def test_free_form_data_loses_nul_and_keeps_depth_checks_in_brackets_inside_text():
    text = "[" * 200  # brackets inside strings are text, not nesting
    event = EventIn(extra={"a\x00b": ["x\x00y", text]}, contexts={"c": "]" * 300 + "[" * 300})
    assert event.extra == {"ab": ["xy", text]}
    assert json_depth(orjson.dumps(event.contexts)) == 1
