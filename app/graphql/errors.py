"""GraphQL errors: `extensions.code` from one place; anything unexpected masked.

Domain exceptions raised by services become UNAUTHENTICATED, FORBIDDEN, NOT_FOUND or
BAD_USER_INPUT (with the offending `field`); an error that is not ours is logged and
answered as "Unexpected error." so internals never reach a client.
"""

from __future__ import annotations

import logging

from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors

from app.errors import (
    ErrorgraphError,
    Forbidden,
    InvalidInput,
    InvalidKey,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    Unavailable,
)

log = logging.getLogger("errorgraph.graphql")

CODES: dict[type[ErrorgraphError], str] = {
    InvalidKey: "UNAUTHENTICATED",
    Forbidden: "FORBIDDEN",
    NotFound: "NOT_FOUND",
    InvalidInput: "BAD_USER_INPUT",
    PayloadTooLarge: "BAD_USER_INPUT",
    QuotaExceeded: "RATE_LIMITED",
    Unavailable: "SERVICE_UNAVAILABLE",
}


def code_for(exc: ErrorgraphError) -> str:
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]  # type: ignore[index]
    return "BAD_USER_INPUT"


class ErrorCodes(MaskErrors):
    """Give every error a code; mask the ones that are not the caller's doing."""

    def __init__(self) -> None:
        super().__init__(error_message="Unexpected error.")

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        return [self._coded(error) for error in errors]

    def _process_result(self, result: object) -> None:
        # As MaskErrors does, without its isinstance against a runtime Protocol, which runs
        # for every result of every subscriber and cost a twentieth of a message's fan-out.
        errors = getattr(result, "errors", None)
        if errors:
            result.errors = self._process_errors(errors)  # type: ignore[attr-defined]

    def _coded(self, error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if original is None or isinstance(original, GraphQLError):
            # Parse, validation and variable errors: the request itself is wrong.
            code = "GRAPHQL_VALIDATION_FAILED"
            if error.message.startswith("Variable '$"):
                code = "BAD_USER_INPUT"
            return self._with(error, error.message, {"code": code})
        if isinstance(original, ErrorgraphError):
            extensions: dict[str, object] = {"code": code_for(original)}
            if original.field:
                extensions["field"] = original.field
            return self._with(error, original.message, extensions)
        if isinstance(original, TypeError) and "non-nullable field Subscription." in str(original):
            # A subscription sent over plain HTTP: nothing to stream it to.
            return self._with(
                error,
                "subscriptions run over WebSocket (graphql-transport-ws) at /graphql",
                {"code": "BAD_USER_INPUT"},
            )
        log.error("unexpected error in GraphQL resolver", exc_info=original)
        return self._with(error, self.error_message, {"code": "INTERNAL_SERVER_ERROR"})

    @staticmethod
    def _with(error: GraphQLError, message: str, extensions: dict[str, object]) -> GraphQLError:
        return GraphQLError(
            message=message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            original_error=None,
            extensions={**(error.extensions or {}), **extensions},
        )
