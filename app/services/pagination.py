"""Keyset pagination: opaque cursors over (sort value, id), never OFFSET.

A cursor names the ordering it was made for, so a cursor from one sort is refused by
another instead of silently skipping rows.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import orjson
import sqlalchemy as sa

from app.errors import InvalidInput
from app.services.common import MAX_INT_COLUMN

T = TypeVar("T")

DEFAULT_PAGE = 25
MAX_PAGE = 100


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    cursors: list[str]
    has_next: bool

    @property
    def end_cursor(self) -> str | None:
        return self.cursors[-1] if self.cursors else None


def page_size(first: int | None) -> int:
    if first is None:
        return DEFAULT_PAGE
    if first < 0 or first > MAX_PAGE:
        raise InvalidInput(f"first must be between 0 and {MAX_PAGE}", field="first")
    return first


def encode_cursor(order: str, value: Any, row_id: int) -> str:
    if isinstance(value, datetime):
        value = {"t": value.isoformat()}
    raw = orjson.dumps([order, value, row_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INT_COLUMN


def _not_a_cursor() -> InvalidInput:
    return InvalidInput(
        "after is not a cursor of this list (cursors only work with the same sort)",
        field="after",
    )


def decode_cursor(cursor: str, order: str) -> tuple[Any, int]:
    """The (sort value, id) of `cursor`. Cursors travel through clients, so one that was
    altered is refused (here and in `after_clause`) rather than reaching the database as
    a value it cannot bind."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        kind, value, row_id = orjson.loads(base64.urlsafe_b64decode(padded))
        if isinstance(value, dict):
            value = datetime.fromisoformat(value["t"])
        elif not _is_int(value):
            raise ValueError
        if kind != order or not _is_int(row_id):
            raise ValueError
    except (ValueError, TypeError, KeyError, binascii.Error, orjson.JSONDecodeError):
        raise _not_a_cursor() from None
    return value, row_id


def after_clause(column: Any, id_column: Any, value: Any, row_id: int) -> Any:
    """Rows after (value, id) in descending order of both; a value of another type than
    the column's (a count where a time belongs) is not a cursor of this list."""
    # `decode_cursor` made the value a time or an integer: it must be what the column holds.
    column_type = getattr(column.type, "impl", column.type)  # under a TypeDecorator
    if isinstance(value, datetime) != isinstance(column_type, sa.DateTime):
        raise _not_a_cursor()
    return sa.or_(column < value, sa.and_(column == value, id_column < row_id))


def build_page(rows: Sequence[T], *, size: int, order: str, key: Any) -> Page[T]:
    """`rows` were fetched with LIMIT size + 1; `key(row)` gives (sort value, id)."""
    has_next = len(rows) > size
    items = list(rows[:size])
    cursors = [encode_cursor(order, *key(item)) for item in items]
    return Page(items=items, cursors=cursors, has_next=has_next)
