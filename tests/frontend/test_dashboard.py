"""The live dashboard in headless Chromium against a real server: sign in, see the list,
watch an ingested error appear without reload, open it, resolve it. Screenshots of the
list and the issue page are saved under test-artifacts/screenshots/."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import browser_page
from support import ERRORGRAPH, ROOT, LiveServer, require_or_skip

DASHBOARD = ROOT / "frontend-examples" / "dashboard"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"


@pytest.fixture(scope="module")
def dashboard_build() -> Path:
    if not (DASHBOARD / "dist" / "index.html").exists():
        if shutil.which("npm") is None:
            require_or_skip("npm is not installed (needed to build the dashboard)")
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=DASHBOARD, check=True, capture_output=True
        )
        subprocess.run(["npm", "run", "build"], cwd=DASHBOARD, check=True, capture_output=True)
    return DASHBOARD / "dist"


def project(server: LiveServer) -> dict[str, Any]:
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "Shop", "--json"],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(created.stdout)


def send(server: LiveServer, key: str, function: str, event_id: str, user: str = "u1") -> None:
    response = httpx.post(
        server.base_url + "/api/v1/errors",
        json={
            "api_key": key,
            "event_id": event_id,
            "timestamp": datetime.now(UTC).isoformat(),
            "type": "exception",
            "environment": "production",
            "release": "2.0.1",
            "user": {"id": user},
            "breadcrumbs": [{"category": "click", "message": "button#pay"}],
            "exception": {
                "type": "TypeError",
                "message": f"{function} failed",
                "stack": f"TypeError: {function} failed\n    at {function} (https://shop.example/app.js:3:7)\n"
                "    at dispatch (https://shop.example/node_modules/lib/index.js:9:1)",
            },
        },
    )
    assert response.status_code == 202


async def test_sign_in_live_list_issue_page_resolve(live_server: LiveServer, dashboard_build: Path):
    info = project(live_server)
    send(live_server, info["ingest_key"], "loadCart", "first")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with browser_page() as page:
        await page.set_viewport_size({"width": 1200, "height": 800})
        await page.goto(live_server.base_url + "/")
        await page.fill("#token", "egt_wrong")
        await page.click("#sign-in button[type=submit]")
        await page.wait_for_selector("#sign-in .error")
        await page.fill("#token", info["token"])
        await page.click("#sign-in button[type=submit]")

        await page.wait_for_selector("tr.issue >> text=TypeError: loadCart failed")
        await page.wait_for_selector("#live:not([hidden])")
        assert await page.text_content("#summary") == "1 issue"

        # A new error arrives through the REST API: it appears without a reload.
        send(live_server, info["ingest_key"], "payInvoice", "second")
        row = page.locator("tr.issue", has_text="TypeError: payInvoice failed")
        await row.wait_for()
        assert await page.text_content("#summary") == "2 issues"
        # And counts go up live.
        send(live_server, info["ingest_key"], "payInvoice", "third", user="u2")
        await page.wait_for_function(
            """() => [...document.querySelectorAll('tr.issue')].some(
                 r => r.textContent.includes('payInvoice') && r.querySelector('.count').textContent === '2')"""
        )
        await page.screenshot(path=str(SCREENSHOTS / "issue-list.png"), full_page=True)

        await row.locator("a.title").click()
        await page.wait_for_selector("#issue-title >> text=TypeError: payInvoice failed")
        in_app = page.locator("ol.frames li.in-app .function")
        assert await in_app.all_text_contents() == ["payInvoice"]
        assert await page.locator("ol.frames li:not(.in-app) .function").all_text_contents() == [
            "dispatch"
        ]
        assert "u1" in await page.text_content("#users") and "u2" in await page.text_content(
            "#users"
        )
        assert "2.0.1" in await page.text_content("#releases")
        assert "production" in await page.text_content("#environments")
        assert "button#pay" in await page.text_content("#events")
        assert await page.locator("#chart rect").count() >= 24
        assert await page.text_content("#issue-status") == "unresolved"

        await page.click("#actions button[data-action=resolve]")
        await page.wait_for_selector('#issue-status >> text="resolved"')
        await page.screenshot(path=str(SCREENSHOTS / "issue-page.png"), full_page=True)

        # The server agrees.
        async with httpx.AsyncClient() as http:
            response = await http.post(
                live_server.base_url + "/graphql",
                json={"query": "{ groups(status: RESOLVED) { edges { node { title } } } }"},
                headers={"Authorization": f"Bearer {info['token']}"},
            )
        assert response.json()["data"]["groups"]["edges"] == [
            {"node": {"title": "TypeError: payInvoice failed"}}
        ]
    assert (SCREENSHOTS / "issue-list.png").stat().st_size > 0
    assert (SCREENSHOTS / "issue-page.png").stat().st_size > 0


async def test_bulk_actions_from_the_list(live_server: LiveServer, dashboard_build: Path):
    info = project(live_server)
    for name in ("alpha", "beta", "gamma"):
        send(live_server, info["ingest_key"], name, name)
    async with browser_page() as page:
        await page.goto(live_server.base_url + "/")
        await page.fill("#token", info["token"])
        await page.click("#sign-in button[type=submit]")
        await page.wait_for_selector("#summary >> text=3 issues")
        for name in ("alpha", "beta"):
            await page.locator("tr.issue", has_text=name).locator("input[type=checkbox]").check()
        await page.click("#bulk button[data-action=IGNORE]")
        await page.wait_for_selector("#summary >> text=1 issue")
        await page.select_option("#status", "IGNORED")
        await page.wait_for_selector("#summary >> text=2 issues")
        await page.fill("#search", "beta")
        await page.wait_for_selector("#summary >> text=1 issue")


def test_root_explains_how_to_build_without_a_build(settings, tmp_path):
    from support import running_server

    with running_server(
        settings, tmp_path, {"ERRORGRAPH_DASHBOARD_DIR": str(tmp_path / "none")}
    ) as server:
        page = httpx.get(server.base_url + "/")
    assert page.status_code == 200
    assert "npm run build" in page.text
