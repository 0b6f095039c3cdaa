"""`/submit` and `/log` exactly as the ErrorStack document describes them."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import sqlite3
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from support import ERRORGRAPH

from app.models import Event, Group, LogMessage, utcnow
from app.services.keys import CreatedProject, create_project_key, revoke_project_key
from app.services.logs import append_log_message
from rest_compat.errorstack import PIXEL

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "errorstack"
NO_STORE = "no-store, no-cache, must-revalidate, max-age=0"


async def stored_events(app_client) -> list[Event]:
    async with app_client.runtime.database.sessions() as session:
        return list((await session.scalars(select(Event).order_by(Event.id))).all())


async def stored_logs(app_client) -> list[LogMessage]:
    async with app_client.runtime.database.sessions() as session:
        return list((await session.scalars(select(LogMessage).order_by(LogMessage.id))).all())


def assert_pixel(response: httpx.Response, status: int) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "image/gif"
    assert response.content == PIXEL
    assert response.headers["cache-control"] == NO_STORE
    assert response.headers["pragma"] == "no-cache"


def test_the_pixel_is_a_1x1_transparent_gif():
    assert PIXEL[:6] == b"GIF89a"
    assert int.from_bytes(PIXEL[6:8], "little") == int.from_bytes(PIXEL[8:10], "little") == 1
    control = PIXEL.index(b"\x21\xf9\x04")
    assert PIXEL[control + 3] & 1 == 1  # transparency flag
    assert PIXEL[-1:] == b";"


# --- /submit ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(path.name for path in FIXTURES.glob("*.json")))
async def test_submissions_map_onto_events(app_client, app_project: CreatedProject, name: str):
    case = json.loads((FIXTURES / name).read_text())
    params = {
        key: app_project.ingest_key.secret if key == "_s" else value
        for key, value in case["params"].items()
    }
    if case["method"] == "GET":
        response = await app_client.http.get("/submit", params=params)
    else:
        # As an HTML form posts it: the stack key and `_r` are form fields too.
        response = await app_client.http.post("/submit", data=params)
    if params["_r"] == "json":
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == NO_STORE
        assert response.json()["status"] == "ok"
    else:
        assert_pixel(response, 200)

    [event] = await stored_events(app_client)
    async with app_client.runtime.database.sessions() as session:
        group = await session.get(Group, event.group_id)
    expect = dict(case["expect"])
    assert group is not None and group.title == expect.pop("group_title")
    if "timestamp" in expect:
        assert event.timestamp.isoformat() == expect.pop("timestamp")
    for field, value in expect.items():
        assert getattr(event, field) == value, field
    assert event.dialect == "errorstack"
    sent = {key: value for key, value in case["params"].items() if not key.startswith("_")}
    assert event.extra == sent


async def test_only_the_stack_key_is_required(app_client, app_project: CreatedProject):
    """The document's beacon: `/submit?_s=KEY&_r=img` and nothing else."""
    response = await app_client.http.get(f"/submit?_s={app_project.ingest_key.secret}&_r=img")
    assert_pixel(response, 200)
    [event] = await stored_events(app_client)
    assert event.type == "exception" and not event.extra


async def test_the_default_answer_is_the_pixel(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        "/submit", data={"_s": app_project.ingest_key.secret, "Msg": "boom"}
    )
    assert_pixel(response, 200)
    response = await app_client.http.get(
        "/submit", params={"_s": app_project.ingest_key.secret, "_r": "xml", "Msg": "boom"}
    )
    assert_pixel(response, 200)
    assert len(await stored_events(app_client)) == 2


async def test_json_body_and_query_wins(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        "/submit?_r=json&Msg=From+the+query",
        json={"_s": app_project.ingest_key.secret, "Msg": "From the body", "Line": 7},
    )
    assert response.status_code == 200, response.text
    [event] = await stored_events(app_client)
    assert event.exception_value == "From the query"
    assert event.extra == {"Msg": "From the query", "Line": 7}


@pytest.mark.parametrize("answer", ["json", "img"])
async def test_key_errors(app_client, app_project: CreatedProject, answer: str):
    """Errors are answered in the form asked for: JSON with the reason, or the pixel with
    the status (and the reason in a header)."""
    sessions = app_client.runtime.database.sessions
    read_only = await create_project_key(
        sessions=sessions, project_id=app_project.project.id, scopes=["read"]
    )
    revoked = await create_project_key(
        sessions=sessions, project_id=app_project.project.id, scopes=["ingest"]
    )
    await revoke_project_key(sessions=sessions, key_id=revoked.key.id)
    cases = [
        ({}, 401, "the stack key _s is missing"),
        ({"_s": ""}, 401, "the stack key _s is missing"),
        ({"_s": "pk_nope"}, 401, "invalid key"),
        ({"_s": revoked.secret}, 401, "key revoked"),
        ({"_s": read_only.secret}, 403, "this key has no 'ingest' scope"),
    ]
    for params, status, detail in cases:
        for method in ("GET", "POST"):
            response = await app_client.http.request(
                method, "/submit", params={"_r": answer, "Msg": "x", **params}
            )
            if answer == "json":
                assert response.status_code == status
                assert response.json() == {"status": "error", "detail": detail, "field": "_s"}
                assert response.headers["cache-control"] == NO_STORE
            else:
                assert_pixel(response, status)
                assert response.headers["x-error-reason"] == detail
    assert await stored_events(app_client) == []


@pytest.mark.parametrize(
    ("content", "content_type", "query", "status", "expected"),
    [
        (b"", "", "Msg=%FF", 400, "query string is not valid UTF-8"),
        (b"Msg=%FF", "application/x-www-form-urlencoded", "", 400, "form body is not valid UTF-8"),
        (b"Msg=\xc3\x28", "application/x-www-form-urlencoded", "", 400, "not valid UTF-8"),
        (b"{not json", "application/json", "", 400, "not valid JSON"),
        (b'{"Msg": "\xff"}', "application/json", "", 400, "not valid JSON"),
        (b'["Msg"]', "application/json", "", 400, "must be an object, not list"),
        (b"<Msg/>", "application/xml", "", 415, 'unsupported media type "application/xml"'),
        (b"Msg=" + b"x" * 1_100_000, "application/x-www-form-urlencoded", "", 413, "larger than"),
        (
            b'--b\r\nContent-Disposition: form-data; name="Msg"; filename="m.txt"\r\n\r\n'
            b"x\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
            "",
            400,
            "Too many files",
        ),
    ],
)
@pytest.mark.parametrize("path", ["/submit", "/log"])
async def test_bad_input_is_4xx_with_the_reason(
    app_client, app_project, path, content, content_type, query, status, expected
):
    key = app_project.api_key.secret
    url = f"{path}?_s={key}&_r=json" + ("&" + query if query else "")
    headers = {"content-type": content_type} if content_type else {}
    response = await app_client.http.post(url, content=content, headers=headers)
    assert response.status_code == status
    assert expected in response.json()["detail"]
    pixel = await app_client.http.post(
        url.replace("_r=json", "_r=img"), content=content, headers=headers
    )
    assert_pixel(pixel, status)
    assert await stored_events(app_client) == []
    assert await stored_logs(app_client) == []


async def test_multipart_form(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        "/submit",
        files={"_s": (None, app_project.ingest_key.secret), "_r": (None, "json")}
        | {"Msg": (None, "ReferenceError: foo is not defined")},
    )
    assert response.status_code == 200, response.text
    [event] = await stored_events(app_client)
    assert (event.exception_type, event.exception_value) == ("ReferenceError", "foo is not defined")


@pytest.mark.parametrize("path", ["/submit", "/log"])
async def test_cors_preflight(app_client, path: str):
    response = await app_client.http.options(
        path,
        headers={
            "Origin": "https://shop.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert {"GET", "POST"} <= set(response.headers["access-control-allow-methods"].split(", "))


# --- /log ------------------------------------------------------------------------------


async def test_log_keeps_the_last_ten_and_lists_them_oldest_first(
    app_client, app_project: CreatedProject
):
    key = app_project.api_key.secret
    for n in range(12):
        method = "GET" if n % 2 else "POST"
        response = await app_client.http.request(
            method, "/log", params={"_s": key, "_r": "json", "Msg": f"step {n}", "level": "info"}
        )
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
    listed = await app_client.http.get("/log", params={"_s": key})
    assert listed.status_code == 200
    assert listed.headers["cache-control"] == NO_STORE
    messages = listed.json()["messages"]
    assert [message["message"] for message in messages] == [f"step {n}" for n in range(2, 12)]
    assert {message["level"] for message in messages} == {"info"}
    assert messages[0]["data"] == {"level": "info"}
    assert datetime.fromisoformat(messages[0]["created_at"]) <= datetime.fromisoformat(
        messages[-1]["created_at"]
    )
    assert len(await stored_logs(app_client)) == 10


async def test_log_answers_the_pixel_by_default(app_client, app_project: CreatedProject):
    response = await app_client.http.get(
        "/log", params={"_s": app_project.ingest_key.secret, "Msg": "checkpoint A"}
    )
    assert_pixel(response, 200)
    [row] = await stored_logs(app_client)
    assert row.message == "checkpoint A"
    assert row.project_key_id == app_project.ingest_key.key.id


async def test_log_listing_hides_messages_older_than_an_hour(
    app_client, app_project: CreatedProject
):
    key = app_project.api_key
    await append_log_message(
        sessions=app_client.runtime.database.write_sessions,
        project_id=app_project.project.id,
        project_key_id=key.key.id,
        message="ninety minutes ago",
        now=utcnow() - timedelta(minutes=90),
    )
    await app_client.http.post("/log", data={"_s": key.secret, "msg": "just now"})
    listed = await app_client.http.get("/log", params={"_s": key.secret})
    assert [message["message"] for message in listed.json()["messages"]] == ["just now"]
    assert len(await stored_logs(app_client)) == 1


async def test_log_listing_needs_a_read_key(app_client, app_project: CreatedProject):
    """An ingest key may be in a web page; it logs but reads nothing, not even the log."""
    ingest = app_project.ingest_key.secret
    assert (await app_client.http.get("/log", params={"_s": ingest, "Msg": "x"})).status_code == 200
    listed = await app_client.http.get("/log", params={"_s": ingest})
    assert listed.status_code == 403
    assert listed.json() == {
        "status": "error",
        "detail": "this key has no 'read' scope",
        "field": "_s",
    }
    missing = await app_client.http.get("/log")
    assert missing.status_code == 401
    assert missing.json()["detail"] == "the stack key _s is missing"
    # The project's log, as a read key lists it, holds what the ingest key logged.
    listed = await app_client.http.get("/log", params={"_s": app_project.api_key.secret})
    assert [message["message"] for message in listed.json()["messages"]] == ["x"]


async def test_log_post_without_a_message_is_400(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        "/log", data={"_s": app_project.ingest_key.secret, "_r": "json"}
    )
    assert response.status_code == 400
    assert response.json()["detail"] == "nothing to log: send Msg (or msg, message)"
    assert await stored_logs(app_client) == []


async def test_log_keeps_record_fields_and_renders_messageless_fields(
    app_client, app_project: CreatedProject
):
    key = app_project.ingest_key.secret
    await app_client.http.post(
        "/log",
        params={"_s": key},
        data={"msg": "cache warmed", "levelname": "WARNING", "funcName": "warm", "lineno": "9"},
    )
    await app_client.http.get("/log", params={"_s": key, "step": "3", "user": "ada"})
    first, second = await stored_logs(app_client)
    assert (first.message, first.level) == ("cache warmed", "warning")
    assert first.data == {"levelname": "WARNING", "funcName": "warm", "lineno": "9"}
    assert (second.message, second.level, second.data) == (
        "step=3 user=ada",
        None,
        {"step": "3", "user": "ada"},
    )


# --- over real HTTP, with the document's own clients ------------------------------------


def project_keys(live_server, tmp_path) -> dict[str, str]:
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "errorstack", "--json"],
        env=live_server.env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    return json.loads(created.stdout)


class ErrorStackHandler(logging.handlers.HTTPHandler):
    """The document's handler. Its key list is cut off in the document after `lineno`;
    `exc_text` (the traceback, once a formatter has made it) completes it."""

    def mapLogRecord(self, record):
        """Define the values submitted"""
        keys = ["name", "msg", "levelname", "module", "pathname", "funcName", "lineno", "exc_text"]
        error_info = {}
        for key in keys:
            error_info[key] = record.__dict__[key]
        return error_info


class ClosingErrorStackHandler(ErrorStackHandler):
    """`HTTPHandler.emit` leaves its connection to the garbage collector, a
    ResourceWarning (an error in this suite); closing it after each record changes
    nothing that is sent."""

    def getConnection(self, host, secure):
        self.connection = super().getConnection(host, secure)
        return self.connection

    def emit(self, record):
        try:
            super().emit(record)
        finally:
            self.connection.close()


def send_through_logging(host: str, url: str, *, with_formatter: bool) -> None:
    logger = logging.getLogger("My_Python_App")
    propagate, level = logger.propagate, logger.level
    logger.propagate = False
    logger.setLevel(logging.ERROR)
    if with_formatter:
        # Another handler that formats first fills `record.exc_text` with the traceback.
        logger.addHandler(logging.StreamHandler(io.StringIO()))
    handler = ClosingErrorStackHandler(host, url, "POST")
    logger.addHandler(handler)
    try:
        try:
            {}["pod bay doors"]
        except KeyError:
            logger.error("I'm sorry Dave, I'm afraid I can't do that.", exc_info=True)
            logger.critical("Houston, we have a problem.", exc_info=True)
    finally:
        for each in list(logger.handlers):
            logger.removeHandler(each)
            each.close()
        logger.propagate, logger.level = propagate, level


def rows(live_server, query: str) -> list[tuple]:
    with sqlite3.connect(live_server.settings.sqlite_path) as connection:
        return connection.execute(query).fetchall()


def test_python_http_handler_submits_errors(live_server, tmp_path):
    """The document's Python example, through `logging.handlers.HTTPHandler` itself."""
    key = project_keys(live_server, tmp_path)["ingest_key"]
    host = live_server.base_url.removeprefix("http://")
    url = f"/submit?_s={key}&_r=json"
    send_through_logging(host, url, with_formatter=False)
    send_through_logging(host, url, with_formatter=True)
    events = rows(
        live_server,
        "SELECT type, level, logger, message, exception_type FROM event ORDER BY id",
    )
    sorry = "I'm sorry Dave, I'm afraid I can't do that."
    houston = "Houston, we have a problem."
    assert events == [
        ("message", "error", "My_Python_App", sorry, None),
        ("message", "fatal", "My_Python_App", houston, None),
        ("exception", "error", "My_Python_App", sorry, "KeyError"),
        ("exception", "fatal", "My_Python_App", houston, "KeyError"),
    ]
    [(functions,)] = rows(
        live_server,
        "SELECT exceptions FROM event WHERE exception_type = 'KeyError' ORDER BY id LIMIT 1",
    )
    frames = json.loads(functions)[-1]["frames"]
    assert frames[-1]["function"] == "send_through_logging"


def test_python_http_handler_logs_and_the_log_lists(live_server, tmp_path):
    key = project_keys(live_server, tmp_path)["api_key"]
    host = live_server.base_url.removeprefix("http://")
    send_through_logging(host, f"/log?_s={key}&_r=json", with_formatter=False)
    listed = httpx.get(f"{live_server.base_url}/log", params={"_s": key})
    assert listed.status_code == 200
    messages = listed.json()["messages"]
    assert [(m["message"], m["level"]) for m in messages] == [
        ("I'm sorry Dave, I'm afraid I can't do that.", "error"),
        ("Houston, we have a problem.", "critical"),
    ]
    assert messages[0]["data"]["funcName"] == "send_through_logging"


def test_html_form_and_beacon_over_real_http(live_server, tmp_path):
    """The document's form (posted by curl as a browser would) and its beacon URL."""
    key = project_keys(live_server, tmp_path)["ingest_key"]
    form = subprocess.run(
        [
            "curl",
            "-s",
            "-w",
            "\n%{http_code}",
            "--data-urlencode",
            f"_s={key}",
            "--data-urlencode",
            "_r=json",
            "--data-urlencode",
            "Msg=Error loading script",
            "--data-urlencode",
            "URL=",
            "--data-urlencode",
            "Line=15",
            "--data-urlencode",
            "Platform=Win32",
            "--data-urlencode",
            "UserAgent=Mozilla/4.0%20(compatible; ...)",
            f"{live_server.base_url}/submit",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    body, status = form.stdout.rsplit("\n", 1)
    assert status == "200" and json.loads(body)["status"] == "ok"

    beacon = httpx.get(f"{live_server.base_url}/submit?_s={key}&_r=img")
    assert_pixel(beacon, 200)
    assert rows(live_server, "SELECT exception_value FROM event ORDER BY id") == [
        ("Error loading script",),
        (None,),
    ]


async def test_log_through_graphql(app_client, app_project: CreatedProject):
    """The GraphQL `logs(projectId)` query shows what /log keeps."""
    for text in ("deploy started", "deploy finished"):
        response = await app_client.http.get(
            "/log", params={"_s": app_project.ingest_key.secret, "_r": "json", "Msg": text}
        )
        assert response.status_code == 200, response.text
    response = await app_client.http.post(
        "/graphql",
        json={
            "query": "query($p: ID!) { logs(projectId: $p) { message createdAt } }",
            "variables": {"p": str(app_project.project.id)},
        },
        headers={"Authorization": f"Bearer {app_project.token.secret}"},
    )
    logs = response.json()["data"]["logs"]
    assert [entry["message"] for entry in logs] == ["deploy started", "deploy finished"]
