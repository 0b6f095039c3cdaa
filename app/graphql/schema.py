"""The schema, and the ASGI app that serves it at /graphql.

`schema.graphql` at the top of the repository is this schema exported
(`strawberry export-schema app.graphql.schema:schema`); a test fails when it is stale.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any

import strawberry
from graphql.error import GraphQLError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.extensions import (
    AddValidationRules,
    MaxTokensLimiter,
    ParserCache,
    ValidationCache,
    max_aliases,
    query_depth_limiter,
)
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.tools import merge_types
from strawberry.types.unset import UNSET, UnsetType

from app.bodies import declared_length, read_body
from app.config import Settings
from app.errors import ErrorgraphError, Forbidden, InvalidKey, PayloadTooLarge
from app.services import keys as key_service
from app.services.runtime import Runtime
from app.services.sourcemaps import MAX_SOURCE_MAP_BYTES

from .alerts import AlertMutation, AlertQuery
from .context import Context, Loaders, bearer_secret
from .errors import ErrorCodes, code_for
from .fanout import FanOut, SharingTransportWSHandler
from .ide import graphiql_page
from .mutations import Mutation
from .queries import Query
from .sourcemaps import SourceMapMutation, SourceMapQuery
from .subscriptions import Subscription

MAX_DEPTH = 12
MAX_ALIASES = 30
MAX_TOKENS = 5000
# The largest body a GraphQL request needs: `uploadSourceMap` with a source map of the
# largest size taken, which escaping into a JSON string can make twice as long.
MAX_GRAPHQL_BODY_BYTES = 2 * MAX_SOURCE_MAP_BYTES + 64 * 1024


class Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Log only what is not the caller's doing; ErrorCodes logs those with a trace."""
        for error in errors:
            if error.extensions and error.extensions.get("code") == "INTERNAL_SERVER_ERROR":
                continue
            if isinstance(error.original_error, ErrorgraphError):
                continue
            if error.original_error is None:
                continue
            super().process_errors([error], execution_context)


# The limits' rules are made once: strawberry's QueryDepthLimiter and MaxAliasesLimiter
# make a new rule class for every request, and a new class in the rules would make every
# request miss the validation cache. Validating a list query against this schema costs
# ~2.5 ms and parsing it ~0.4 ms, about what reading its page of 50 groups takes; clients
# send the same few query texts again and again. The caches are bounded (128 texts each).
LIMIT_RULES = (
    query_depth_limiter.create_validator(MAX_DEPTH, None),
    max_aliases.create_validator(MAX_ALIASES),
)
QUERY_TEXTS_CACHED = 128

schema = Schema(
    query=merge_types("Query", (Query, AlertQuery, SourceMapQuery)),
    mutation=merge_types("Mutation", (Mutation, AlertMutation, SourceMapMutation)),
    subscription=Subscription,
    extensions=[
        partial(AddValidationRules, list(LIMIT_RULES)),
        partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
        partial(ParserCache, maxsize=QUERY_TEXTS_CACHED),
        partial(ValidationCache, maxsize=QUERY_TEXTS_CACHED),
        ErrorCodes,
    ],
)


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's ASGI app with our context: the runtime, the caller's secret, loaders.

    On WebSocket, the secret comes from the `connection_init` payload
    (`{"Authorization": "Bearer …"}`); no or bad credentials close the socket with 4403.
    """

    graphql_transport_ws_handler_class = SharingTransportWSHandler

    def __init__(
        self, *args: Any, max_body_bytes: int, max_upload_bytes: int, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fanout = FanOut()
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Strawberry reads a POST's whole body, however large; this reads it first, and
        refuses it (413) past its limit, before it fills the process's memory."""
        if scope["type"] != "http" or scope["method"] != "POST":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        limit = await self._body_limit(request)
        try:
            body = await read_body(request, limit=limit)
        except PayloadTooLarge as exc:
            message = exc.message
            if limit < self.max_upload_bytes:
                message += (
                    f"; up to {self.max_upload_bytes} bytes with credentials that may write "
                    "(uploadSourceMap)"
                )
            error = {"message": message, "extensions": {"code": code_for(exc)}}
            await JSONResponse({"errors": [error]}, status_code=413)(scope, receive, send)
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # the client's disconnect, when it comes
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await super().__call__(scope, replay, send)

    async def _body_limit(self, request: Request) -> int:
        """`max_body_bytes` for anyone; `max_upload_bytes`, which only a source map needs,
        for callers who may write. Their credentials are looked at before the body is read
        (and only for a body that may be larger than `max_body_bytes`), so that a caller
        without them cannot make the process read tens of MiB it will refuse anyway."""
        declared = declared_length(request.scope)
        if declared is not None and declared <= self.max_body_bytes:
            return self.max_body_bytes
        runtime: Runtime = request.app.state.runtime
        try:
            viewer = await key_service.viewer_for_secret(
                sessions=runtime.database.sessions, secret=bearer_secret(request.headers)
            )
        except (InvalidKey, Forbidden):
            return self.max_body_bytes
        return self.max_upload_bytes if viewer.may("write") else self.max_body_bytes

    async def render_graphql_ide(self, request: Request) -> Response:
        page = graphiql_page()
        if page is None:
            return await super().render_graphql_ide(request)
        return HTMLResponse(page)

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        params = context.connection_params or {}
        value = params.get("Authorization") or params.get("authorization")
        if value:
            context.secret = bearer_secret({"authorization": value})
        try:
            viewer = await context.viewer()
        except ErrorgraphError:
            raise ConnectionRejectionError() from None
        if not viewer.may("read"):
            raise ConnectionRejectionError()
        return UNSET

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket | None = None
    ) -> Context:
        runtime: Runtime = request.app.state.runtime
        secret = bearer_secret(request.headers)
        return Context(
            request=request,
            response=response if isinstance(response, Response) else None,
            runtime=runtime,
            loaders=Loaders.build(runtime.database.sessions),
            secret=secret,
        )


def graphql_app(settings: Settings) -> GraphQLApp:
    protocols = [GRAPHQL_TRANSPORT_WS_PROTOCOL]
    if settings.graphql_ws_legacy:
        protocols.append(GRAPHQL_WS_PROTOCOL)
    options: dict[str, Any] = {
        "graphql_ide": "graphiql" if settings.graphiql else None,
        "allow_queries_via_get": True,
        "subscription_protocols": tuple(protocols),
        "connection_init_wait_timeout": timedelta(seconds=settings.ws_connection_init_timeout),
        "max_subscriptions_per_connection": settings.ws_max_subscriptions,
        # Auth is a bearer token in connection_init, never a cookie, so a page on another
        # origin gains nothing it could not do itself: dashboards may live anywhere.
        "allowed_origins": ("*",),
    }
    return GraphQLApp(
        schema,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=max(settings.max_body_bytes, MAX_GRAPHQL_BODY_BYTES),
        **options,
    )
