"""GraphiQL at /graphql, in headless Chromium, from errorgraph's own files (no CDN): a
query runs, and a README subscription example receives a new issue live."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from browser import browser_page
from support import ERRORGRAPH, ROOT, LiveServer, require_or_skip

GRAPHIQL = ROOT / "frontend-examples" / "graphiql"


@pytest.fixture(scope="module")
def graphiql_build() -> Path:
    if not (GRAPHIQL / "dist" / "graphiql.min.js").exists():
        if shutil.which("npm") is None:
            require_or_skip("npm is not installed (needed to fetch GraphiQL's files)")
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=GRAPHIQL, check=True, capture_output=True
        )
        subprocess.run(["npm", "run", "build"], cwd=GRAPHIQL, check=True, capture_output=True)
    return GRAPHIQL / "dist"


def project(server: LiveServer) -> dict[str, Any]:
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "IDE", "--json"],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(created.stdout)


async def test_graphiql_runs_a_subscription_from_the_readme(
    live_server: LiveServer, graphiql_build: Path
):
    info = project(live_server)
    headers = json.dumps({"Authorization": f"Bearer {info['token']}"})
    subscription = (
        f'subscription {{ groupCreated(projectId: "{info["id"]}") {{ id title count }} }}'
    )
    requests_outside: list[str] = []
    async with browser_page() as page:
        page.on(
            "request",
            lambda request: (
                requests_outside.append(request.url)
                if not request.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:"))
                else None
            ),
        )
        await page.goto(
            f"{live_server.base_url}/graphql?q={quote(subscription)}&headers={quote(headers)}"
        )
        await page.wait_for_selector(".graphiql-container")
        await page.click(".graphiql-execute-button")
        await page.wait_for_timeout(1000)
        async with httpx.AsyncClient() as http:
            response = await http.post(
                live_server.base_url + "/api/v1/errors",
                json={
                    "api_key": info["ingest_key"],
                    "event_id": "ide-1",
                    "timestamp": "2026-03-01T12:00:00Z",
                    "type": "exception",
                    "exception": {
                        "type": "RangeError",
                        "message": "seen in GraphiQL",
                        "stack": "RangeError: seen in GraphiQL\n    at paint (ui.js:1:1)",
                    },
                },
            )
        assert response.status_code == 202
        await page.wait_for_function(
            "() => document.querySelector('.graphiql-response')?.textContent.includes('seen in GraphiQL')",
            timeout=15000,
        )
        text = await page.text_content(".graphiql-response")
    assert '"title": "RangeError: seen in GraphiQL"' in text
    assert requests_outside == []
