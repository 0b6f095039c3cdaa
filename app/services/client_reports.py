"""Client reports: what SDKs say they dropped before sending (queue full, sampled out,
rate limited, network errors), per reason and data category.

An event that never arrived leaves no trace anywhere else, so these counts are how a
user learns that errors are being lost on the client side. Each reported entry is
stored as one row with the report's timestamp; reading sums the quantities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import InvalidInput
from app.models import ClientReport, utcnow

Sessions = async_sessionmaker[AsyncSession]

REPORTS = ClientReport.__table__
# The columns' widths (app/models.py): longer names are cut rather than refused.
NAME_LIMIT = 100
# Rows one call may write: a report is a handful of (reason, category) pairs.
MAX_ENTRIES = 1000
# An SDK counts in memory between reports; more than this in one entry is not a count.
MAX_QUANTITY = 2**31 - 1


@dataclass(frozen=True)
class DiscardedEvents:
    """One entry of a client report: `quantity` items of `category` dropped for `reason`
    at about `timestamp` (the report's time, by the client's clock)."""

    reason: str
    category: str
    quantity: int
    timestamp: datetime


@dataclass(frozen=True)
class ClientReportTotal:
    reason: str
    category: str
    quantity: int


async def record_client_reports(
    *,
    sessions: Sessions,
    project_id: int,
    entries: Sequence[DiscardedEvents],
    received_at: datetime | None = None,
) -> int:
    """Store `entries` for `project_id` in one transaction; returns the rows written.

    Entries with a quantity of 0 carry nothing and are not stored. Raises InvalidInput
    for a negative or absurd quantity, an empty reason or category, or too many entries.
    """
    if len(entries) > MAX_ENTRIES:
        raise InvalidInput(
            f"a client report may hold at most {MAX_ENTRIES} entries", field="discarded_events"
        )
    received = received_at or utcnow()
    rows = []
    for entry in entries:
        if not 0 <= entry.quantity <= MAX_QUANTITY:
            raise InvalidInput(
                f"quantity {entry.quantity} is outside 0..{MAX_QUANTITY}", field="quantity"
            )
        if not entry.reason.strip() or not entry.category.strip():
            raise InvalidInput("reason and category must not be empty", field="reason")
        if entry.quantity == 0:
            continue
        rows.append(
            {
                "project_id": project_id,
                "timestamp": entry.timestamp,
                "received_at": received,
                "reason": entry.reason.strip()[:NAME_LIMIT],
                "category": entry.category.strip()[:NAME_LIMIT],
                "quantity": entry.quantity,
            }
        )
    if not rows:
        return 0
    async with sessions.begin() as session:
        await session.execute(sa.insert(REPORTS), rows)
    return len(rows)


async def client_report_totals(
    *, sessions: Sessions, project_id: int, since: datetime | None = None
) -> list[ClientReportTotal]:
    """Dropped items of `project_id` per (reason, category), summed over the reports
    timestamped at or after `since` (all when None); largest first, then by name."""
    total = sa.func.sum(REPORTS.c.quantity).label("quantity")
    query = (
        sa.select(REPORTS.c.reason, REPORTS.c.category, total)
        .where(REPORTS.c.project_id == project_id)
        .group_by(REPORTS.c.reason, REPORTS.c.category)
        .order_by(total.desc(), REPORTS.c.reason, REPORTS.c.category)
    )
    if since is not None:
        query = query.where(REPORTS.c.timestamp >= since)
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    return [
        ClientReportTotal(reason=reason, category=category, quantity=int(quantity))
        for reason, category, quantity in rows
    ]
