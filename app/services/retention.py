"""Retention policies: how long each project's events are kept (the cleanup task that
applies them comes with the operations work)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select

from app.errors import InvalidInput, NotFound
from app.models import Project, RetentionPolicy, utcnow
from app.services.common import Sessions

MAX_DAYS = 3650
MAX_DESTINATION = 1000  # the column's length


@dataclass(frozen=True)
class Retention:
    """The policy in force for a project (or the server default when `project_id` is None).
    `is_default` says it was not set for this project but inherited."""

    project_id: int | None
    days: int
    auto_export_before_cleanup: bool
    export_destination: str | None
    is_default: bool


def _as_retention(row: RetentionPolicy, project_id: int | None, inherited: bool) -> Retention:
    return Retention(
        project_id=project_id,
        days=row.days,
        auto_export_before_cleanup=row.auto_export_before_cleanup,
        export_destination=row.export_destination,
        is_default=inherited,
    )


async def get_retention(
    *, sessions: Sessions, project_id: int | None, default_days: int = 90
) -> Retention:
    async with sessions() as session:
        if project_id is not None and await session.get(Project, project_id) is None:
            raise NotFound(f"no project {project_id}", field="projectId")
        rows = (
            await session.scalars(
                select(RetentionPolicy).where(
                    (RetentionPolicy.project_id == project_id)
                    | (RetentionPolicy.project_id.is_(None))  # type: ignore[union-attr]
                )
            )
        ).all()
    own = next((r for r in rows if r.project_id == project_id and project_id is not None), None)
    if own is not None:
        return _as_retention(own, project_id, inherited=False)
    server = next((r for r in rows if r.project_id is None), None)
    if server is not None:
        return _as_retention(server, project_id, inherited=project_id is not None)
    return Retention(
        project_id=project_id,
        days=default_days,
        auto_export_before_cleanup=False,
        export_destination=None,
        is_default=True,
    )


def _check_destination(destination: str | None) -> None:
    if destination is None:
        return
    if len(destination) > MAX_DESTINATION:
        raise InvalidInput(
            f"exportDestination is longer than {MAX_DESTINATION} characters",
            field="exportDestination",
        )
    parts = urlsplit(destination)
    if parts.scheme != "file" or not parts.path.startswith("/"):
        raise InvalidInput(
            "exportDestination must be a file:///absolute/directory URL", field="exportDestination"
        )


async def set_retention(
    *,
    sessions: Sessions,
    project_id: int | None,
    days: int,
    auto_export_before_cleanup: bool | None = None,
    export_destination: str | None = None,
    default_days: int = 90,
) -> Retention:
    """Set a project's policy (or the server default with `project_id` None); arguments
    left None keep their current value."""
    if not 1 <= days <= MAX_DAYS:
        raise InvalidInput(f"days must be between 1 and {MAX_DAYS}", field="days")
    _check_destination(export_destination)
    current = await get_retention(
        sessions=sessions, project_id=project_id, default_days=default_days
    )
    auto = (
        current.auto_export_before_cleanup
        if auto_export_before_cleanup is None
        else auto_export_before_cleanup
    )
    destination = (
        export_destination if export_destination is not None else current.export_destination
    )
    if auto and not destination:
        raise InvalidInput(
            "autoExportBeforeCleanup needs an exportDestination", field="exportDestination"
        )
    async with sessions.begin() as session:
        condition = (
            RetentionPolicy.project_id.is_(None)  # type: ignore[union-attr]
            if project_id is None
            else RetentionPolicy.project_id == project_id
        )
        row = (await session.scalars(select(RetentionPolicy).where(condition))).first()
        if row is None:
            row = RetentionPolicy(project_id=project_id)
            session.add(row)
        row.days = days
        row.auto_export_before_cleanup = auto
        row.export_destination = destination
        row.updated_at = utcnow()
    return _as_retention(row, project_id, inherited=False)
