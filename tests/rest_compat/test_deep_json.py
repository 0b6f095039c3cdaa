"""JSON nested deeper than events may keep is refused in each dialect's own error shape,
never a 500: JSON parsers accept a thousand levels, where code walking them recursed
into RecursionError. 64 levels of free-form data are kept (app.domain.event)."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from app.services.keys import CreatedProject

# Where the nested value goes: a placeholder in the body, replaced by the JSON text of
# `depth` nested lists (deeper than orjson writes, as a client may send it).
DEEP = "__deep__"


def with_depth(body: bytes, depth: int) -> bytes:
    return body.replace(b'"__deep__"', b"[" * depth + b"1" + b"]" * depth)


def sentry(project: CreatedProject, depth: int) -> dict[str, Any]:
    event = {"exception": {"values": [{"type": "E", "value": "v"}]}, "extra": {"x": DEEP}}
    body = b"{}\n" + b'{"type":"event"}\n' + with_depth(orjson.dumps(event), depth) + b"\n"
    return {
        "url": f"/api/{project.project.id}/envelope/",
        "content": gzip.compress(body),
        "headers": {
            "Content-Encoding": "gzip",
            "X-Sentry-Auth": f"Sentry sentry_key={project.ingest_key.secret}, sentry_version=7",
        },
    }


def proliferate(project: CreatedProject, depth: int) -> dict[str, Any]:
    body = {
        "api_key": project.ingest_key.secret,
        "event_id": "deep-1",
        "timestamp": datetime.now(UTC).isoformat(),
        "type": "exception",
        "exception": {"type": "E", "message": "m", "stack": "E: m\n    at f (a.js:1:1)"},
        "extra": {"x": DEEP},
    }
    return {"url": "/api/v1/errors", "content": with_depth(orjson.dumps(body), depth)}


def retack(project: CreatedProject, depth: int) -> dict[str, Any]:
    body = {"title": "E: m", "stack_trace": "E: m", "detail": DEEP}
    return {
        "url": "/observe/error-log/",
        "content": with_depth(orjson.dumps(body), depth),
        "headers": {"ENV-KEY": project.ingest_key.secret, "HTTP_X_USER_CONTEXT": "u1"},
    }


def infrai(project: CreatedProject, depth: int) -> dict[str, Any]:
    body = {"exception": {"type": "E", "message": "m"}, "context": {"x": DEEP}}
    return {
        "url": "/v1/errors/capture",
        "content": with_depth(orjson.dumps(body), depth),
        "headers": {"Authorization": f"Bearer {project.ingest_key.secret}"},
    }


def airbrake(project: CreatedProject, depth: int) -> dict[str, Any]:
    body = {"errors": [{"type": "E", "message": "m", "backtrace": []}], "params": {"x": DEEP}}
    return {
        "url": f"/api/v3/projects/{project.project.id}/notices?key={project.ingest_key.secret}",
        "content": with_depth(orjson.dumps(body), depth),
    }


@pytest.mark.parametrize("dialect", [sentry, proliferate, retack, infrai, airbrake])
async def test_deeply_nested_json_is_a_4xx_naming_the_depth(
    app_client, app_project: CreatedProject, dialect
):
    for depth in (100, 1000):
        request = dialect(app_project, depth)
        headers = {"Content-Type": "application/json", **request.pop("headers", {})}
        response = await app_client.http.post(**request, headers=headers)
        assert 400 <= response.status_code < 500, response.text
        assert "nested deeper than 64 levels" in response.text, response.text
    # The same request with shallow data is taken.
    request = dialect(app_project, 10)
    headers = {"Content-Type": "application/json", **request.pop("headers", {})}
    response = await app_client.http.post(**request, headers=headers)
    assert response.status_code < 300, response.text
