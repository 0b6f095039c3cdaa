"""Source maps: uploaded over REST and GraphQL, applied to the JavaScript frames of the
events of their release (fixtures: tests/fixtures/sourcemaps, two minifiers' builds of
one source)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from support import ERRORGRAPH

from app.domain.stacktrace import parse_stacktrace
from app.models import Event
from app.services import sourcemaps as sourcemap_service
from app.services.keys import CreatedProject, create_project, create_project_key
from rest_compat import sourcemaps as sourcemap_routes

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sourcemaps"
BUNDLE_URL = "https://shop.example.com/static/app.min.js"

EVENT_QUERY = """
query ($id: ID!) {
  event(id: $id) {
    release groupId
    exception {
      type value
      frames {
        function filename absPath lineno colno inApp contextLine preContext postContext
        minified { function filename absPath lineno colno }
      }
    }
  }
}
"""


def map_bytes(build: str) -> bytes:
    return (FIXTURES / build / "app.min.js.map").read_bytes()


def stack(build: str) -> str:
    return (FIXTURES / build / "stack.txt").read_text()


def proliferate_event(key: str, event_id: str, release: str, build: str) -> dict[str, Any]:
    return {
        "api_key": key,
        "event_id": event_id,
        "timestamp": "2026-03-01T12:00:00Z",
        "type": "exception",
        "release": release,
        "exception": {
            "type": "RangeError",
            "message": "quantity must be positive for B-200, got 0",
            "stack": stack(build),
        },
    }


def upload_path(release: str) -> str:
    return f"/api/v1/releases/{release}/sourcemaps"


async def upload(
    app_client,
    key: str | None,
    *,
    release: str = "shop@1.0.0",
    build: str = "esbuild",
    url: str | None = BUNDLE_URL,
    data: dict[str, str] | None = None,
) -> httpx.Response:
    fields = dict(data or {})
    if url is not None:
        fields["url"] = url
    return await app_client.http.post(
        upload_path(release),
        files={"sourcemap": ("app.min.js.map", map_bytes(build), "application/json")},
        data=fields,
        headers={"Authorization": f"Bearer {key}"} if key else {},
    )


# --- end to end --------------------------------------------------------------------------


def _cli_project(live_server, tmp_path: Path) -> dict[str, Any]:
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "shop", "--json"],
        env=live_server.env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    return json.loads(created.stdout)


def _curl_upload(
    live_server, release: str, fields: list[str], key: str | None = None
) -> dict[str, Any]:
    command = ["curl", "-s", "-w", "\n%{http_code}", "-X", "POST"]
    if key:
        command += ["-H", f"Authorization: Bearer {key}"]
    for field in fields:
        command += ["-F", field]
    command.append(f"{live_server.base_url}/api/v1/releases/{release}/sourcemaps")
    output = subprocess.run(command, capture_output=True, text=True, check=True)
    body, status = output.stdout.rsplit("\n", 1)
    assert status == "201", output.stdout
    return json.loads(body)


def test_two_builds_resolve_and_group_as_one_over_real_http(live_server, tmp_path):
    """Upload each build's map with curl, send each build's real V8 stack through the
    Proliferate API with its release, and read the events back over GraphQL."""
    project = _cli_project(live_server, tmp_path)
    base = live_server.base_url
    first = _curl_upload(
        live_server,
        "shop@1.0.0",
        [f"sourcemap=@{FIXTURES / 'esbuild' / 'app.min.js.map'}", f"url={BUNDLE_URL}"],
        key=project["api_key"],
    )
    assert first["url"] == BUNDLE_URL and first["name"] == "app.min.js.map"
    # The second build: its key in the form, its file named by path on any host.
    second = _curl_upload(
        live_server,
        "shop@1.0.1",
        [
            f"sourcemap=@{FIXTURES / 'terser' / 'app.min.js.map'}",
            "url=~/static/app.min.js",
            f"api_key={project['api_key']}",
        ],
    )
    assert second["release"] == "shop@1.0.1"

    sent = [
        ("evt-a", "shop@1.0.0", "esbuild"),
        ("evt-b", "shop@1.0.1", "terser"),
        ("evt-c", "shop@0.9.0", "esbuild"),  # a release without maps
    ]
    for event_id, release, build in sent:
        response = httpx.post(
            base + "/api/v1/errors",
            json=proliferate_event(project["ingest_key"], event_id, release, build),
        )
        assert response.status_code == 202, response.text

    def event(event_id: str) -> dict[str, Any]:
        response = httpx.post(
            base + "/graphql",
            json={"query": EVENT_QUERY, "variables": {"id": event_id}},
            headers={"Authorization": f"Bearer {project['token']}"},
        )
        return response.json()["data"]["event"]

    a, b, c = event("evt-a"), event("evt-b"), event("evt-c")
    assert a["groupId"] == b["groupId"] != c["groupId"]
    for resolved, minified_name in ((a, "i"), (b, "n")):
        crash = resolved["exception"][-1]["frames"][-1]
        assert crash["function"] == "lineTotal"
        assert (crash["filename"], crash["lineno"], crash["colno"]) == ("src/cart.js", 19, 11)
        assert crash["absPath"] == "https://shop.example.com/src/cart.js"
        assert crash["contextLine"].strip().startswith("throw new RangeError(")
        assert crash["preContext"][-1] == "  if (!(item.quantity > 0)) {"
        assert crash["minified"]["function"] == minified_name
        assert crash["minified"]["absPath"] == BUNDLE_URL
        assert [f["function"] for f in resolved["exception"][-1]["frames"][-4:]] == [
            "onCheckoutClick",
            "formatReceipt",
            "total",
            "lineTotal",
        ]
    unresolved = c["exception"][-1]["frames"][-1]
    assert unresolved["function"] == "i" and unresolved["minified"] is None


# --- REST management ---------------------------------------------------------------------


async def test_upload_list_replace_delete(app_client, app_project: CreatedProject):
    key = app_project.api_key.secret
    created = await upload(app_client, key)
    assert created.status_code == 201, created.text
    answer = created.json()
    assert answer["release"] == "shop@1.0.0"
    assert answer["size"] == len(map_bytes("esbuild"))
    other = await upload(app_client, key, url="~/static/vendor.min.js")
    assert other.status_code == 201

    listed = await app_client.http.get(upload_path("shop@1.0.0") + f"?api_key={key}")
    assert listed.status_code == 200
    assert [m["url"] for m in listed.json()["sourcemaps"]] == [BUNDLE_URL, "~/static/vendor.min.js"]
    assert listed.json()["release"] == "shop@1.0.0"

    replaced = await upload(app_client, key, build="terser")
    assert replaced.status_code == 201
    assert replaced.json()["id"] == answer["id"]
    assert replaced.json()["size"] == len(map_bytes("terser"))

    headers = {"Authorization": f"Bearer {key}"}
    path = f"{upload_path('shop@1.0.0')}/{answer['id']}"
    assert (await app_client.http.delete(path, headers=headers)).status_code == 204
    assert (await app_client.http.delete(path, headers=headers)).status_code == 404
    listed = await app_client.http.get(upload_path("shop@1.0.0"), headers=headers)
    assert [m["url"] for m in listed.json()["sourcemaps"]] == ["~/static/vendor.min.js"]


async def test_a_deleted_or_replaced_map_applies_at_once(app_client, app_project: CreatedProject):
    key = app_project.api_key.secret
    created = (await upload(app_client, key)).json()
    path = "/api/v1/errors"
    event = proliferate_event(app_project.ingest_key.secret, "e1", "shop@1.0.0", "esbuild")
    assert (await app_client.http.post(path, json=event)).status_code == 202
    await app_client.http.delete(
        f"{upload_path('shop@1.0.0')}/{created['id']}", headers={"Authorization": f"Bearer {key}"}
    )
    event = proliferate_event(app_project.ingest_key.secret, "e2", "shop@1.0.0", "esbuild")
    assert (await app_client.http.post(path, json=event)).status_code == 202
    gql_headers = {"Authorization": f"Bearer {app_project.token.secret}"}
    functions = []
    for event_id in ("e1", "e2"):
        response = await app_client.http.post(
            "/graphql",
            json={"query": EVENT_QUERY, "variables": {"id": event_id}},
            headers=gql_headers,
        )
        functions.append(
            response.json()["data"]["event"]["exception"][-1]["frames"][-1]["function"]
        )
    assert functions == ["lineTotal", "i"]


async def test_url_defaults_to_the_maps_file_member(app_client, app_project: CreatedProject):
    document = json.loads(map_bytes("esbuild"))
    document["file"] = "app.min.js"
    response = await app_client.http.post(
        upload_path("1.0"),
        files={"sourcemap": ("m.map", json.dumps(document).encode(), "application/json")},
        headers={"Authorization": f"Bearer {app_project.api_key.secret}"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["url"] == "app.min.js"


async def test_map_as_a_text_field_and_a_release_with_a_slash(
    app_client, app_project: CreatedProject
):
    response = await app_client.http.post(
        "/api/v1/releases/web%2F2026.03/sourcemaps",
        files={"name": (None, "bundle map")},
        data={"sourcemap": map_bytes("esbuild").decode(), "url": "app.min.js"},
        headers={"Authorization": f"Bearer {app_project.api_key.secret}"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["release"] == "web/2026.03"
    assert response.json()["name"] == "bundle map"


async def test_maps_belong_to_the_keys_project(app_client, app_project: CreatedProject):
    created = (await upload(app_client, app_project.api_key.secret)).json()
    other = await create_project(sessions=app_client.runtime.database.sessions, name="other")
    headers = {"Authorization": f"Bearer {other.api_key.secret}"}
    listed = await app_client.http.get(upload_path("shop@1.0.0"), headers=headers)
    assert listed.json()["sourcemaps"] == []
    deleted = await app_client.http.delete(
        f"{upload_path('shop@1.0.0')}/{created['id']}", headers=headers
    )
    assert deleted.status_code == 404
    wrong_release = await app_client.http.delete(
        f"{upload_path('shop@2')}/{created['id']}",
        headers={"Authorization": f"Bearer {app_project.api_key.secret}"},
    )
    assert wrong_release.status_code == 404


async def test_keys_and_scopes(app_client, app_project: CreatedProject):
    assert (await upload(app_client, None)).status_code == 401
    assert (await upload(app_client, "sk_nope")).status_code == 401
    # The ingest key that browsers carry may not upload maps.
    refused = await upload(app_client, app_project.ingest_key.secret)
    assert refused.status_code == 403
    differ = await upload(
        app_client, app_project.api_key.secret, data={"api_key": app_project.ingest_key.secret}
    )
    assert differ.status_code == 401
    assert "differ" in differ.json()["detail"]
    read_only = await create_project_key(
        sessions=app_client.runtime.database.sessions,
        project_id=app_project.project.id,
        scopes=["read"],
    )
    assert (await upload(app_client, read_only.secret)).status_code == 403
    listed = await app_client.http.get(upload_path("1") + f"?api_key={read_only.secret}")
    assert listed.status_code == 200
    assert (await app_client.http.get(upload_path("1"))).status_code == 401
    deleted = await app_client.http.delete(
        upload_path("1") + "/1", headers={"Authorization": f"Bearer {read_only.secret}"}
    )
    assert deleted.status_code == 403


async def test_bad_uploads_name_the_field(app_client, app_project: CreatedProject):
    key = app_project.api_key.secret
    headers = {"Authorization": f"Bearer {key}"}
    http = app_client.http

    not_multipart = await http.post(upload_path("1"), json={"url": "x"}, headers=headers)
    assert (not_multipart.status_code, not_multipart.json()["field"]) == (400, "Content-Type")

    no_map = await http.post(
        upload_path("1"), data={"url": "a.js"}, files={"x": ("x", b"1")}, headers=headers
    )
    assert (no_map.status_code, no_map.json()["field"]) == (400, "sourcemap")

    no_url = await http.post(
        upload_path("1"), files={"sourcemap": ("m.map", map_bytes("esbuild"))}, headers=headers
    )
    assert (no_url.status_code, no_url.json()["field"]) == (400, "url")

    for content in (b"{}", b"not json", b'{"version": 3, "sources": [], "mappings": ""}'):
        bad = await http.post(
            upload_path("1"),
            files={"sourcemap": ("m.map", content)},
            data={"url": "a.js"},
            headers=headers,
        )
        assert (bad.status_code, bad.json()["field"]) == (400, "sourcemap"), bad.text

    url_as_file = await http.post(
        upload_path("1"),
        files={"sourcemap": ("m.map", map_bytes("esbuild")), "url": ("u", b"a.js")},
        headers=headers,
    )
    assert (url_as_file.status_code, url_as_file.json()["field"]) == (400, "url")

    long_url = await upload(app_client, key, url="x" * 1001)
    assert (long_url.status_code, long_url.json()["field"]) == (400, "url")
    long_release = await upload(app_client, key, release="r" * 201)
    assert (long_release.status_code, long_release.json()["field"]) == (400, "release")

    garbled = await http.post(
        upload_path("1"),
        content=b'--xyz\r\nContent-Disposition: form-data; name="url"\r\n\r\na.js',
        headers={**headers, "Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert garbled.status_code == 400


async def test_a_map_over_the_limit_is_413(app_client, app_project: CreatedProject, monkeypatch):
    limit = len(map_bytes("esbuild")) - 1
    monkeypatch.setattr(sourcemap_service, "MAX_SOURCE_MAP_BYTES", limit)
    over = await upload(app_client, app_project.api_key.secret)
    assert over.status_code == 413
    # The body itself is refused as it arrives, before the form is read.
    monkeypatch.setattr(sourcemap_routes, "MAX_SOURCE_MAP_BYTES", limit)
    monkeypatch.setattr(sourcemap_routes, "MAX_FORM_OVERHEAD", 0)
    assert (await upload(app_client, app_project.api_key.secret)).status_code == 413


# --- GraphQL ----------------------------------------------------------------------------

UPLOAD = """
mutation ($projectId: ID!, $release: String!, $url: String!, $map: String!) {
  uploadSourceMap(projectId: $projectId, release: $release, url: $url, sourceMap: $map) {
    id projectId release url name size createdAt
  }
}
"""
LIST = "query ($p: ID!, $r: String!) { sourceMaps(projectId: $p, release: $r) { id url } }"
DELETE = "mutation ($id: ID!) { deleteSourceMap(id: $id) { id url } }"


async def test_graphql_upload_list_delete(gql, app_project: CreatedProject):
    project_id = str(app_project.project.id)
    variables = {
        "projectId": project_id,
        "release": "shop@1.0.0",
        "url": BUNDLE_URL,
        "map": map_bytes("esbuild").decode(),
    }
    uploaded = (await gql(UPLOAD, variables))["uploadSourceMap"]
    assert uploaded["projectId"] == project_id
    assert uploaded["size"] == len(map_bytes("esbuild"))
    listed = await gql(LIST, {"p": project_id, "r": "shop@1.0.0"})
    assert listed["sourceMaps"] == [{"id": uploaded["id"], "url": BUNDLE_URL}]
    assert (await gql(LIST, {"p": project_id, "r": "other"}))["sourceMaps"] == []
    deleted = await gql(DELETE, {"id": uploaded["id"]})
    assert deleted["deleteSourceMap"] == {"id": uploaded["id"], "url": BUNDLE_URL}
    error = await gql.error(DELETE, {"id": uploaded["id"]})
    assert error["extensions"]["code"] == "NOT_FOUND"


async def test_graphql_refusals(gql, app_client, app_project: CreatedProject):
    project_id = str(app_project.project.id)
    variables = {"projectId": project_id, "release": "1", "url": "a.js", "map": "{}"}
    error = await gql.error(UPLOAD, variables)
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "sourceMap"}

    good = {**variables, "map": map_bytes("esbuild").decode()}
    error = await gql.error(UPLOAD, {**good, "release": " "})
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "release"}
    uploaded = (await gql(UPLOAD, good))["uploadSourceMap"]

    read_only = await create_project_key(
        sessions=app_client.runtime.database.sessions,
        project_id=app_project.project.id,
        scopes=["read"],
    )
    error = await gql.error(UPLOAD, good, token=read_only.secret)
    assert error["extensions"]["code"] == "FORBIDDEN"
    error = await gql.error(DELETE, {"id": uploaded["id"]}, token=read_only.secret)
    assert error["extensions"]["code"] == "FORBIDDEN"
    assert (await gql(LIST, {"p": project_id, "r": "1"}, token=read_only.secret))["sourceMaps"]

    other = await create_project(sessions=app_client.runtime.database.sessions, name="other")
    for document, values in ((DELETE, {"id": uploaded["id"]}), (LIST, {"p": project_id, "r": "1"})):
        error = await gql.error(document, values, token=other.token.secret)
        assert error["extensions"]["code"] == "FORBIDDEN"
    error = await gql.error(UPLOAD, good, token=app_project.ingest_key.secret)
    assert error["extensions"]["code"] == "FORBIDDEN"


async def test_graphql_upload_applies_to_graphql_capture(gql, app_project: CreatedProject):
    project_id = str(app_project.project.id)
    await gql(
        UPLOAD,
        {
            "projectId": project_id,
            "release": "7",
            "url": "app.min.js",
            "map": map_bytes("terser").decode(),
        },
    )
    captured = await gql(
        """
        mutation ($input: CaptureExceptionInput!) {
          captureException(input: $input) { eventId }
        }
        """,
        {
            "input": {
                "projectId": project_id,
                "type": "RangeError",
                "stacktrace": stack("terser"),
                "release": "7",
            }
        },
    )
    event = (await gql(EVENT_QUERY, {"id": captured["captureException"]["eventId"]}))["event"]
    assert event["exception"][-1]["frames"][-1]["function"] == "lineTotal"


@pytest.mark.parametrize("build", ["esbuild", "terser"])
async def test_sentry_frames_resolve_too(app_client, app_project: CreatedProject, build: str):
    """Structured frames (a Sentry event) are resolved like frames parsed from text."""
    await upload(app_client, app_project.api_key.secret, release="r1", build=build)
    frames = [
        frame.model_dump(include={"abs_path", "filename", "function", "lineno", "colno", "in_app"})
        for frame in parse_stacktrace(stack(build))[0].frames
    ]
    body = {
        "event_id": "a" * 32,
        "release": "r1",
        "platform": "javascript",
        "exception": {"values": [{"type": "RangeError", "stacktrace": {"frames": frames}}]},
    }
    response = await app_client.http.post(
        f"/api/{app_project.project.id}/store/?sentry_key={app_project.ingest_key.secret}",
        json=body,
    )
    assert response.status_code == 200, response.text
    async with app_client.runtime.database.sessions() as session:
        stored = (await session.scalars(select(Event))).one()
    names = [frame["function"] for frame in stored.exceptions[0]["frames"]]  # type: ignore[index]
    assert names == [
        "process.processTimers",
        "listOnTimeout",
        "_onTimeout",
        "onCheckoutClick",
        "formatReceipt",
        "total",
        "lineTotal",
    ]
