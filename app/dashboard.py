"""The live dashboard at `/`: the built files of frontend-examples/dashboard.

The dashboard is built with npm (`./scripts/run` builds it when npm is present). Without a
build, `/` says where it would be and how to build it, instead of a bare 404.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from app.config import Settings

EXAMPLES = Path(__file__).resolve().parent.parent / "frontend-examples"
SOURCE = EXAMPLES / "dashboard"
GRAPHIQL_ASSETS = EXAMPLES / "graphiql" / "dist"
GRAPHIQL_ASSETS_PATH = "/graphiql-assets"


def dashboard_dir(settings: Settings) -> Path:
    return Path(settings.dashboard_dir) if settings.dashboard_dir else SOURCE / "dist"


def graphiql_assets_available() -> bool:
    """Whether GraphiQL's files were built (in frontend-examples/graphiql:
    npm install && npm run build)."""
    return (GRAPHIQL_ASSETS / "graphiql.min.js").is_file()


def dashboard_routes(settings: Settings) -> list[BaseRoute]:
    """`/` and `/assets/…` only: a catch-all would turn every other path's 405 into a 404.
    GraphiQL's own files are served under /graphiql-assets/ when built."""
    extra: list[BaseRoute] = []
    if graphiql_assets_available():
        extra.append(Mount(GRAPHIQL_ASSETS_PATH, app=StaticFiles(directory=GRAPHIQL_ASSETS)))
    return extra + _dashboard(settings)


def _dashboard(settings: Settings) -> list[BaseRoute]:
    directory = dashboard_dir(settings)
    index = directory / "index.html"
    if index.is_file():

        async def page(_request: Request) -> Response:
            return FileResponse(
                index, media_type="text/html", headers={"Cache-Control": "no-cache"}
            )

        routes: list[BaseRoute] = [Route("/", page, methods=["GET", "HEAD"])]
        if (directory / "assets").is_dir():
            routes.append(Mount("/assets", app=StaticFiles(directory=directory / "assets")))
        return routes

    async def not_built(_request: Request) -> Response:
        body = (
            "<!doctype html><meta charset=utf-8><title>errorgraph</title>"
            "<h1>errorgraph is running</h1>"
            f"<p>The dashboard is not built: no <code>{escape(str(directory))}/index.html</code>."
            "<p>Build it with <code>cd frontend-examples/dashboard &amp;&amp; "
            "npm install &amp;&amp; npm run build</code> "
            "(or run <code>./scripts/run</code> with npm installed), "
            "or point <code>ERRORGRAPH_DASHBOARD_DIR</code> at a build."
            "<p>The API is at <a href=/graphql>/graphql</a>."
        )
        return HTMLResponse(body)

    return [Route("/", not_built, methods=["GET"])]
