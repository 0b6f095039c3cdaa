"""Auth and hardening: every failure has its code, and no token sees another project."""

from __future__ import annotations

import pytest
from support import GQL

from app.services.keys import create_api_token, create_project


async def test_no_or_bad_credentials(gql: GQL):
    for token in (None, "egt_" + "0" * 32, "garbage"):
        error = await gql.error("{ projects { id } }", token=token)
        assert error["extensions"]["code"] == "UNAUTHENTICATED"


async def test_ingest_key_reads_nothing(gql: GQL, app_project):
    error = await gql.error("{ projects { id } }", token=app_project.ingest_key.secret)
    assert error["extensions"]["code"] == "FORBIDDEN"


async def test_api_key_reads_its_project(gql: GQL, app_project):
    data = await gql("{ projects { id } }", token=app_project.api_key.secret)
    assert data["projects"] == [{"id": str(app_project.project.id)}]


async def test_other_projects_are_forbidden(gql: GQL, app_client, populated):
    sessions = app_client.runtime.database.sessions
    other = await create_project(sessions=sessions, name="Other")
    group_id = str(populated[0].group_id)
    event_id = str(populated[0].id)
    token = other.token.secret
    for query, variables in [
        ("query($id: ID!) { group(id: $id) { id } }", {"id": group_id}),
        ("query($id: ID!) { event(id: $id) { id } }", {"id": event_id}),
        (
            "query($p: ID) { groups(projectId: $p) { totalCount } }",
            {"p": str(populated[0].project_id)},
        ),
        ("mutation($id: ID!) { resolveGroup(id: $id) { id } }", {"id": group_id}),
        ("mutation($id: ID!) { deleteGroup(id: $id) { id } }", {"id": group_id}),
    ]:
        error = await gql.error(query, variables, token=token)
        assert error["extensions"]["code"] == "FORBIDDEN", query
    # Lists without a project are narrowed, never leaked.
    data = await gql(
        "{ groups { totalCount } events { totalCount } projects { slug } }", token=token
    )
    assert data == {
        "groups": {"totalCount": 0},
        "events": {"totalCount": 0},
        "projects": [{"slug": "other"}],
    }
    bulk = await gql(
        "mutation($ids: [ID!]!) { bulkUpdateGroups(ids: $ids, action: DELETE) { updatedCount failed { id } } }",
        {"ids": [group_id]},
        token=token,
    )
    assert bulk["bulkUpdateGroups"] == {"updatedCount": 0, "failed": [{"id": group_id}]}
    assert (await gql("query($id: ID!) { group(id: $id) { id } }", {"id": group_id}))["group"]


async def test_read_only_tokens_cannot_write(gql: GQL, app_client, populated):
    reader = await create_api_token(sessions=app_client.runtime.database.sessions, scopes=["read"])
    assert (await gql("{ groups { totalCount } }", token=reader.secret))["groups"][
        "totalCount"
    ] == 3
    error = await gql.error(
        "mutation($id: ID!) { resolveGroup(id: $id) { id } }",
        {"id": str(populated[0].group_id)},
        token=reader.secret,
    )
    assert error["extensions"]["code"] == "FORBIDDEN"


async def test_not_found_and_bad_input(gql: GQL, populated):
    assert (await gql('{ group(id: "424242") { id } }'))["group"] is None
    error = await gql.error('mutation { resolveGroup(id: "424242") { id } }')
    assert error["extensions"] == {"code": "NOT_FOUND", "field": "id"}
    error = await gql.error('{ groups(projectId: "9999") { totalCount } }')
    assert error["extensions"]["code"] in {"FORBIDDEN", "NOT_FOUND"}
    error = await gql.error("{ groups(first: 1000) { totalCount } }")
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "first"}
    error = await gql.error('{ groups(after: "not-a-cursor") { totalCount } }')
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "after"}
    page = await gql("{ groups(first: 1, sort: COUNT_DESC) { pageInfo { endCursor } } }")
    cursor = page["groups"]["pageInfo"]["endCursor"]
    error = await gql.error(
        "query($a: String) { groups(after: $a, sort: LAST_SEEN_DESC) { totalCount } }",
        {"a": cursor},
    )
    assert error["extensions"]["field"] == "after"
    error = await gql.error(
        "query($s: GroupSort) { groups(sort: $s) { totalCount } }", {"s": "SIDEWAYS"}
    )
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    error = await gql.error("{ groups { noSuchField } }")
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


async def test_limits(gql: GQL):
    nested = "id"
    for _ in range(8):
        nested = f"latestEvent {{ group {{ {nested} }} }}"
    deep = "{ groups { edges { node { " + nested + " } } } }"
    error = await gql.error(deep)
    assert "exceeds maximum operation depth" in error["message"]
    aliases = "{ " + " ".join(f"a{i}: projects {{ id }}" for i in range(40)) + " }"
    error = await gql.error(aliases)
    assert "aliases" in error["message"]
    # Validation results are cached by query text: the limits hold the second time too.
    assert "exceeds maximum operation depth" in (await gql.error(deep))["message"]
    assert "aliases" in (await gql.error(aliases))["message"]


async def test_a_query_text_is_parsed_and_validated_once(gql: GQL, monkeypatch):
    """Validating costs more than reading a page of groups; the limits' rules must stay
    the same classes from request to request, or every request misses the cache."""
    import strawberry.schema.schema as executor

    calls = {"parse": 0, "validate": 0}

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return call

    # Strawberry's own parse runs only when no cache gave the document.
    monkeypatch.setattr(executor, "parse", counted("parse", executor.parse))
    monkeypatch.setattr(executor, "validate", counted("validate", executor.validate))
    query = "query Once($first: Int) { groups(first: $first) { totalCount } }"
    for first in (1, 2, 3):
        await gql(query, {"first": first})
    assert calls == {"parse": 0, "validate": 1}


async def test_get_queries_but_not_mutations(gql: GQL, app_project):
    headers = {"Authorization": f"Bearer {app_project.token.secret}"}
    http = gql.client.http
    ok = await http.get("/graphql", params={"query": "{ projects { slug } }"}, headers=headers)
    assert ok.json() == {"data": {"projects": [{"slug": "app-project"}]}}
    refused = await http.get(
        "/graphql",
        params={"query": 'mutation { createProject(name: "x") { dsn } }'},
        headers=headers,
    )
    assert refused.status_code in {400, 405}


async def test_graphiql_and_no_batching(gql: GQL, app_project):
    http = gql.client.http
    page = await http.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    batch = await http.post(
        "/graphql",
        json=[{"query": "{ projects { id } }"}, {"query": "{ projects { id } }"}],
        headers={"Authorization": f"Bearer {app_project.token.secret}"},
    )
    assert batch.status_code == 400


@pytest.mark.parametrize("graphiql", [False])
async def test_graphiql_can_be_switched_off(settings, graphiql: bool):
    import httpx
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    app = create_app(settings.model_copy(update={"graphiql": graphiql}))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            page = await http.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 404


async def test_subscription_over_http_is_refused_clearly(gql: GQL):
    error = await gql.error("subscription { groupCreated { id } }")
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "WebSocket" in error["message"]


@pytest.mark.parametrize("ref", ["99999999999", "²", "-1", "1e3"])
async def test_ids_that_cannot_name_a_row(gql: GQL, ref: str):
    error = await gql.error("mutation($id: ID!) { resolveGroup(id: $id) { id } }", {"id": ref})
    assert error["extensions"] == {"code": "NOT_FOUND", "field": "id"}
