"""The Sentry protocol: envelopes and store requests from real SDKs and by hand."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import subprocess
import tracemalloc
import urllib.parse
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import brotli
import httpx
import pytest
import sentry_sdk
from sqlalchemy import select
from support import ERRORGRAPH

from app.db import create_database
from app.models import AffectedUser, ClientReport, Event, Group
from app.services.client_reports import (
    ClientReportTotal,
    DiscardedEvents,
    client_report_totals,
    record_client_reports,
)
from app.services.keys import CreatedProject, create_project, revoke_project_key
from rest_compat.sentry import PIXEL, EnvelopeParser, format_logentry

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sentry"
MiB = 1024 * 1024


# --- helpers ---------------------------------------------------------------------------


def envelope(*items: tuple[dict[str, Any], bytes], header: dict[str, Any] | None = None) -> bytes:
    """An envelope of (item header, payload) pairs, each followed by a newline."""
    parts = [json.dumps(header or {}).encode()]
    for item_header, payload in items:
        parts += [json.dumps(item_header).encode(), payload]
    return b"\n".join(parts) + b"\n"


def event_item(payload: dict[str, Any], *, with_length: bool = True) -> tuple[dict, bytes]:
    data = json.dumps(payload).encode()
    header: dict[str, Any] = {"type": "event"}
    if with_length:
        header["length"] = len(data)
    return header, data


def simple_event(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": "0a1b2c3d4e5f40718293a4b5c6d7e8f9",
        "platform": "python",
        "exception": {
            "values": [
                {
                    "type": "KeyError",
                    "value": "'sku'",
                    "stacktrace": {
                        "frames": [
                            {"function": "view", "module": "shop.views", "lineno": 10},
                            {"function": "lookup", "module": "shop.catalog", "lineno": 20},
                        ]
                    },
                }
            ]
        },
    }
    body.update(changes)
    return body


def auth(key: str) -> dict[str, str]:
    return {"X-Sentry-Auth": f"Sentry sentry_key={key}, sentry_version=7, sentry_client=test/1"}


def url(project: CreatedProject, endpoint: str = "envelope") -> str:
    return f"/api/{project.project.id}/{endpoint}/"


async def stored_events(app_client) -> list[Event]:
    async with app_client.runtime.database.sessions() as session:
        return list((await session.scalars(select(Event).order_by(Event.id))).all())


async def group_of(app_client, event: Event) -> Group:
    async with app_client.runtime.database.sessions() as session:
        group = await session.get(Group, event.group_id)
    assert group is not None
    return group


def zeros_compressed(coding: str, size: int) -> bytes:
    """`size` zero bytes compressed with `coding`, built piece by piece so the test itself
    never holds the expansion."""
    block = bytes(MiB)
    if coding == "br":
        compressor = brotli.Compressor(quality=1)
        out = [compressor.process(block) for _ in range(size // MiB)]
        return b"".join([*out, compressor.finish()])
    wbits = {"gzip": 31, "deflate": 15}[coding]
    deflater = zlib.compressobj(9, zlib.DEFLATED, wbits)
    out = [deflater.compress(block) for _ in range(size // MiB)]
    return b"".join([*out, deflater.flush()])


# --- real SDK payloads -----------------------------------------------------------------


async def test_python_sdk_chained_exception_is_mapped_fully(app_client, app_project):
    body = (FIXTURES / "python_chained_exception.envelope").read_bytes()
    response = await app_client.http.post(
        url(app_project), content=body, headers=auth(app_project.ingest_key.secret)
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "a5ca732b2e474116bc39d580266031d8"}

    [event] = await stored_events(app_client)
    group = await group_of(app_client, event)
    assert event.event_id == "a5ca732b2e474116bc39d580266031d8"
    assert (event.dialect, event.platform, event.type, event.level) == (
        "sentry",
        "python",
        "exception",
        "error",
    )
    assert (event.release, event.environment, event.server_name) == (
        "shop@2.4.1",
        "production",
        "web-1",
    )
    assert event.client_ip == "127.0.0.1"
    assert [exc["type"] for exc in event.exceptions] == ["ZeroDivisionError", "PaymentDeclined"]
    cause, primary = event.exceptions
    assert cause["mechanism"] == primary["mechanism"] == {"type": "generic", "handled": True}
    assert [frame["function"] for frame in cause["frames"]] == ["charge"]
    assert primary["value"] == "card declined for order 1009"
    assert [frame["function"] for frame in primary["frames"]] == ["<module>", "checkout", "charge"]
    charge = primary["frames"][-1]
    assert charge["module"] == "shop.checkout"
    assert charge["filename"] == charge["abs_path"] == "/srv/shop/shop/checkout.py"
    assert charge["lineno"] == 11
    assert charge["in_app"] is True
    assert charge["context_line"].strip().startswith("raise PaymentDeclined(")
    assert charge["pre_context"][-1].strip() == "except ZeroDivisionError as exc:"
    assert charge["post_context"][:2] == ["", ""]
    assert charge["vars"] == {
        "order": {"id": "1009", "total": "30", "quantity": "0"},
        "ratio": "nan",
        "limit": "inf",
    }
    assert event.user == {
        "id": "42",
        "email": "[email protected]",
        "username": "ada",
        "data": {"plan": "pro"},
    }
    assert event.tags == {"shop.region": "eu-west"}
    assert event.contexts["order"] == {"id": 1009, "items": 3}
    assert event.contexts["sdk"]["name"] == "sentry.python"
    assert [crumb["category"] for crumb in event.breadcrumbs] == ["cart", "http"]
    assert event.breadcrumbs[1]["data"]["status_code"] == 402
    assert event.fingerprint == ["{{ default }}", "payments"]
    assert group.title == "PaymentDeclined: card declined for order 1009"
    assert group.culprit == "shop.checkout in charge"
    assert "client fingerprint" in group.grouping_reason
    assert "{{ default }} is exception type PaymentDeclined" in group.grouping_reason


async def test_python_sdk_message(app_client, app_project):
    body = (FIXTURES / "python_message.envelope").read_bytes()
    response = await app_client.http.post(
        url(app_project), content=body, headers=auth(app_project.ingest_key.secret)
    )
    assert response.json() == {"id": "2eebbe2d2c764bd790f33f3b29cefa9d"}
    [event] = await stored_events(app_client)
    assert (event.type, event.level, event.message) == (
        "message",
        "warning",
        "Stock for SKU 17 is low",
    )
    assert event.exceptions is None
    assert event.timestamp == datetime(2026, 11, 22, 8, 20, 11, 844543, tzinfo=UTC)
    assert (await group_of(app_client, event)).title == "Stock for SKU 17 is low"


async def test_node_sdk_linked_errors_without_lengths(app_client, app_project):
    body = (FIXTURES / "node_linked_errors.envelope").read_bytes()
    response = await app_client.http.post(
        url(app_project), content=body, headers=auth(app_project.ingest_key.secret)
    )
    assert response.json() == {"id": "53cc187f2eae482189cdbff07ff4e067"}
    [event] = await stored_events(app_client)
    assert event.platform == "node"
    assert [exc["type"] for exc in event.exceptions] == ["SyntaxError", "Error"]
    assert event.exceptions[0]["mechanism"] == {
        "type": "chained",
        "handled": True,
        "source": "cause",
        "exception_id": 1,
        "parent_id": 0,
    }
    innermost = event.exceptions[0]["frames"][-2]
    assert (innermost["function"], innermost["lineno"], innermost["colno"]) == (
        "parseCart",
        11,
        40,
    )
    assert innermost["context_line"] == "function parseCart(text) { return JSON.parse(text); }"
    assert event.timestamp == datetime.fromtimestamp(1795335458.241, tz=UTC)
    assert event.user == {"id": "u-7", "email": "[email protected]", "data": {}}
    assert event.tags == {"page": "cart"}
    assert event.contexts["runtime"] == {"name": "node", "version": "v20.20.2"}
    group = await group_of(app_client, event)
    assert group.title == "Error: cart could not be loaded"


async def test_node_sdk_client_report_is_persisted(app_client, app_project):
    body = (FIXTURES / "node_client_report.envelope").read_bytes()
    assert not body.endswith(b"\n")
    response = await app_client.http.post(
        url(app_project), content=body, headers=auth(app_project.ingest_key.secret)
    )
    assert response.status_code == 200
    assert response.json() == {}
    assert await stored_events(app_client) == []
    async with app_client.runtime.database.sessions() as session:
        [report] = (await session.scalars(select(ClientReport))).all()
    assert (report.reason, report.category, report.quantity) == ("before_send", "error", 1)
    assert report.timestamp == datetime.fromtimestamp(1795335458.246, tz=UTC)
    totals = await client_report_totals(
        sessions=app_client.runtime.database.sessions, project_id=app_project.project.id
    )
    assert totals == [ClientReportTotal(reason="before_send", category="error", quantity=1)]


async def test_legacy_store_body_with_nan(app_client, app_project):
    body = (FIXTURES / "legacy_store_with_nan.json").read_bytes()
    assert b"NaN" in body
    response = await app_client.http.post(
        url(app_project, "store"),
        content=body,
        headers={"Content-Type": "application/json", **auth(app_project.ingest_key.secret)},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "5d1a5c0e9a8b4f7e8c1d2e3f4a5b6c7d"}
    [event] = await stored_events(app_client)
    assert event.extra == {"ratio": "NaN", "sys.argv": ["worker.py"]}
    [exception] = event.exceptions
    assert exception["type"] == "ValueError"
    assert exception["frames"][0]["vars"] == {
        "amount": "NaN",
        "ceiling": "Infinity",
        "floor": "-Infinity",
    }
    assert event.user == {"id": "311", "email": "[email protected]", "data": {}}
    assert event.tags == {"queue": "payments", "attempt": "3"}
    assert event.logger == "shop.tasks"
    assert event.timestamp == datetime(2019, 6, 3, 10, 15, 42, tzinfo=UTC)


async def test_integers_beyond_64_bits_beside_nan_are_read_as_orjson_reads_them(
    app_client, app_project
):
    """NaN sends the body to the standard library's parser, which reads integers of any
    size; stored JSON cannot hold those beyond 64 bits (the event's request was answered
    503), so they become floats, as orjson reads them when it parses the body itself."""
    body = (
        b'{"event_id": "5d1a5c0e9a8b4f7e8c1d2e3f4a5b6c7f", "message": "overflow",'
        b' "extra": {"ratio": NaN, "largest": 18446744073709551615,'
        b' "larger": 18446744073709551616, "smallest": -9223372036854775808,'
        b' "smaller": -9223372036854775809, "huge": 1' + b"0" * 400 + b"}}"
    )
    response = await app_client.http.post(
        url(app_project, "store"),
        content=body,
        headers={"Content-Type": "application/json", **auth(app_project.ingest_key.secret)},
    )
    assert response.status_code == 200, response.text
    [event] = await stored_events(app_client)
    assert event.extra == {
        "ratio": "NaN",
        "largest": 18446744073709551615,
        "larger": 1.8446744073709552e19,
        "smallest": -9223372036854775808,
        "smaller": -9.223372036854776e18,
        "huge": "Infinity",
    }


async def test_lone_surrogates_from_the_python_sdk_are_kept_as_replacement_characters(
    app_client, app_project
):
    """Python decodes a file name it cannot read as UTF-8 with lone surrogates, and the
    SDK's JSON escapes them; the event is stored with U+FFFD in their place (writing it
    failed before, and its request was answered 503)."""
    from sentry_sdk.envelope import Envelope

    event_id = "5d1a5c0e9a8b4f7e8c1d2e3f4a5b6c7e"
    sdk_envelope = Envelope(headers={"event_id": event_id})
    sdk_envelope.add_event(
        {
            "event_id": event_id,
            "message": "cannot open /srv/data/r\udce9sum\u00e9.csv",
            "extra": {"path\udc80": "x", "pair": "\U0001f600"},
            "user": {"id": "u\ud800"},
        }
    )
    body = io.BytesIO()
    sdk_envelope.serialize_into(body)
    assert b"\\udce9" in body.getvalue()
    response = await app_client.http.post(
        url(app_project, "envelope"),
        content=body.getvalue(),
        headers=auth(app_project.ingest_key.secret),
    )
    assert response.status_code == 200, response.text
    [event] = await stored_events(app_client)
    assert event.message == "cannot open /srv/data/r\ufffdsum\u00e9.csv"
    assert event.extra == {"path\ufffd": "x", "pair": "\U0001f600"}
    assert event.user == {"id": "u\ufffd", "data": {}}


# --- Content-Encoding ------------------------------------------------------------------


def _raw_deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    return deflater.compress(data) + deflater.flush()


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", _raw_deflate),
        ("br", brotli.compress),
        ("gzip, br", lambda data: brotli.compress(gzip.compress(data))),
        ("", lambda data: data),
        ("UTF-8", lambda data: data),
        ("identity", lambda data: data),
    ],
    ids=["gzip", "deflate-zlib", "deflate-raw", "br", "gzip-then-br", "empty", "utf8", "identity"],
)
async def test_content_encodings(app_client, app_project, coding, encode):
    body = envelope(event_item(simple_event()))
    response = await app_client.http.post(
        url(app_project),
        content=encode(body),
        headers={"Content-Encoding": coding, **auth(app_project.ingest_key.secret)},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "0a1b2c3d4e5f40718293a4b5c6d7e8f9"}
    [event] = await stored_events(app_client)
    assert event.exception_type == "KeyError"


@pytest.mark.parametrize(
    ("coding", "body", "detail"),
    [
        ("gzip", b"not gzip at all", "the body is not valid gzip data"),
        ("br", b"not brotli", "the body is not valid br data"),
        ("gzip", gzip.compress(b'{}\n{"type":"session"}\n{}')[:-6], "the gzip body is truncated"),
        ("compress", b"x", "unsupported Content-Encoding 'compress'; use gzip, deflate or br"),
    ],
)
async def test_bad_encodings_are_400(app_client, app_project, coding, body, detail):
    response = await app_client.http.post(
        url(app_project),
        content=body,
        headers={"Content-Encoding": coding, **auth(app_project.ingest_key.secret)},
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith(detail)


# --- limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
async def test_decompression_bomb_stops_at_the_limit(app_client, app_project, coding):
    """200 MiB of zeros in an attachment: refused at 100 MiB, never held in memory."""
    bomb_payload = zeros_compressed(coding, 200 * MiB)
    assert len(bomb_payload) < 1 * MiB
    # The attachment's bytes are compressed inside the same stream as its headers.
    head = b'{"event_id":"0a1b2c3d4e5f40718293a4b5c6d7e8f9"}\n'
    head += b'{"type":"attachment","length":209715200,"filename":"zeros.bin"}\n'
    if coding == "br":
        compressor = brotli.Compressor(quality=1)
        pieces = [compressor.process(head)]
        pieces += [compressor.process(bytes(MiB)) for _ in range(200)]
        body = b"".join([*pieces, compressor.finish()])
    else:
        deflater = zlib.compressobj(9, zlib.DEFLATED, 31 if coding == "gzip" else 15)
        pieces = [deflater.compress(head)]
        pieces += [deflater.compress(bytes(MiB)) for _ in range(200)]
        body = b"".join([*pieces, deflater.flush()])

    tracemalloc.start()
    try:
        response = await app_client.http.post(
            url(app_project),
            content=body,
            headers={"Content-Encoding": coding, **auth(app_project.ingest_key.secret)},
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 413
    assert response.json() == {"detail": "decompressed body is larger than 104857600 bytes"}
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"


async def test_bomb_without_any_newline_stops_at_the_header_line(app_client, app_project):
    response = await app_client.http.post(
        url(app_project),
        content=zeros_compressed("gzip", 200 * MiB),
        headers={"Content-Encoding": "gzip", **auth(app_project.ingest_key.secret)},
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "an envelope header line is longer than 65536"}


async def test_compressed_body_over_20_mib_is_413(app_client, app_project):
    response = await app_client.http.post(
        url(app_project), content=bytes(20 * MiB + 1), headers=auth(app_project.ingest_key.secret)
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "request body is larger than 20971520 bytes"}


@pytest.mark.parametrize("with_length", [True, False])
async def test_event_over_1_mib_is_413(app_client, app_project, with_length):
    big = simple_event(extra={"blob": "x" * MiB})
    response = await app_client.http.post(
        url(app_project),
        content=envelope(event_item(big, with_length=with_length)),
        headers=auth(app_project.ingest_key.secret),
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "the event item is larger than 1048576 bytes"}
    assert await stored_events(app_client) == []


async def test_large_skipped_attachment_is_accepted(app_client, app_project):
    attachment = bytes(5 * MiB)
    body = envelope(
        event_item(simple_event()),
        ({"type": "attachment", "length": len(attachment), "filename": "dump.bin"}, attachment),
    )
    response = await app_client.http.post(
        url(app_project),
        content=gzip.compress(body),
        headers={"Content-Encoding": "gzip", **auth(app_project.ingest_key.secret)},
    )
    assert response.status_code == 200
    assert response.json() == {"id": "0a1b2c3d4e5f40718293a4b5c6d7e8f9"}


# --- authentication --------------------------------------------------------------------


async def test_each_place_a_key_may_be(app_client, app_project):
    key = app_project.ingest_key.secret
    project_id = app_project.project.id
    dsn = f"http://{key}@errors.example.com/{project_id}"
    ways: list[tuple[str, dict[str, str], dict[str, Any]]] = [
        (f"?sentry_key={key}&sentry_version=7", {}, {}),
        ("", auth(key), {}),
        ("", {"Authorization": f"Sentry sentry_key={key}, sentry_version=7"}, {}),
        ("", {"Authorization": f"DSN {dsn}"}, {}),
        ("", {"Authorization": f"Bearer {key}"}, {}),
        ("", {}, {"dsn": dsn}),
        (f"?sentry_key={key}", auth(key), {"dsn": dsn}),
    ]
    for number, (query, headers, header) in enumerate(ways):
        event_id = f"{number:032x}"
        body = envelope(event_item(simple_event(event_id=event_id)), header=header)
        response = await app_client.http.post(
            url(app_project) + query, content=body, headers=headers
        )
        assert response.status_code == 200, (number, response.text)
        assert response.json() == {"id": event_id}
    assert len(await stored_events(app_client)) == len(ways)


async def test_auth_failures(app_client, app_project):
    key = app_project.ingest_key.secret
    other = await create_project(sessions=app_client.runtime.database.sessions, name="Other")
    other_key = other.ingest_key.secret
    body = envelope(event_item(simple_event()))
    project_id = app_project.project.id
    cases: list[tuple[str, str, dict[str, str], bytes, int, str]] = [
        (
            "missing",
            url(app_project),
            {},
            body,
            401,
            "no key: send the key as ?sentry_key=…, in X-Sentry-Auth: Sentry sentry_key=…, "
            "or in the envelope header's dsn",
        ),
        ("unknown", url(app_project), auth("pk_unknown"), body, 401, "invalid key"),
        (
            "query and header differ",
            url(app_project) + f"?sentry_key={other_key}",
            auth(key),
            body,
            401,
            "the keys in the sentry_key query parameter and X-Sentry-Auth differ",
        ),
        (
            "header and Authorization differ",
            url(app_project),
            {**auth(key), "Authorization": f"Bearer {other_key}"},
            body,
            401,
            "the keys in X-Sentry-Auth and Authorization differ",
        ),
        (
            "header and dsn differ",
            url(app_project),
            auth(key),
            envelope(
                event_item(simple_event()),
                header={"dsn": f"http://{other_key}@h/{project_id}"},
            ),
            401,
            "the key in the envelope header's dsn differs from the request's",
        ),
        (
            "another project's key",
            url(app_project),
            auth(other_key),
            body,
            403,
            f"this key belongs to another project, not to project {project_id}",
        ),
        ("unknown project", "/api/987654/envelope/", auth(key), body, 404, "no project 987654"),
        (
            "store without key",
            url(app_project, "store"),
            {},
            json.dumps(simple_event()).encode(),
            401,
            "no key: send the key as ?sentry_key=…, in X-Sentry-Auth: Sentry sentry_key=…, "
            "or in the envelope header's dsn",
        ),
    ]
    for name, path, headers, content, status, detail in cases:
        response = await app_client.http.post(path, content=content, headers=headers)
        assert (response.status_code, response.json()) == (status, {"detail": detail}), name
    assert await stored_events(app_client) == []

    await revoke_project_key(
        sessions=app_client.runtime.database.sessions, key_id=app_project.ingest_key.key.id
    )
    response = await app_client.http.post(url(app_project), content=body, headers=auth(key))
    assert (response.status_code, response.json()) == (401, {"detail": "key revoked"})


async def test_api_key_with_write_scope_may_send(app_client, app_project):
    response = await app_client.http.post(
        url(app_project),
        content=envelope(event_item(simple_event())),
        headers=auth(app_project.api_key.secret),
    )
    assert response.status_code == 200


# --- envelope parsing ------------------------------------------------------------------

SKIPPED_TYPES = [
    "transaction",
    "session",
    "sessions",
    "attachment",
    "user_report",
    "check_in",
    "log",
    "span",
    "profile",
    "replay",
    "replay_event",
    "statsd",
    "something_new",
]


@pytest.mark.parametrize("kind", SKIPPED_TYPES)
async def test_other_item_types_are_accepted_and_skipped(app_client, app_project, kind):
    payload = b'{"sid":"abc","status":"ok","name":"x","data":[1,2,3]}'
    alone = envelope(({"type": kind, "length": len(payload)}, payload))
    response = await app_client.http.post(
        url(app_project), content=alone, headers=auth(app_project.ingest_key.secret)
    )
    assert (response.status_code, response.json()) == (200, {})

    without_length = envelope(({"type": kind}, payload), event_item(simple_event()))
    response = await app_client.http.post(
        url(app_project), content=without_length, headers=auth(app_project.ingest_key.secret)
    )
    assert (response.status_code, response.json()) == (200, {"id": simple_event()["event_id"]})
    [event] = await stored_events(app_client)
    assert event.exception_type == "KeyError"


def parse(data: bytes, step: int | None = None):
    parser = EnvelopeParser()
    step = step or len(data) or 1
    for start in range(0, len(data), step):
        parser.feed(data[start : start + step])
    return parser.finish()


@pytest.mark.parametrize("step", [None, 1, 7])
def test_envelope_spec_examples(step):
    """The examples of the envelope spec, fed whole and a few bytes at a time."""
    two = (
        b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}\n'
        b'{"type":"attachment","length":10,"content_type":"text/plain"}\n'
        b"\xef\xbb\xbfHello\r\n\n"
        b'{"type":"event","length":41}\n'
        b'{"message":"hello world","level":"error"}\n'
    )
    parsed = parse(two, step)
    assert parsed.headers == {"event_id": "9ec79c33ec9942ab8353589fcb2e04dc"}
    assert [item.payload for item in parsed.items] == [b'{"message":"hello world","level":"error"}']
    assert parsed.skipped == {"attachment": 1}

    implicit = b'{}\n{"type":"event"}\n{"message":"hi"}\n{"type":"client_report"}\n{"a":1}'
    parsed = parse(implicit, step)
    assert [(i.type, i.payload) for i in parsed.items] == [
        ("event", b'{"message":"hi"}'),
        ("client_report", b'{"a":1}'),
    ]

    empty_payloads = b'{}\n{"type":"event","length":0}\n\n{"type":"attachment"}\n\n'
    parsed = parse(empty_payloads, step)
    assert [(i.type, i.payload) for i in parsed.items] == [("event", b"")]
    assert parsed.skipped == {"attachment": 1}

    assert parse(b"{}", step).items == []
    assert parse(b'{"type":"event","length":2}\n', step).headers == {
        "type": "event",
        "length": 2,
    }
    # A length payload may be followed directly by EOF, without its newline.
    parsed = parse(b'{}\n{"type":"event","length":2}\n{}', step)
    assert [i.payload for i in parsed.items] == [b"{}"]


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b"", 400, "the envelope is empty"),
        (b"not json\n", 400, "the envelope header is not valid JSON"),
        (b"[1]\n", 400, "the envelope header must be a JSON object"),
        (b'{}\n{"length":2}\n{}\n', 400, "the header of item 1 has no type"),
        (b'{}\n{"type":"event","length":-1}\n', 400, "the header of item 1 has a length"),
        (b'{}\n{"type":"event","length":50}\n{}\n', 400, "item 1 ends before its length"),
        (b'{}\n{"type":"event"}\n{not json}\n', 400, "the event is not valid JSON"),
        (b'{}\n{"type":"event"}\n[1, 2]\n', 400, "the event must be a JSON object"),
        (
            b'{"event_id":"nope"}\n{"type":"event"}\n{}\n',
            400,
            "event_id must be a UUID (32 hex digits), got 'nope'",
        ),
        (
            b'{}\n{"type":"event"}\n{}\n{"type":"event"}\n{}\n',
            400,
            "an envelope may carry at most one event item",
        ),
        (
            b'{}\n{"type":"event"}\n{"level":"catastrophic","message":"x"}\n',
            400,
            "invalid event: level: 'catastrophic' is not one of debug, info, warning, error, fatal",
        ),
        (
            b'{}\n{"type":"event"}\n{"exception":{"values":[{"stacktrace":{"frames":[{"lineno":"x"}]}}]}}\n',
            400,
            "invalid event: exception.0.stacktrace.frames.0.lineno: Input should be a valid integer",
        ),
        (
            b'{}\n{"type":"event"}\n{"breadcrumbs":{"values":[1]}}\n',
            400,
            "invalid event: breadcrumbs.0: Input should be a valid dictionary",
        ),
        (
            b'{}\n{"type":"client_report"}\n{"discarded_events":[{"reason":"x","category":"error","quantity":-2}]}\n',
            400,
            "invalid client_report: discarded_events.0.quantity: Input should be greater than or equal to 0",
        ),
        (
            b'{}\n{"type":"event"}\n{"extra":{"x":' + b"[" * 100 + b"]" * 100 + b"}}\n",
            400,
            "invalid event: extra: nested deeper than 64 levels",
        ),
        (
            b'{}\n{"type":"event"}\n{"extra":{"x":' + b"[" * 2000 + b"]" * 2000 + b"}, NaN]}\n",
            400,
            "the event is",
        ),
        (
            b"{}\n" + b'{"type":"session"}\n{}\n' * 10_001,
            413,
            "the envelope has more than 10000 items",
        ),
    ],
)
async def test_bad_envelopes_get_400_naming_the_problem(
    app_client, app_project, body, status, detail
):
    response = await app_client.http.post(
        url(app_project), content=body, headers=auth(app_project.ingest_key.secret)
    )
    assert response.status_code == status
    assert response.json()["detail"].startswith(detail), response.json()
    assert await stored_events(app_client) == []


async def test_header_event_id_overrides_the_payload(app_client, app_project):
    body = envelope(
        event_item(simple_event(event_id="11111111111111111111111111111111")),
        header={"event_id": "9ec79c33-ec99-42ab-8353-589fcb2e04dc"},
    )
    response = await app_client.http.post(
        url(app_project), content=body, headers=auth(app_project.ingest_key.secret)
    )
    assert response.json() == {"id": "9ec79c33ec9942ab8353589fcb2e04dc"}
    [event] = await stored_events(app_client)
    assert event.event_id == "9ec79c33ec9942ab8353589fcb2e04dc"


async def test_resend_is_stored_once(app_client, app_project):
    body = envelope(event_item(simple_event()))
    for _ in range(2):
        response = await app_client.http.post(
            url(app_project), content=body, headers=auth(app_project.ingest_key.secret)
        )
        assert response.json() == {"id": simple_event()["event_id"]}
    assert len(await stored_events(app_client)) == 1


async def test_envelope_without_trailing_slash(app_client, app_project):
    response = await app_client.http.post(
        f"/api/{app_project.project.id}/envelope",
        content=envelope(event_item(simple_event())),
        headers=auth(app_project.ingest_key.secret),
    )
    assert response.status_code == 200


# --- mapping details -------------------------------------------------------------------


async def test_full_mapping_of_a_hand_made_event(app_client, app_project):
    payload = {
        "event_id": "4c5d6e7f8091a2b3c4d5e6f708192a3b",
        "timestamp": 1767225600.5,
        "level": "warn",
        "logger": "checkout",
        "platform": "javascript",
        "release": "web@3.1.0",
        "dist": "17",
        "environment": "staging",
        "server_name": "edge-2",
        "transaction": "/checkout/:step",
        "logentry": {"message": "Payment %s failed after %d tries", "params": ["p_9", 3]},
        "tags": [["browser", "Firefox"], ["retries", 3]],
        "user": {"id": 77, "ip_address": "{{auto}}", "segment": "beta", "geo": {"city": "Lyon"}},
        "request": {
            "url": "https://shop.example.com/checkout/pay",
            "method": "POST",
            "headers": [["User-Agent", "Mozilla/5.0 (X11)"], ["Accept", "*/*"]],
        },
        "contexts": {"browser": {"name": "Firefox", "version": "133.0"}},
        "breadcrumbs": [{"category": "navigation", "data": {"from": "/", "to": "/checkout"}}],
        "extra": {"cart_items": 3},
        "fingerprint": ["checkout-payment", 3],
        "sdk": {"name": "sentry.javascript.browser", "version": "8.45.0"},
        "stacktrace": {
            "frames": [
                {"function": "submit", "filename": "app.js", "lineno": 1, "colno": 900},
                {"function": "pay", "filename": "app.js", "lineno": 1, "colno": 1200},
            ]
        },
    }
    response = await app_client.http.post(
        url(app_project, "store") + f"?sentry_key={app_project.ingest_key.secret}",
        json=payload,
        headers={"Origin": "https://shop.example.com"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    [event] = await stored_events(app_client)
    assert (event.type, event.level, event.platform) == ("message", "warning", "javascript")
    assert event.message == "Payment p_9 failed after 3 tries"
    assert event.contexts["logentry"] == {
        "message": "Payment %s failed after %d tries",
        "params": ["p_9", 3],
    }
    assert event.contexts["sdk"] == {"name": "sentry.javascript.browser", "version": "8.45.0"}
    assert event.contexts["browser"] == {"name": "Firefox", "version": "133.0"}
    assert event.timestamp == datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)
    assert event.tags == {"browser": "Firefox", "retries": "3", "dist": "17"}
    assert event.user == {
        "id": "77",
        "ip_address": "127.0.0.1",
        "data": {"segment": "beta", "geo": {"city": "Lyon"}},
    }
    assert event.url == "https://shop.example.com/checkout/pay"
    assert event.user_agent == "Mozilla/5.0 (X11)"
    assert event.request["method"] == "POST"
    assert (event.logger, event.transaction, event.server_name) == (
        "checkout",
        "/checkout/:step",
        "edge-2",
    )
    assert event.fingerprint == ["checkout-payment", "3"]
    assert event.extra == {"cart_items": 3}
    assert [f["function"] for f in event.exceptions[0]["frames"]] == ["submit", "pay"]
    assert event.exceptions[0]["type"] is None
    async with app_client.runtime.database.sessions() as session:
        user = (await session.scalars(select(AffectedUser))).one()
    assert (user.external_id, user.ip_address) == ("77", "127.0.0.1")


async def test_exception_stack_from_its_thread(app_client, app_project):
    payload = {
        "exception": {"values": [{"type": "SIGSEGV", "value": "crash", "thread_id": 2}]},
        "threads": {
            "values": [
                {"id": 1, "stacktrace": {"frames": [{"function": "idle"}]}},
                {"id": 2, "crashed": True, "stacktrace": {"frames": [{"function": "render"}]}},
            ]
        },
    }
    response = await app_client.http.post(
        url(app_project, "store"), json=payload, headers=auth(app_project.ingest_key.secret)
    )
    assert response.status_code == 200
    [event] = await stored_events(app_client)
    assert [f["function"] for f in event.exceptions[0]["frames"]] == ["render"]


async def test_event_with_nothing_is_unlabeled(app_client, app_project):
    response = await app_client.http.post(
        url(app_project),
        content=envelope(event_item({})),
        headers=auth(app_project.ingest_key.secret),
    )
    assert response.status_code == 200
    [event] = await stored_events(app_client)
    assert (event.type, event.message) == ("message", "<unlabeled event>")
    assert len(response.json()["id"]) == 32


async def test_transaction_event_is_skipped(app_client, app_project):
    response = await app_client.http.post(
        url(app_project, "store"),
        json={"type": "transaction", "event_id": "ab" * 16, "spans": []},
        headers=auth(app_project.ingest_key.secret),
    )
    assert (response.status_code, response.json()) == (200, {"id": "ab" * 16})
    assert await stored_events(app_client) == []


def test_logentry_formatting_fills_only_plain_placeholders():
    assert format_logentry("%s of %d", ["3", 4]) == "3 of 4"
    assert format_logentry("%(user)s paid %(amount)s", {"user": "ada", "amount": 5}) == (
        "ada paid 5"
    )
    assert format_logentry("100%% of %s", ["x"]) == "100% of x"
    assert format_logentry("%s and %s", ["one"]) == "one and %s"
    assert format_logentry("%999999999d", [1]) == "%999999999d"
    assert format_logentry("%s", [{"a": [1]}]) == '{"a":[1]}'


# --- store -----------------------------------------------------------------------------


async def test_store_accepts_base64_of_zlib(app_client, app_project):
    data = base64.b64encode(zlib.compress(json.dumps(simple_event()).encode()))
    response = await app_client.http.post(
        url(app_project, "store"), content=data, headers=auth(app_project.ingest_key.secret)
    )
    assert (response.status_code, response.json()) == (200, {"id": simple_event()["event_id"]})
    [event] = await stored_events(app_client)
    assert event.exception_type == "KeyError"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"%%%", "the body is neither JSON nor base64 of zlib-compressed JSON"),
        (b" [1, 2]", "the event must be a JSON object"),
        (b'"event"', "the event must be a JSON object"),
    ],
)
async def test_store_rejects_what_is_neither(app_client, app_project, body, detail):
    response = await app_client.http.post(
        url(app_project, "store"), content=body, headers=auth(app_project.ingest_key.secret)
    )
    assert (response.status_code, response.json()) == (400, {"detail": detail})


@pytest.mark.parametrize("form", ["json", "base64-zlib"])
async def test_store_get_answers_a_gif(app_client, app_project, form):
    data = json.dumps(simple_event()).encode()
    if form == "base64-zlib":
        data = base64.b64encode(zlib.compress(data))
    query = urllib.parse.urlencode(
        {
            "sentry_version": "7",
            "sentry_client": "raven-js/3.27.2",
            "sentry_key": app_project.ingest_key.secret,
            "sentry_data": data.decode(),
        }
    )
    response = await app_client.http.get(url(app_project, "store") + "?" + query)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content == PIXEL
    assert PIXEL[:6] == b"GIF89a" and PIXEL[6:10] == b"\x01\x00\x01\x00"
    [event] = await stored_events(app_client)
    assert event.event_id == simple_event()["event_id"]


# --- CORS ------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["envelope", "store"])
async def test_cors_preflight(app_client, app_project, endpoint):
    response = await app_client.http.options(
        url(app_project, endpoint),
        headers={
            "Origin": "https://shop.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-sentry-auth, sentry-trace, baggage",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == (
        "content-type, x-sentry-auth, sentry-trace, baggage"
    )


async def test_cors_headers_on_answers_and_errors(app_client, app_project):
    origin = {"Origin": "https://shop.example.com"}
    ok = await app_client.http.post(
        url(app_project) + f"?sentry_key={app_project.ingest_key.secret}",
        content=envelope(event_item(simple_event())),
        headers={"Content-Type": "text/plain;charset=UTF-8", **origin},
    )
    refused = await app_client.http.post(url(app_project), content=b"{}", headers=origin)
    assert ok.status_code == 200 and refused.status_code == 401
    assert ok.headers["access-control-allow-origin"] == "*"
    assert refused.headers["access-control-allow-origin"] == "*"


# --- client reports --------------------------------------------------------------------


async def test_client_reports_are_summed(app_client, app_project):
    def report(timestamp: Any, *entries: tuple[str, str, int]) -> tuple[dict, bytes]:
        data = {
            "timestamp": timestamp,
            "discarded_events": [
                {"reason": reason, "category": category, "quantity": quantity}
                for reason, category, quantity in entries
            ],
        }
        return {"type": "client_report"}, json.dumps(data).encode()

    first = envelope(
        report(
            "2026-03-01T10:00:00Z",
            ("queue_overflow", "error", 4),
            ("sample_rate", "transaction", 30),
        )
    )
    second = envelope(
        event_item(simple_event()),
        report(1772445600.0, ("queue_overflow", "error", 2), ("network_error", "error", 0)),
    )
    for body in (first, second):
        response = await app_client.http.post(
            url(app_project), content=body, headers=auth(app_project.ingest_key.secret)
        )
        assert response.status_code == 200, response.text
    sessions = app_client.runtime.database.sessions
    project_id = app_project.project.id
    assert await client_report_totals(sessions=sessions, project_id=project_id) == [
        ClientReportTotal(reason="sample_rate", category="transaction", quantity=30),
        ClientReportTotal(reason="queue_overflow", category="error", quantity=6),
    ]
    since = datetime(2026, 3, 2, tzinfo=UTC)
    assert await client_report_totals(sessions=sessions, project_id=project_id, since=since) == [
        ClientReportTotal(reason="queue_overflow", category="error", quantity=2)
    ]
    other = await create_project(sessions=sessions, name="Other")
    assert await client_report_totals(sessions=sessions, project_id=other.project.id) == []


async def test_record_client_reports_refuses_bad_quantities(runtime, project):
    when = datetime(2026, 3, 1, tzinfo=UTC)
    bad = DiscardedEvents(reason="x", category="error", quantity=2**31, timestamp=when)
    with pytest.raises(Exception, match="outside"):
        await record_client_reports(
            sessions=runtime.database.sessions, project_id=project.project.id, entries=[bad]
        )
    ok = DiscardedEvents(reason="x", category="error", quantity=1, timestamp=when)
    written = await record_client_reports(
        sessions=runtime.database.sessions, project_id=project.project.id, entries=[ok, ok]
    )
    assert written == 2
    totals = await client_report_totals(
        sessions=runtime.database.sessions,
        project_id=project.project.id,
        since=when + timedelta(seconds=1),
    )
    assert totals == []


# --- the real Python SDK over real HTTP ------------------------------------------------


class PaymentDeclined(Exception):
    pass


def charge(order: dict[str, int]) -> float:
    try:
        return order["total"] / order["quantity"]
    except ZeroDivisionError as exc:
        raise PaymentDeclined(f"card declined for order {order['id']}") from exc


def checkout(order: dict[str, int]) -> float:
    return charge(order)


@pytest.fixture
def sdk_project(live_server, tmp_path) -> dict[str, Any]:
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "SDK app", "--json"],
        env=live_server.env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    return json.loads(created.stdout)


@contextmanager
def sentry_client(dsn: str, **options: Any) -> Iterator[None]:
    """A fresh SDK client for one test; flushed, closed and unbound afterwards, since the
    SDK keeps its client in process-wide state."""
    sentry_sdk.init(dsn=dsn, default_integrations=False, **options)
    try:
        yield
    finally:
        sentry_sdk.flush(timeout=15)
        sentry_sdk.get_client().close(timeout=15)
        sentry_sdk.get_global_scope().set_client(None)


def read_stored(live_server, project_id: int) -> tuple[list[Event], list[Group]]:
    async def read() -> tuple[list[Event], list[Group]]:
        database = create_database(live_server.settings)
        try:
            async with database.sessions() as session:
                events = (
                    await session.scalars(
                        select(Event).where(Event.project_id == project_id).order_by(Event.id)
                    )
                ).all()
                groups = (
                    await session.scalars(
                        select(Group).where(Group.project_id == project_id).order_by(Group.id)
                    )
                ).all()
            return list(events), list(groups)
        finally:
            await database.dispose()

    return asyncio.run(read())


@pytest.mark.parametrize("compression", ["br", "gzip"])
def test_python_sdk_over_real_http(live_server, sdk_project, compression):
    assert sdk_project["dsn"].startswith(f"http://{sdk_project['ingest_key']}@127.0.0.1:")
    with sentry_client(
        sdk_project["dsn"],
        release="shop@5.0.0",
        environment="production",
        server_name="web-7",
        _experiments={"transport_compression_algo": compression},
    ):
        with sentry_sdk.isolation_scope() as scope:
            sentry_sdk.set_user({"id": "u-1", "email": "[email protected]"})
            sentry_sdk.set_tag("region", "eu")
            sentry_sdk.add_breadcrumb(category="cart", message="added SKU 17", level="info")
            sentry_sdk.add_breadcrumb(category="payment", message="charging", data={"n": 1})
            scope.fingerprint = ["{{ default }}", "payments"]
            try:
                checkout({"id": 31, "total": 10, "quantity": 0})
            except PaymentDeclined:
                exception_id = sentry_sdk.capture_exception()
        with sentry_sdk.isolation_scope():
            message_id = sentry_sdk.capture_message("Inventory sync is slow", level="warning")

    events, groups = read_stored(live_server, sdk_project["id"])
    by_id = {event.event_id: event for event in events}
    assert set(by_id) == {exception_id, message_id}
    error = by_id[exception_id]
    assert (error.dialect, error.platform, error.level) == ("sentry", "python", "error")
    assert (error.release, error.environment, error.server_name) == (
        "shop@5.0.0",
        "production",
        "web-7",
    )
    assert [exc["type"] for exc in error.exceptions] == ["ZeroDivisionError", "PaymentDeclined"]
    # The mechanism as the SDK sent it: sentry-sdk 2 marks the cause `generic`; 3 marks it
    # `chained` and says how it hangs on the exception raised from it.
    cause = error.exceptions[0]["mechanism"]
    assert cause["handled"] is True
    if cause["type"] == "chained":
        assert (cause["source"], cause["exception_id"], cause["parent_id"]) == ("__cause__", 1, 0)
        assert error.exceptions[1]["mechanism"]["exception_id"] == 0
    else:
        assert cause == {"type": "generic", "handled": True}
    assert [frame["function"] for frame in error.exceptions[0]["frames"]] == ["charge"]
    frames = error.exceptions[1]["frames"]
    assert [frame["function"] for frame in frames] == [
        "test_python_sdk_over_real_http",
        "checkout",
        "charge",
    ]
    innermost = frames[-1]
    assert innermost["module"] == __name__
    assert innermost["abs_path"] == __file__
    assert innermost["in_app"] is True
    assert innermost["context_line"].strip() == (
        "raise PaymentDeclined(f\"card declined for order {order['id']}\") from exc"
    )
    assert innermost["pre_context"][-1].strip() == "except ZeroDivisionError as exc:"
    assert innermost["vars"]["order"] == {"id": "31", "total": "10", "quantity": "0"}
    assert error.user == {"id": "u-1", "email": "[email protected]", "data": {}}
    assert error.tags == {"region": "eu"}
    assert [crumb["message"] for crumb in error.breadcrumbs] == ["added SKU 17", "charging"]
    assert error.fingerprint == ["{{ default }}", "payments"]
    assert error.contexts["sdk"]["name"] == "sentry.python"
    assert error.client_ip == "127.0.0.1"

    message = by_id[message_id]
    assert (message.type, message.level, message.message) == (
        "message",
        "warning",
        "Inventory sync is slow",
    )
    assert message.user is None and message.breadcrumbs is None

    titles = {group.id: group.title for group in groups}
    assert titles[error.group_id] == "PaymentDeclined: card declined for order 31"
    assert titles[message.group_id] == "Inventory sync is slow"
    group = next(group for group in groups if group.id == error.group_id)
    assert "client fingerprint ['{{ default }}', 'payments']" in group.grouping_reason
    assert group.culprit is not None and group.culprit.endswith("in charge")


def test_python_sdk_client_reports_over_real_http(live_server, sdk_project):
    """The SDK reports what `before_send` dropped; the report arrives and is counted."""
    with sentry_client(sdk_project["dsn"], before_send=lambda event, hint: None):
        for _ in range(3):
            sentry_sdk.capture_message("never sent")

    async def totals() -> list[ClientReportTotal]:
        database = create_database(live_server.settings)
        try:
            return await client_report_totals(
                sessions=database.sessions, project_id=sdk_project["id"]
            )
        finally:
            await database.dispose()

    assert asyncio.run(totals()) == [
        ClientReportTotal(reason="before_send", category="error", quantity=3)
    ]
    events, _ = read_stored(live_server, sdk_project["id"])
    assert events == []


def test_envelope_over_real_http_with_curl_like_client(live_server, sdk_project):
    """A plain HTTP client with the key in the query, as the browser SDK sends it."""
    body = envelope(event_item(simple_event()))
    response = httpx.post(
        f"{live_server.base_url}/api/{sdk_project['id']}/envelope/"
        f"?sentry_key={sdk_project['ingest_key']}&sentry_version=7",
        content=gzip.compress(body),
        headers={"Content-Type": "text/plain;charset=UTF-8", "Content-Encoding": "gzip"},
    )
    assert (response.status_code, response.json()) == (200, {"id": simple_event()["event_id"]})
