"""The canonical event's limits and the names its validation errors give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from app.domain.event import (
    MAX_BREADCRUMBS,
    MAX_FRAMES,
    TRUNCATION_MARKER,
    EventIn,
    ExceptionIn,
    Frame,
    Level,
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
