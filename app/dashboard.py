"""The live dashboard at `/`: the built files of frontend-examples/dashboard.

The dashboard is built with npm (`./scripts/run` builds it when npm is present). Without a
build, `/` says where it would be and how to build it, instead of a bare 404.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from app.config import Settings

SOURCE = Path(__file__).resolve().parent.parent / "frontend-examples" / "dashboard"


def dashboard_dir(settings: Settings) -> Path:
    return Path(settings.dashboard_dir) if settings.dashboard_dir else SOURCE / "dist"


def dashboard_routes(settings: Settings) -> list[BaseRoute]:
    """Routes to add last: they answer every path no other route took."""
    directory = dashboard_dir(settings)
    if (directory / "index.html").is_file():
        return [Mount("/", app=StaticFiles(directory=directory, html=True), name="dashboard")]

    async def not_built(_request: Request) -> Response:
        body = (
            "<!doctype html><meta charset=utf-8><title>errorgraph</title>"
            "<h1>errorgraph is running</h1>"
            f"<p>The dashboard is not built: no <code>{escape(str(directory))}/index.html</code>."
            "<p>Build it with <code>cd frontend-examples/dashboard &amp;&amp; npm ci &amp;&amp; "
            "npm run build</code> (or run <code>./scripts/run</code> with npm installed), "
            "or point <code>ERRORGRAPH_DASHBOARD_DIR</code> at a build."
            "<p>The API is at <a href=/graphql>/graphql</a>."
        )
        return HTMLResponse(body)

    return [Route("/", not_built, methods=["GET"])]
