"""The users and customer accounts that errors hit, and the groups they hit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy import select

from app.models import Account, AffectedUser, Group, GroupAccount, GroupUser
from app.services.common import Sessions
from app.services.pagination import Page, after_clause, build_page, decode_cursor, page_size

Person = TypeVar("Person", AffectedUser, Account)
PersonKind = Literal["user", "account"]
MODELS: dict[str, type[AffectedUser] | type[Account]] = {"user": AffectedUser, "account": Account}
PEOPLE_ORDER = "PEOPLE_LAST_SEEN"
LINK_ORDER = "LINK_LAST_SEEN"

_LINKS: dict[type, tuple[Any, Any]] = {
    AffectedUser: (GroupUser, GroupUser.user_id),
    Account: (GroupAccount, GroupAccount.account_id),
}


def _people_conditions(model: type[Person], project_id: int, search: str | None) -> list[Any]:
    conditions: list[Any] = [model.project_id == project_id]
    if search:
        pattern = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        columns = [model.external_id, model.name]
        if model is AffectedUser:
            columns += [AffectedUser.email, AffectedUser.username]
        conditions.append(sa.or_(*(c.ilike(pattern, escape="\\") for c in columns)))  # type: ignore[attr-defined]
    return conditions


async def list_people(
    *,
    sessions: Sessions,
    kind: PersonKind,
    project_id: int,
    search: str | None = None,
    first: int | None = None,
    after: str | None = None,
) -> Page[Any]:
    """Users or accounts of a project, most recently seen first; `search` matches the
    start of the external id, e-mail or name."""
    model: Any = MODELS[kind]
    size = page_size(first)
    query = select(model).where(*_people_conditions(model, project_id, search))
    if after:
        value, row_id = decode_cursor(after, PEOPLE_ORDER)
        query = query.where(after_clause(model.last_seen, model.id, value, row_id))
    query = query.order_by(model.last_seen.desc(), model.id.desc()).limit(size + 1)  # type: ignore[attr-defined, union-attr]
    async with sessions() as session:
        rows = (await session.scalars(query)).all()
    return build_page(rows, size=size, order=PEOPLE_ORDER, key=lambda p: (p.last_seen, p.id))


async def count_people(
    *, sessions: Sessions, kind: PersonKind, project_id: int, search: str | None = None
) -> int:
    model: Any = MODELS[kind]
    query = select(sa.func.count()).select_from(model)
    query = query.where(*_people_conditions(model, project_id, search))
    async with sessions() as session:
        return int(await session.scalar(query) or 0)


async def people_by_ids(
    *, sessions: Sessions, kind: PersonKind, ids: Sequence[int]
) -> dict[int, Any]:
    model: Any = MODELS[kind]
    if not ids:
        return {}
    async with sessions() as session:
        rows = await session.scalars(select(model).where(model.id.in_(list(ids))))  # type: ignore[union-attr]
        return {row.id: row for row in rows if row.id is not None}


async def people_of_group(
    *,
    sessions: Sessions,
    kind: PersonKind,
    group_id: int,
    first: int | None = None,
    after: str | None = None,
) -> Page[Any]:
    """The users or accounts a group affected, most recently affected first."""
    model: Any = MODELS[kind]
    size = page_size(first)
    link, other = _LINKS[model]
    query = (
        select(model, link.last_seen).join(link, other == model.id).where(link.group_id == group_id)
    )
    if after:
        value, row_id = decode_cursor(after, LINK_ORDER)
        query = query.where(after_clause(link.last_seen, model.id, value, row_id))
    query = query.order_by(link.last_seen.desc(), model.id.desc()).limit(size + 1)  # type: ignore[union-attr]
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    page = build_page(rows, size=size, order=LINK_ORDER, key=lambda r: (r[1], r[0].id))
    return Page(items=[row[0] for row in page.items], cursors=page.cursors, has_next=page.has_next)


async def groups_of_person(
    *,
    sessions: Sessions,
    kind: PersonKind,
    person_id: int,
    first: int | None = None,
    after: str | None = None,
) -> Page[Group]:
    """The groups that hit a user or account, most recently first."""
    model: Any = MODELS[kind]
    size = page_size(first)
    link, other = _LINKS[model]
    query = (
        select(Group, link.last_seen)
        .join(link, link.group_id == Group.id)
        .where(other == person_id)
    )
    if after:
        value, row_id = decode_cursor(after, LINK_ORDER)
        query = query.where(after_clause(link.last_seen, Group.id, value, row_id))
    query = query.order_by(link.last_seen.desc(), Group.id.desc()).limit(size + 1)  # type: ignore[union-attr]
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    page = build_page(rows, size=size, order=LINK_ORDER, key=lambda r: (r[1], r[0].id))
    return Page(items=[row[0] for row in page.items], cursors=page.cursors, has_next=page.has_next)


async def count_groups_of_person(*, sessions: Sessions, kind: PersonKind, person_id: int) -> int:
    link, other = _LINKS[MODELS[kind]]
    query = select(sa.func.count()).select_from(link).where(other == person_id)
    async with sessions() as session:
        return int(await session.scalar(query) or 0)
