"""Exporting events as JSON or CSV: a bounded part inline, the whole through a download.

The download is an `ExportRequest` row that remembers the filter and what the requester
could see; `/export/{id}` streams the rows in id order, a batch at a time, so an export
of millions of events never sits in memory. `write_export` writes the same rows to a
file (the CLI's `errorgraph export`), and `AtomicFile` is how any export file is written:
it appears under its name complete and on disk, or not at all.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import secrets
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal

import orjson
from sqlalchemy import select

from app.errors import InvalidInput, NotFound
from app.models import Event, ExportRequest, utcnow
from app.services.common import Sessions
from app.services.events import EventFilter, event_conditions

ExportFormat = Literal["JSON", "CSV"]
INLINE_LIMIT = 1000
STREAM_BATCH = 500
EXPORT_TTL = timedelta(hours=24)

CSV_COLUMNS = (
    "id",
    "event_id",
    "project_id",
    "group_id",
    "timestamp",
    "received_at",
    "type",
    "level",
    "platform",
    "environment",
    "release",
    "message",
    "exception_type",
    "exception_value",
    "url",
    "user_agent",
    "user_id",
    "account_id",
    "session_id",
    "window_id",
    "tags",
    "source",
)


def event_record(event: Event) -> dict[str, Any]:
    """One event as an export row: every stored field, under stable names."""
    return {
        "id": event.id,
        "event_id": event.event_id,
        "project_id": event.project_id,
        "group_id": event.group_id,
        "timestamp": event.timestamp.isoformat(),
        "received_at": event.received_at.isoformat(),
        "type": event.type,
        "level": event.level,
        "platform": event.platform,
        "logger": event.logger,
        "environment": event.environment,
        "release": event.release,
        "server_name": event.server_name,
        "transaction": event.transaction,
        "message": event.message,
        "exception_type": event.exception_type,
        "exception_value": event.exception_value,
        "exceptions": event.exceptions,
        "raw_stacktrace": event.raw_stacktrace,
        "url": event.url,
        "user_agent": event.user_agent,
        "request": event.request,
        "user": event.user,
        "user_id": (event.user or {}).get("id"),
        "account": event.account,
        "account_id": (event.account or {}).get("id"),
        "session_id": event.session_id,
        "window_id": event.window_id,
        "breadcrumbs": event.breadcrumbs,
        "tags": event.tags,
        "extra": event.extra,
        "contexts": event.contexts,
        "fingerprint": event.fingerprint,
        "source": event.dialect,
        "client_ip": event.client_ip,
    }


def _csv_line(record: dict[str, Any]) -> str:
    buffer = io.StringIO()
    row = []
    for column in CSV_COLUMNS:
        value = record.get(column)
        if isinstance(value, dict | list):
            value = orjson.dumps(value).decode()
        row.append("" if value is None else value)
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue()


def _csv_header() -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(CSV_COLUMNS)
    return buffer.getvalue()


async def _batches(
    sessions: Sessions, where: EventFilter, *, limit: int | None
) -> AsyncIterator[list[Event]]:
    last_id = 0
    remaining = limit
    conditions = event_conditions(sessions, where)
    while remaining is None or remaining > 0:
        size = STREAM_BATCH if remaining is None else min(STREAM_BATCH, remaining)
        query = (
            select(Event)
            .where(*conditions, Event.id > last_id)  # type: ignore[operator]
            .order_by(Event.id)  # type: ignore[arg-type]
            .limit(size)
        )
        async with sessions() as session:
            rows = list((await session.scalars(query)).all())
        if not rows:
            return
        yield rows
        last_id = rows[-1].id or last_id
        if remaining is not None:
            remaining -= len(rows)
        if len(rows) < size:
            return


async def export_chunks(
    *, sessions: Sessions, where: EventFilter, format: ExportFormat, limit: int | None = None
) -> AsyncIterator[str]:
    """The export as text pieces: a JSON array, or CSV with a header line."""
    if format == "CSV":
        yield _csv_header()
    else:
        yield "["
    first = True
    async for rows in _batches(sessions, where, limit=limit):
        for event in rows:
            record = event_record(event)
            if format == "CSV":
                yield _csv_line(record)
            else:
                yield ("" if first else ",") + orjson.dumps(record).decode()
            first = False
    if format == "JSON":
        yield "]"


@dataclass(frozen=True)
class InlineExport:
    content: str
    row_count: int
    truncated: bool


async def export_inline(
    *, sessions: Sessions, where: EventFilter, format: ExportFormat, limit: int = INLINE_LIMIT
) -> InlineExport:
    """Up to `limit` rows as text; `truncated` when more matched (use the download)."""
    pieces = [
        piece
        async for piece in export_chunks(
            sessions=sessions, where=where, format=format, limit=limit + 1
        )
    ]
    rows = len(pieces) - (1 if format == "CSV" else 2)
    truncated = rows > limit
    if truncated:
        pieces = pieces[:-1] if format == "CSV" else [*pieces[:-2], "]"]
        rows = limit
    return InlineExport(content="".join(pieces), row_count=rows, truncated=truncated)


async def create_export_request(
    *, sessions: Sessions, where: EventFilter, format: ExportFormat
) -> ExportRequest:
    if where.since and where.until and where.since >= where.until:
        raise InvalidInput("since must be before until", field="since")
    now = utcnow()
    request = ExportRequest(
        id=secrets.token_hex(16),
        project_ids=sorted(where.visible) if where.visible is not None else None,
        project_id=where.project_id,
        group_id=where.group_id,
        since=where.since,
        until=where.until,
        format=format,
        created_at=now,
        expires_at=now + EXPORT_TTL,
    )
    async with sessions.begin() as session:
        session.add(request)
    return request


async def get_export_request(
    *, sessions: Sessions, export_id: str, now: datetime | None = None
) -> ExportRequest:
    async with sessions() as session:
        request = await session.get(ExportRequest, export_id)
    if request is None or request.expires_at <= (now or utcnow()):
        raise NotFound("no such export, or it has expired", field="id")
    return request


def export_filter(request: ExportRequest, visible: frozenset[int] | None) -> EventFilter:
    """The filter of a stored export, narrowed to what the downloader may see as well."""
    allowed = frozenset(request.project_ids) if request.project_ids is not None else None
    if visible is not None:
        allowed = visible if allowed is None else allowed & visible
    base = EventFilter(
        project_id=request.project_id,
        group_id=request.group_id,
        since=request.since,
        until=request.until,
    )
    return replace(base, visible=allowed)


class AtomicFile:
    """A file that appears under its final name only once it is complete and on disk.

    Written to a temporary file in the same directory (so the rename cannot cross file
    systems), then `commit` flushes, fsyncs, renames over the final name and fsyncs the
    directory so the rename itself survives a power cut. `discard` removes the temporary
    file. Methods are blocking (run them in a thread from async code) and serialised by a
    lock: a `discard` after a cancelled `write` waits for that write to end first.
    The temporary file is created readable by its owner only: exports hold personal data.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self._temporary = Path(temporary)
        self._raw: IO[bytes] = os.fdopen(fd, "wb")
        self._lock = threading.Lock()
        self._done = False

    @property
    def raw(self) -> IO[bytes]:
        """The temporary file, for a wrapper (gzip) that must be closed before `commit`."""
        return self._raw

    def locked(self) -> threading.Lock:
        """The lock, for a wrapper writing to `raw`: `with target.locked(): …`."""
        return self._lock

    def write(self, data: bytes) -> None:
        with self._lock:
            self._raw.write(data)

    def commit(self) -> Path:
        with self._lock:
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(self._temporary, self.path)
            self._done = True
            directory = os.open(self.path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            return self.path

    def discard(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            self._raw.close()
            self._temporary.unlink(missing_ok=True)


async def write_export(
    *,
    sessions: Sessions,
    where: EventFilter,
    format: ExportFormat,
    output: Path,
    on_rows: Callable[[int], None] | None = None,
) -> int:
    """Write the export of `where` to `output` atomically, in the download's shapes (a JSON
    array, or CSV with a header line); `on_rows(n)` hears of every `n` rows written.
    Returns the number of rows."""
    target = await asyncio.to_thread(AtomicFile, output)
    rows = 0
    try:
        await asyncio.to_thread(target.write, (_csv_header() if format == "CSV" else "[").encode())
        async for batch in _batches(sessions, where, limit=None):
            if format == "CSV":
                text = "".join(_csv_line(event_record(event)) for event in batch)
            else:
                text = ("," if rows else "") + ",".join(
                    orjson.dumps(event_record(event)).decode() for event in batch
                )
            await asyncio.to_thread(target.write, text.encode())
            rows += len(batch)
            if on_rows is not None:
                on_rows(len(batch))
        if format == "JSON":
            await asyncio.to_thread(target.write, b"]")
        await asyncio.to_thread(target.commit)
    except BaseException:
        await asyncio.to_thread(target.discard)
        raise
    return rows
