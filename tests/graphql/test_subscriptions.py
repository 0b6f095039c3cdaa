"""Subscriptions over a real uvicorn with real WebSocket clients: each subscription and
filter, auth failures, limits, a consumer that stops reading, 200 subscribers at once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from typing import Any

import httpx
import pytest
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport
from support import ERRORGRAPH, WSClient, running_server


@pytest.fixture
def live_env() -> dict[str, str]:
    return {
        "ERRORGRAPH_WS_CONNECTION_INIT_TIMEOUT": "1",
        "ERRORGRAPH_WS_MAX_SUBSCRIPTIONS": "3",
    }


def create_project(live_server: Any, name: str) -> dict[str, Any]:
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", name, "--json"],
        env=live_server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(created.stdout)


def create_read_token(live_server: Any) -> str:
    """A read token for every project, as `errorgraph token create` makes it."""
    created = subprocess.run(
        [ERRORGRAPH, "token", "create", "--scope", "read", "--json"],
        env=live_server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(created.stdout)["token"])


async def send_error(
    base_url: str,
    key: str,
    *,
    function: str = "processData",
    level: str = "error",
    environment: str = "production",
) -> str:
    event_id = uuid.uuid4().hex
    async with httpx.AsyncClient() as http:
        response = await http.post(
            base_url + "/api/v1/errors",
            json={
                "api_key": key,
                "event_id": event_id,
                "timestamp": "2026-03-01T12:00:00Z",
                "type": "exception",
                "level": level,
                "environment": environment,
                "exception": {
                    "type": "TypeError",
                    "message": f"boom in {function}",
                    "stack": f"TypeError: boom\n    at {function} (app.js:1:1)",
                },
            },
        )
    assert response.status_code == 202, response.text
    return event_id


async def graphql(base_url: str, token: str, query: str, variables: dict | None = None) -> dict:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            base_url + "/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {token}"},
        )
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture
def project(live_server: Any) -> dict[str, Any]:
    return create_project(live_server, "Live")


async def test_group_created_with_the_graphql_ws_client_library(live_server, project):
    """A real graphql-transport-ws client library receives a new issue."""
    transport = WebsocketsTransport(
        url=live_server.base_url.replace("http", "ws") + "/graphql",
        init_payload={"Authorization": f"Bearer {project['token']}"},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    subscription = gql("subscription { groupCreated { id title count project { slug } } }")
    async with Client(transport=transport) as session:
        stream = session.subscribe(subscription)
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.5)  # the subscription is registered before we ingest
        await send_error(live_server.base_url, project["ingest_key"])
        result = await asyncio.wait_for(first, 10)
        await stream.aclose()
    assert result["groupCreated"]["title"] == "TypeError: boom in processData"
    assert result["groupCreated"]["count"] == 1
    assert result["groupCreated"]["project"] == {"slug": "live"}


async def subscribed(
    live_server: Any, token: str, query: str, variables: dict | None = None
) -> WSClient:
    client = await (await WSClient.open(live_server.base_url, token)).acked()
    await client.subscribe("1", query, variables)
    await asyncio.sleep(0.3)
    return client


async def test_group_created_filters(live_server, project):
    other = create_project(live_server, "Other")
    queries = {
        "all": ("subscription { groupCreated { title } }", None),
        "project": (
            "subscription($p: ID) { groupCreated(projectId: $p) { title } }",
            {"p": str(project["id"])},
        ),
        "staging": ('subscription { groupCreated(environment: "staging") { title } }', None),
        "warning": ("subscription { groupCreated(level: WARNING) { title } }", None),
    }
    token = create_read_token(live_server)
    clients = {name: await subscribed(live_server, token, q, v) for name, (q, v) in queries.items()}
    await send_error(live_server.base_url, other["ingest_key"], function="inOther")
    await send_error(
        live_server.base_url, project["ingest_key"], function="inStaging", environment="staging"
    )
    await send_error(
        live_server.base_url, project["ingest_key"], function="aWarning", level="warning"
    )
    await send_error(
        live_server.base_url, project["ingest_key"], function="aWarning", level="warning"
    )

    async def titles(client: WSClient, count: int) -> list[str]:
        got = []
        for _ in range(count):
            message = await client.next()
            assert message["type"] == "next", message
            got.append(message["payload"]["data"]["groupCreated"]["title"])
        return got

    assert await titles(clients["all"], 3) == [
        "TypeError: boom in inOther",
        "TypeError: boom in inStaging",
        "TypeError: boom in aWarning",
    ]
    assert await titles(clients["project"], 2) == [
        "TypeError: boom in inStaging",
        "TypeError: boom in aWarning",
    ]
    assert await titles(clients["staging"], 1) == ["TypeError: boom in inStaging"]
    assert await titles(clients["warning"], 1) == ["TypeError: boom in aWarning"]
    # Nothing more arrives: the second warning joined an existing group.
    for client in clients.values():
        with pytest.raises(TimeoutError):
            await client.next(timeout=0.5)
        await client.close()


async def test_event_captured_and_group_updated(live_server, project):
    base, token = live_server.base_url, project["token"]
    events = await subscribed(
        live_server, token, "subscription { eventCaptured { eventId level group { count } } }"
    )
    warnings = await subscribed(
        live_server, token, "subscription { eventCaptured(level: WARNING) { eventId } }"
    )
    first_id = await send_error(base, project["ingest_key"], function="tracked")
    message = await events.next()
    group_id = None
    assert message["payload"]["data"]["eventCaptured"] == {
        "eventId": first_id,
        "level": "ERROR",
        "group": {"count": 1},
    }
    data = await graphql(base, token, "{ groups { edges { node { id } } } }")
    group_id = data["groups"]["edges"][0]["node"]["id"]

    by_group = await subscribed(
        live_server,
        token,
        "subscription($g: ID) { eventCaptured(groupId: $g) { eventId group { count } } }",
        {"g": group_id},
    )
    changes = await subscribed(
        live_server,
        token,
        "subscription($g: ID) { groupUpdated(groupId: $g) { kind groupId group { status count } } }",
        {"g": group_id},
    )
    await send_error(base, project["ingest_key"], function="elsewhere", level="warning")
    second = await send_error(base, project["ingest_key"], function="tracked")
    warning_message = await warnings.next()
    assert warning_message["payload"]["data"]["eventCaptured"]["eventId"] != first_id
    group_message = await by_group.next()
    assert group_message["payload"]["data"]["eventCaptured"] == {
        "eventId": second,
        "group": {"count": 2},
    }

    change = (await changes.next())["payload"]["data"]["groupUpdated"]
    assert change == {
        "kind": "NEW_EVENT",
        "groupId": group_id,
        "group": {"status": "UNRESOLVED", "count": 2},
    }
    await graphql(
        base, token, "mutation($id: ID!) { resolveGroup(id: $id) { id } }", {"id": group_id}
    )
    change = (await changes.next())["payload"]["data"]["groupUpdated"]
    assert change["kind"] == "STATUS" and change["group"]["status"] == "RESOLVED"
    await send_error(base, project["ingest_key"], function="tracked")
    change = (await changes.next())["payload"]["data"]["groupUpdated"]
    assert change["kind"] == "REGRESSION" and change["group"]["status"] == "UNRESOLVED"
    await graphql(
        base, token, "mutation($id: ID!) { deleteGroup(id: $id) { id } }", {"id": group_id}
    )
    change = (await changes.next())["payload"]["data"]["groupUpdated"]
    assert change == {"kind": "DELETED", "groupId": group_id, "group": None}
    for client in (events, warnings, by_group, changes):
        await client.close()


@pytest.mark.parametrize("credential", ["none", "bad", "ingest"])
async def test_bad_credentials_close_4403(live_server, project, credential: str):
    token = {"none": None, "bad": "egt_" + "0" * 32, "ingest": project["ingest_key"]}[credential]
    client = await WSClient.open(live_server.base_url, token)
    assert await client.close_code() == 4403


async def test_other_projects_messages_never_arrive(live_server, project):
    other = create_project(live_server, "Elsewhere")
    watcher = await subscribed(
        live_server, project["token"], "subscription { eventCaptured { eventId } }"
    )
    await send_error(live_server.base_url, other["ingest_key"])
    mine = await send_error(live_server.base_url, project["ingest_key"])
    message = await watcher.next()
    assert message["payload"]["data"]["eventCaptured"]["eventId"] == mine
    # Asking for the other project by id is refused.
    await watcher.subscribe(
        "2",
        "subscription($p: ID) { eventCaptured(projectId: $p) { eventId } }",
        {"p": str(other["id"])},
    )
    error = await watcher.next()
    assert error["id"] == "2"
    assert error["payload"]["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    await watcher.close()


async def test_connection_init_timeout_and_subscription_limit(live_server, project):
    silent = await WSClient.open(live_server.base_url, None, init=False)
    assert await silent.close_code() == 4408

    client = await (await WSClient.open(live_server.base_url, project["token"])).acked()
    for op in ("1", "2", "3"):
        await client.subscribe(op, "subscription { eventCaptured { eventId } }")
    await client.subscribe("4", "subscription { eventCaptured { eventId } }")
    refused = await client.next()
    assert refused["id"] == "4" and refused["type"] == "error"
    assert "limit" in refused["payload"][0]["message"]
    await client.close()


async def test_a_stalled_consumer_slows_nobody(live_server, project):
    stalled = await subscribed(
        live_server,
        project["token"],
        "subscription { eventCaptured { eventId message exception { value } } }",
    )
    fast = await subscribed(
        live_server, project["token"], "subscription { eventCaptured { eventId } }"
    )
    sent = [await send_error(live_server.base_url, project["ingest_key"]) for _ in range(200)]
    received = [(await fast.next())["payload"]["data"]["eventCaptured"]["eventId"] for _ in sent]
    assert received == sent
    # The stalled client never read; the server kept serving the other one and ingest.
    await stalled.close()
    await fast.close()


async def test_200_subscribers_all_get_the_new_issue(live_server, project):
    clients = await asyncio.gather(
        *(WSClient.open(live_server.base_url, project["token"]) for _ in range(200))
    )
    await asyncio.gather(*(client.acked() for client in clients))
    await asyncio.gather(
        *(client.subscribe("1", "subscription { groupCreated { title } }") for client in clients)
    )
    await asyncio.sleep(1)
    await send_error(live_server.base_url, project["ingest_key"], function="forEveryone")
    messages = await asyncio.gather(*(client.next(timeout=30) for client in clients))
    assert {m["payload"]["data"]["groupCreated"]["title"] for m in messages} == {
        "TypeError: boom in forEveryone"
    }
    assert len(messages) == 200
    await asyncio.gather(*(client.close() for client in clients))


async def test_legacy_protocol_is_off_by_default(live_server, project):
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    try:
        client = await WSClient.open(live_server.base_url, project["token"], protocol="graphql-ws")
        code = await client.close_code()
    except InvalidHandshake:
        return
    except ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else None
    assert code == 4406  # "Subprotocol not acceptable"


async def test_legacy_protocol_when_turned_on(settings, tmp_path):
    """With ERRORGRAPH_GRAPHQL_WS_LEGACY=true the old `graphql-ws` protocol works too."""
    with running_server(settings, tmp_path, {"ERRORGRAPH_GRAPHQL_WS_LEGACY": "true"}) as server:
        project = create_project(server, "Legacy")
        client = await WSClient.open(server.base_url, project["token"], protocol="graphql-ws")
        assert (await client.receive())["type"] == "connection_ack"
        await client.send(
            {
                "id": "1",
                "type": "start",
                "payload": {"query": "subscription { groupCreated { title } }"},
            }
        )
        await asyncio.sleep(0.3)
        await send_error(server.base_url, project["ingest_key"], function="legacy")
        while True:
            message = await client.receive()
            if message["type"] != "ka":
                break
        assert message["type"] == "data"
        assert message["payload"]["data"]["groupCreated"]["title"] == "TypeError: boom in legacy"
        await client.close()


async def metric(live_server: Any, name: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(live_server.base_url + "/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def test_identical_subscriptions_share_one_stream_per_viewer(live_server, project):
    base = live_server.base_url
    other = create_project(live_server, "Shared")
    everything = create_read_token(live_server)
    query = "subscription { eventCaptured { eventId } }"
    before = await metric(live_server, "errorgraph_subscriptions_open")
    # What the server's own listeners (alerts) take of one new issue, with no subscriber.
    delivered = await metric(live_server, "errorgraph_pubsub_delivered_total")
    await send_error(base, other["ingest_key"], function="unwatched")
    await asyncio.sleep(0.3)
    own = await metric(live_server, "errorgraph_pubsub_delivered_total") - delivered
    limited = [await subscribed(live_server, project["token"], query) for _ in range(2)]
    unlimited = [await subscribed(live_server, everything, query) for _ in range(3)]
    assert await metric(live_server, "errorgraph_subscriptions_open") == before + 5

    delivered = await metric(live_server, "errorgraph_pubsub_delivered_total")
    theirs = await send_error(base, other["ingest_key"], function="inOther")
    for client in unlimited:
        assert (await client.next())["payload"]["data"]["eventCaptured"]["eventId"] == theirs
    # Five subscribers, two streams (one per viewer): two more deliveries than none.
    assert await metric(live_server, "errorgraph_pubsub_delivered_total") == delivered + own + 2
    mine = await send_error(base, project["ingest_key"])
    for client in [*limited, *unlimited]:
        assert (await client.next())["payload"]["data"]["eventCaptured"]["eventId"] == mine

    # The member that started a stream leaves; the others go on, each with its own ids.
    await limited[0].send({"id": "1", "type": "complete"})
    await limited[1].subscribe("2", query)
    await asyncio.sleep(0.3)
    again = await send_error(base, project["ingest_key"])
    got = [await limited[1].next(), await limited[1].next()]
    assert sorted(m["id"] for m in got) == ["1", "2"]
    assert {m["payload"]["data"]["eventCaptured"]["eventId"] for m in got} == {again}
    for client in unlimited:
        assert (await client.next())["payload"]["data"]["eventCaptured"]["eventId"] == again
    with pytest.raises(TimeoutError):
        await limited[0].next(timeout=0.5)

    for client in [*limited, *unlimited]:
        await client.close()
    for _ in range(50):
        if await metric(live_server, "errorgraph_subscriptions_open") == before:
            break
        await asyncio.sleep(0.1)
    assert await metric(live_server, "errorgraph_subscriptions_open") == before
