"""GraphiQL served from errorgraph's own files, so the IDE works on a machine without
internet, and so the token in its Headers tab also authenticates subscriptions."""

from __future__ import annotations

from functools import cache
from importlib import resources

from app.dashboard import GRAPHIQL_ASSETS_PATH, graphiql_assets_available


@cache
def _template() -> str:
    return (resources.files("app.graphql") / "graphiql.html").read_text(encoding="utf-8")


def graphiql_page() -> str | None:
    """The page, or None when GraphiQL's files were not built (then Strawberry's own page,
    which loads them from a CDN, is the fallback)."""
    if not graphiql_assets_available():
        return None
    return _template().replace("{{ASSETS}}", GRAPHIQL_ASSETS_PATH)
