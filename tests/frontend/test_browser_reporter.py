"""frontend-examples/browser-reporter in headless Chromium: each page throws, and the
event arrives with Chrome's stack frames parsed and in the right issue."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from browser import browser_page, static_site
from support import ERRORGRAPH, ROOT, LiveServer, require_or_skip

EXAMPLE = ROOT / "frontend-examples" / "browser-reporter"


def project(server: LiveServer) -> dict[str, Any]:
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "Browser", "--json"],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(created.stdout)


async def stored_events(server: LiveServer, token: str, count: int) -> list[dict[str, Any]]:
    query = """{ events(first: 10) { edges { node {
        eventId source level release url breadcrumbs userAgent
        exception { type value frames { function filename lineno colno inApp } }
        group { id title count } user { externalId } } } } }"""
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            response = await http.post(
                server.base_url + "/graphql",
                json={"query": query},
                headers={"Authorization": f"Bearer {token}"},
            )
            edges = response.json()["data"]["events"]["edges"]
            if len(edges) >= count:
                return [edge["node"] for edge in edges]
            await asyncio.sleep(0.1)
    raise AssertionError(f"expected {count} events, got {len(edges)}")


async def test_plain_snippet_reports_with_breadcrumbs(live_server: LiveServer):
    info = project(live_server)
    with static_site(EXAMPLE) as site:
        async with browser_page() as page:
            await page.goto(
                f"{site}/plain.html?url={quote(live_server.base_url)}&key={info['ingest_key']}"
            )
            await page.wait_for_function("window.__errorgraphReady === true")
            await page.click("#go-settings")
            await page.click("#throw")
            await page.click("#throw")
            [second, first] = await stored_events(live_server, info["token"], 2)
    assert first["source"] == "proliferate"
    assert first["exception"][0]["type"] == "TypeError"
    assert "percent" in first["exception"][0]["value"]
    functions = [frame["function"] for frame in first["exception"][0]["frames"]]
    # Outermost first, Chrome's frames parsed: the click handler calls applyDiscount,
    # which calls computeDiscount, where it fails.
    assert functions[-2:] == ["applyDiscount", "computeDiscount"]
    assert all(frame["filename"] == "/plain.html" for frame in first["exception"][0]["frames"])
    assert first["exception"][0]["frames"][-1]["lineno"] > 0
    messages = [crumb["message"] for crumb in first["breadcrumbs"]]
    assert messages == [
        "Opened /plain.html",
        "Clicked button#go-settings",
        messages[2],
        "Clicked button#throw",
    ]
    assert messages[2].startswith("Navigated to /plain.html") and messages[2].endswith("#settings")
    assert first["user"] == {"externalId": "plain-user-1"}
    assert "Chrome" in first["userAgent"]
    # Two throws from the same place: one issue.
    assert first["group"]["id"] == second["group"]["id"]
    assert second["group"]["count"] == 2


async def test_plain_snippet_unhandled_rejection(live_server: LiveServer):
    info = project(live_server)
    with static_site(EXAMPLE) as site:
        async with browser_page() as page:
            await page.goto(
                f"{site}/plain.html?url={quote(live_server.base_url)}&key={info['ingest_key']}"
            )
            await page.wait_for_function("window.__errorgraphReady === true")
            await page.click("#reject")
            [event] = await stored_events(live_server, info["token"], 1)
    assert event["exception"][0]["value"] == "inventory lookup failed"
    assert event["group"]["title"] == "Error: inventory lookup failed"


async def test_image_beacon_variant(live_server: LiveServer):
    info = project(live_server)
    with static_site(EXAMPLE) as site:
        async with browser_page() as page:
            await page.goto(
                f"{site}/plain.html?url={quote(live_server.base_url)}&key={info['ingest_key']}&transport=beacon"
            )
            await page.wait_for_function("window.__errorgraphReady === true")
            await page.click("#throw")
            [event] = await stored_events(live_server, info["token"], 1)
    assert event["source"] == "errorstack"
    assert event["exception"][0]["type"] == "TypeError"


@pytest.fixture(scope="module")
def sentry_bundle() -> Path:
    bundle = EXAMPLE / "dist" / "sentry-page.js"
    if not bundle.exists():
        if shutil.which("npm") is None:
            require_or_skip("npm is not installed (needed to bundle @sentry/browser)")
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True, capture_output=True
        )
        subprocess.run(["npm", "run", "build"], cwd=EXAMPLE, check=True, capture_output=True)
    return bundle


async def test_sentry_browser_sdk_with_an_errorgraph_dsn(
    live_server: LiveServer, sentry_bundle: Path
):
    info = project(live_server)
    with static_site(EXAMPLE) as site:
        async with browser_page() as page:
            await page.goto(f"{site}/sentry.html?dsn={quote(info['dsn'])}")
            await page.wait_for_function("window.__errorgraphReady === true")
            await page.click("#throw")
            [event] = await stored_events(live_server, info["token"], 1)
    assert event["source"] == "sentry"
    assert event["release"] == "browser-example@1.0.0"
    assert event["exception"][-1]["type"] == "TypeError"
    functions = [frame["function"] for frame in event["exception"][-1]["frames"]]
    assert "checkout" in functions and "parseTotal" in functions
    assert functions.index("checkout") < functions.index("parseTotal")
    assert event["user"] == {"externalId": "browser-user-1"}
    assert event["group"]["title"].startswith("TypeError:")
