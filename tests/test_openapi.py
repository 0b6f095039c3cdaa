"""openapi.json is the REST contract: current with the code, valid OpenAPI 3.1, complete
(every REST route is in it), and accurate enough for a schema-driven fuzzer to drive the
app through it without a single server error.

The fuzzer runs a bounded number of examples per operation (ERRORGRAPH_FUZZ_EXAMPLES,
10 by default, derandomized so that CI is repeatable); raise it and set
ERRORGRAPH_FUZZ_RANDOM=1 to explore further locally.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import OpenAPIV31SpecValidator
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Mount, Route, WebSocketRoute
from support import ERRORGRAPH, ROOT, AppClient, cli_env

from app.config import Settings
from app.main import create_app
from app.openapi import document_text
from app.services.keys import CreatedProject
from rest_compat import infrai

REGENERATE = ".venv/bin/python -m app.openapi > openapi.json"
COMMITTED = ROOT / "openapi.json"
# Not REST: GraphQL has schema.graphql, and the dashboard is a web page.
NOT_REST = {"/graphql", "/"}
HTTP_METHODS = {"get", "post", "put", "delete", "patch"}


def committed() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(COMMITTED.read_text())
    return document


def test_committed_document_is_current():
    generated = subprocess.run(
        [sys.executable, "-m", "app.openapi"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert generated == document_text()
    assert generated == COMMITTED.read_text(), f"openapi.json is stale: run {REGENERATE}"


async def test_served_document_is_the_committed_one(app_client: AppClient):
    response = await app_client.http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == committed()


def test_document_is_valid_openapi_3_1():
    document = committed()
    assert document["openapi"].startswith("3.1.")
    OpenAPIV31SpecValidator(document).validate()


def _documented_path(path: str) -> str:
    """A route's path as the document writes it: `{project_id:int}` → `{project_id}`."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def test_every_rest_route_is_documented(settings: Settings):
    document = committed()
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    served: set[tuple[str, str]] = set()
    for route in create_app(settings).routes:
        if isinstance(route, WebSocketRoute | Mount) or not isinstance(route, Route):
            continue
        path = _documented_path(route.path)
        if path in NOT_REST:
            continue
        if route.methods is not None:
            methods = route.methods
        elif isinstance(route.app, infrai.Capability):
            methods = set(route.app.methods)
        else:
            continue  # Infrai's catch-all: 404 in its own shape for every other path
        if path + "/" in document["paths"]:
            continue  # the same endpoint without its trailing slash
        served |= {(path, method.lower()) for method in methods if method.lower() in HTTP_METHODS}
    assert served - documented == set(), (
        f"routes missing from openapi.json: describe them in app/openapi.py, then {REGENERATE}"
    )
    assert documented - served == set(), "openapi.json documents routes that are not served"


def test_operations_say_how_they_authenticate():
    document = committed()
    schemes = set(document["components"]["securitySchemes"])
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert "security" in operation, f"{method.upper()} {path}"
            for requirement in operation["security"]:
                assert set(requirement) <= schemes, f"{method.upper()} {path}"


# --- What the fuzzer found -------------------------------------------------------------

# Valid ISO 8601 times whose date in UTC is before year 1 or after 9999: converting them
# raised OverflowError, a 500, on every endpoint that takes a time.
OUT_OF_RANGE = ("0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59-00:01")


@pytest.mark.parametrize("moment", OUT_OF_RANGE)
async def test_times_without_a_utc_date_are_refused(
    app_client: AppClient, app_project: CreatedProject, moment: str
):
    http = app_client.http
    ingest = app_project.ingest_key.secret
    project_id = app_project.project.id
    event = {
        "api_key": ingest,
        "event_id": "evt_range",
        "timestamp": moment,
        "type": "exception",
        "exception": {"type": "TypeError", "message": "x"},
    }
    single = await http.post("/api/v1/errors", json=event)
    assert single.status_code == 422
    assert single.json()["detail"][0]["loc"] == ["body", "timestamp"]

    batch = await http.post("/api/v1/errors/batch", json=[event])
    assert batch.status_code == 202
    [result] = batch.json()["results"]
    assert result["status"] == "rejected"
    assert result["reason"].startswith("timestamp:")

    sentry = await http.post(
        f"/api/{project_id}/store/?sentry_key={ingest}", json={"timestamp": moment, "message": "x"}
    )
    assert sentry.status_code == 400
    assert "timestamp" in sentry.json()["detail"]

    bearer = {"Authorization": f"Bearer {app_project.api_key.secret}"}
    for name in ("since", "until"):
        listed = await http.get(
            "/v1/errors/list", params={"filter": json.dumps({name: moment})}, headers=bearer
        )
        assert listed.status_code == 400
        assert listed.json()["error"]["field"] == f"filter.{name}"
        exported = await http.post(
            "/v1/errors/export", json={"filter": {name: moment}}, headers=bearer
        )
        assert exported.status_code == 400


# --- The fuzzer ------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("ERRORGRAPH_FUZZ_EXAMPLES", "20"))
DERANDOMIZE = os.environ.get("ERRORGRAPH_FUZZ_RANDOM") != "1"
COVERAGE = os.environ.get("ERRORGRAPH_FUZZ_COVERAGE") == "1"

# A Sentry envelope is text: newline-separated JSON headers and payloads.
schemathesis.serializer.alias("application/x-sentry-envelope", "text/plain")

schema = schemathesis.openapi.from_dict(
    committed(),
    config=schemathesis.Config.from_dict(
        {
            # Keys are put in by `FuzzTarget.authorize`: random ones only ever get a 401.
            "generation": {"allow-x00": True, "with-security-parameters": False},
            # The coverage phase (boundary values of every field, thousands of requests)
            # is for deeper runs.
            "phases": {"coverage": {"enabled": COVERAGE}},
        }
    ),
)


@dataclass
class FuzzTarget:
    """The app under the fuzzer, with a real project whose keys every request carries."""

    client: asgi.ASGIClient
    project: dict[str, Any]

    def authorize(self, case: schemathesis.Case) -> None:
        """Put the project's real key where each dialect reads it, so that requests get
        past authentication into the code behind it."""
        path = case.operation.path
        ingest, api_key = self.project["ingest_key"], self.project["api_key"]
        if path.startswith("/api/v1/errors"):
            items = case.body if isinstance(case.body, list) else [case.body]
            for item in items:
                if isinstance(item, dict):
                    item["api_key"] = ingest
        elif path.startswith("/observe/"):
            case.headers["ENV-KEY"] = ingest
        elif path in ("/submit", "/log"):
            # The listing of /log needs `read`: the API key has it, and may ingest too.
            case.query["_s"] = api_key
        elif path.startswith("/api/{project_id}/"):
            case.path_parameters["project_id"] = self.project["id"]
            case.query["sentry_key"] = ingest
        elif path.startswith("/api/v3/projects/"):
            case.path_parameters["project_id"] = self.project["id"]
            case.query["key"] = ingest
        elif path.startswith(("/api/errors", "/api/projects")):
            case.headers["X-API-Key"] = api_key
        elif path.startswith(("/v1/errors/", "/api/v1/releases/")):
            case.headers["Authorization"] = f"Bearer {api_key}"
        elif path.startswith("/export/"):
            case.headers["Authorization"] = f"Bearer {self.project['token']}"


def _seed(client: asgi.ASGIClient, project: dict[str, Any]) -> None:
    """A few issues to read, resolve and delete, sent the way clients send them."""
    for number in range(3):
        response = client.post(
            "/api/errors",
            headers={"X-API-Key": project["api_key"]},
            json={
                "exception_type": f"SeedError{number}",
                "message": f"seed {number}",
                "traceback": 'Traceback (most recent call last):\n  File "app.py", line '
                f"{number + 1}, in handler\nSeedError{number}: seed {number}",
                "request_url": "/api/users",
                "user_id": "user-42",
            },
        )
        assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    fuzz_settings = Settings(
        database_url=f"sqlite+aiosqlite:///{workdir / 'errorgraph.db'}",
        broadcast_url="memory://",
        # Thousands of requests from one address: per-address limits would answer most of
        # them 429 and leave the code behind untested.
        client_rate_limits={"default": "", "error_tracker": ""},
        _env_file=None,  # type: ignore[call-arg]
    )
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "Fuzz", "--json"],
        env=cli_env(fuzz_settings),
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    project = json.loads(created.stdout)
    app = create_app(fuzz_settings)
    # The fuzzer's ASGI client runs the app, lifespan included, on an event loop of its
    # own; nothing here shares a loop with pytest's.
    try:
        with asgi.get_client(app) as client:
            _seed(client, project)
            yield FuzzTarget(client=client, project=project)
    finally:
        asgi.shutdown_lifespans()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=list(HealthCheck),
)
def test_fuzz(case: schemathesis.Case, fuzz_target: FuzzTarget):
    fuzz_target.authorize(case)
    response = case.call(session=fuzz_target.client)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
