"""Keys and tokens: hashed at rest, scoped, revocable."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text

from app.errors import Forbidden, InvalidKey, NotFound
from app.services.keys import (
    CreatedProject,
    create_api_token,
    create_project,
    grant_for_project_key,
    grant_for_token,
    key_cache_for,
    list_api_tokens,
    revoke_api_token,
    revoke_project_key,
    token_cache_for,
    update_project_settings,
)
from app.services.runtime import Runtime


async def test_secrets_are_not_stored(runtime: Runtime, project: CreatedProject):
    secrets = [project.ingest_key.secret, project.api_key.secret, project.token.secret]
    path = runtime.settings.sqlite_path
    assert path is not None
    async with runtime.database.engine.connect() as conn:
        await conn.execute(text("PRAGMA wal_checkpoint(FULL)"))
    raw = path.read_bytes()
    for secret in secrets:
        assert secret.encode() not in raw
    # The hash is what is stored, so the key still works.
    grant = await grant_for_project_key(
        sessions=runtime.database.sessions, secret=project.ingest_key.secret
    )
    assert grant.project.id == project.project.id


async def test_scopes_and_projects(runtime: Runtime, project: CreatedProject):
    sessions = runtime.database.sessions
    other = await create_project(sessions=sessions, name="Other")
    with pytest.raises(Forbidden):
        await grant_for_project_key(
            sessions=sessions, secret=project.ingest_key.secret, scope="read"
        )
    with pytest.raises(Forbidden):
        await grant_for_project_key(
            sessions=sessions,
            secret=project.api_key.secret,
            scope="read",
            project_id=other.project.id,
        )
    # A write key may send events too.
    grant = await grant_for_project_key(sessions=sessions, secret=project.api_key.secret)
    assert grant.scopes == {"read", "write"}


async def test_unknown_and_revoked(runtime: Runtime, project: CreatedProject):
    sessions = runtime.database.sessions
    with pytest.raises(InvalidKey):
        await grant_for_project_key(sessions=sessions, secret="pk_" + "0" * 32)
    with pytest.raises(InvalidKey):
        await grant_for_project_key(sessions=sessions, secret=None)
    assert project.ingest_key.key.id is not None
    await revoke_project_key(sessions=sessions, key_id=project.ingest_key.key.id)
    with pytest.raises(InvalidKey):
        await grant_for_project_key(sessions=sessions, secret=project.ingest_key.secret)


async def test_keys_are_remembered_for_a_while(runtime: Runtime, project: CreatedProject):
    sessions = runtime.database.sessions
    cache = key_cache_for(sessions)
    assert cache.seconds == runtime.settings.key_cache_seconds == 5
    now = [1000.0]
    cache.clock = lambda: now[0]
    secret = project.ingest_key.secret
    assert (await grant_for_project_key(sessions=sessions, secret=secret)).project.scrub_fields in (
        None,
        [],
    )
    # Another process revokes the key and changes the project, straight in the database.
    async with sessions.begin() as session:
        await session.execute(
            text("UPDATE project_key SET revoked_at = '2000-01-01 00:00:00' WHERE id = :id"),
            {"id": project.ingest_key.key.id},
        )
        await session.execute(text("""UPDATE project SET scrub_fields = '["iban"]'"""))
    now[0] += 4.9
    grant = await grant_for_project_key(sessions=sessions, secret=secret)
    assert grant.project.scrub_fields in (None, [])
    now[0] += 0.2
    with pytest.raises(InvalidKey, match="revoked"):
        await grant_for_project_key(sessions=sessions, secret=secret)
    # A key first looked up after the change sees the project as it is now.
    assert project.api_key.key.id is not None
    assert (
        await grant_for_project_key(sessions=sessions, secret=project.api_key.secret)
    ).project.scrub_fields == ["iban"]


async def test_changes_made_here_take_effect_at_once(runtime: Runtime, project: CreatedProject):
    sessions = runtime.database.sessions
    key_cache_for(sessions).clock = lambda: 0.0  # nothing would expire by itself
    secret = project.api_key.secret
    assert project.project.id is not None and project.api_key.key.id is not None
    await grant_for_project_key(sessions=sessions, secret=secret)
    await update_project_settings(
        sessions=sessions, project_id=project.project.id, scrub_fields=["iban"]
    )
    assert (await grant_for_project_key(sessions=sessions, secret=secret)).project.scrub_fields == [
        "iban"
    ]
    await revoke_project_key(sessions=sessions, key_id=project.api_key.key.id)
    with pytest.raises(InvalidKey, match="revoked"):
        await grant_for_project_key(sessions=sessions, secret=secret)


async def test_an_expired_key_is_looked_up_once_for_the_requests_waiting(
    runtime: Runtime, project: CreatedProject
):
    """Requests that find the key's entry expired at the same moment share one query,
    and each gets the grant (or, for an unknown key, its own refusal)."""
    sessions = runtime.database.sessions
    queries: list[str] = []
    engine = runtime.database.engine.sync_engine

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "FROM project_key" in statement:
            queries.append(statement)

    sa_event.listen(engine, "before_cursor_execute", count)
    try:
        grants = await asyncio.gather(
            *(
                grant_for_project_key(sessions=sessions, secret=project.ingest_key.secret)
                for _ in range(20)
            )
        )
        assert {grant.project.id for grant in grants} == {project.project.id}
        assert len(queries) == 1
        unknown = await asyncio.gather(
            *(grant_for_project_key(sessions=sessions, secret="pk_" + "2" * 32) for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(answer, InvalidKey) for answer in unknown)
        assert len(queries) == 2
        assert key_cache_for(sessions).pending == {}
    finally:
        sa_event.remove(engine, "before_cursor_execute", count)


async def test_tokens_are_remembered_for_a_while(runtime: Runtime, project: CreatedProject):
    sessions = runtime.database.sessions
    cache = token_cache_for(sessions)
    assert cache.seconds == runtime.settings.key_cache_seconds
    now = [1000.0]
    cache.clock = lambda: now[0]
    queries: list[str] = []
    engine = runtime.database.engine.sync_engine

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "FROM api_token" in statement:
            queries.append(statement)

    sa_event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(3):
            grant = await grant_for_token(sessions=sessions, secret=project.token.secret)
            assert grant.token_id == project.token.token.id
        assert len(queries) == 1
        # Revoked in the database (by another process): refused once the entry expires.
        async with sessions.begin() as session:
            await session.execute(
                text("UPDATE api_token SET revoked_at = '2000-01-01 00:00:00' WHERE id = :id"),
                {"id": project.token.token.id},
            )
        now[0] += 4.9
        await grant_for_token(sessions=sessions, secret=project.token.secret)
        now[0] += 0.2
        with pytest.raises(InvalidKey, match="revoked"):
            await grant_for_token(sessions=sessions, secret=project.token.secret)
        assert len(queries) == 2
        # Unknown tokens are never remembered: each is looked up.
        for _ in range(2):
            with pytest.raises(InvalidKey, match="invalid token"):
                await grant_for_token(sessions=sessions, secret="egt_" + "3" * 32)
        assert len(queries) == 4
        assert len(cache.entries) == 1
    finally:
        sa_event.remove(engine, "before_cursor_execute", count)


async def test_a_token_revoked_here_is_refused_at_once(runtime: Runtime, project: CreatedProject):
    sessions = runtime.database.sessions
    token_cache_for(sessions).clock = lambda: 0.0  # nothing would expire by itself
    other = await create_api_token(sessions=sessions, scopes=["read"])
    for made in (project.token, other):
        await grant_for_token(sessions=sessions, secret=made.secret)
    assert other.token.id is not None
    revoked = await revoke_api_token(sessions=sessions, token_id=other.token.id)
    assert revoked.revoked_at is not None
    with pytest.raises(InvalidKey, match="revoked"):
        await grant_for_token(sessions=sessions, secret=other.secret)
    await grant_for_token(sessions=sessions, secret=project.token.secret)
    assert [t.revoked_at is not None for t in await list_api_tokens(sessions=sessions)] == [
        False,
        True,
    ]
    with pytest.raises(NotFound):
        await revoke_api_token(sessions=sessions, token_id=999)


async def test_unknown_keys_are_not_remembered(runtime: Runtime, project: CreatedProject):
    sessions = runtime.database.sessions
    with pytest.raises(InvalidKey):
        await grant_for_project_key(sessions=sessions, secret="pk_" + "1" * 32)
    assert key_cache_for(sessions).entries == {}


async def test_tokens(runtime: Runtime, project: CreatedProject):
    sessions = runtime.database.sessions
    grant = await grant_for_token(sessions=sessions, secret=project.token.secret)
    assert grant.project_ids == {project.project.id}
    assert grant.can_see(project.project.id) and not grant.can_see(999)
    wide = await create_api_token(sessions=sessions, scopes=["read"])
    assert (await grant_for_token(sessions=sessions, secret=wide.secret)).project_ids is None
    with pytest.raises(InvalidKey):
        await grant_for_token(sessions=sessions, secret="egt_nope")
