"""Domain exceptions: what services raise. Each transport maps them to its own answer
(REST: status and body; GraphQL: `extensions.code`) in one place."""

from __future__ import annotations


class ErrorgraphError(Exception):
    """Base of every error a service raises on purpose."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(ErrorgraphError):
    """The thing asked for does not exist, or is not visible to the caller."""


class InvalidKey(ErrorgraphError):
    """No key, an unknown key, or a revoked key."""


class Forbidden(ErrorgraphError):
    """A valid key or token that may not do this (wrong scope or another project)."""


class InvalidInput(ErrorgraphError):
    """Input that cannot be used; `field` names the offending part."""


class PayloadTooLarge(ErrorgraphError):
    """A body, batch or decompressed payload over its limit."""


class QuotaExceeded(ErrorgraphError):
    """Too many requests; `retry_after` says when to come back (seconds). `scope` is what
    was counted: `ip` (requests from one client address), `key` or `project` (events),
    for protocols that describe limits in detail (Sentry's X-Sentry-Rate-Limits)."""

    def __init__(self, message: str, *, retry_after: int = 60, scope: str = "ip") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.scope = scope


class Unavailable(ErrorgraphError):
    """The server cannot take the request now (database down, shutting down)."""

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after
