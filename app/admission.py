"""Admission: how many request bytes one process takes in at once.

What a process holds in memory while it ingests is, above its start-up heap, the requests
in flight: each body, what it parses into (about eight times its size for a batch of
events) and the events waiting for the writer. Every request that arrived used to be
read at once, so memory grew with the number of clients: 32 clients sending batches of
100 events held ~75 MiB, and a thousand clients sending the largest bodies allowed would
hold gigabytes, on machines where errorgraph is meant to fit in a few hundred MiB.

`AdmissionMiddleware` lets a request's handler read its body only while the bodies of
the requests in flight hold less than `MAX_BODY_BYTES_IN_FLIGHT` (`BodyBudget`); the
others wait, in the order they asked, before their bodies are read (the server stops
reading a waiting body after its first 64 KiB, so the client waits on TCP, not on memory
here). Waiting costs throughput nothing as long as the writer has a full batch queued: a
few batches in flight suffice. A request is charged its declared `Content-Length` when
admitted, and a body sent without one as it arrives; one request larger than the budget
is admitted alone. Requests without a body (GET, a WebSocket) are never held back.

Admission comes at the first read of the body, not when the request arrives: a handler
refuses a body its route does not take (413 from the declared `Content-Length`, 401 for
a bad key in the URL, 429 past a client's quota) without reading it, and so answers at
once instead of waiting behind the bodies in flight, which it would also hold back if it
were larger than the budget.

A body that arrives slowly holds its share of the budget while it arrives, so a body
must keep coming: after `BODY_GRACE_SECONDS` of waiting for it, at least
`BODY_MIN_BYTES_PER_SECOND` on average, or the request is answered 408 and its
connection closed (a timeout per read, as nginx's `client_body_timeout`, would let a
byte a minute hold on for ever). Only time spent waiting for the body counts, not the
handler's own work between reads, nor the wait for admission, during which the client is
held on TCP, nor a handler's wait for the disconnect once the body is in (a streamed
answer's). Behind a proxy that buffers request bodies (nginx does by default,
`deploy/nginx.conf` among them) every body arrives whole.

What a large body leaves behind is collected soon after its request ends
(`app.memory.LargeBodyGarbage`), not when the collector's own cadence comes to it.
"""

from __future__ import annotations

import asyncio
from collections import deque

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.bodies import declared_length
from app.memory import LargeBodyGarbage


class BodyBudget:
    """Bytes held by the requests in flight, and the requests waiting for room, first
    come first served: a small request never overtakes a large one that waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    async def admit(self, size: int) -> None:
        """Return once `size` bytes are charged; wait while they do not fit."""
        if not self._waiting and self._fits(size):
            self.held += size
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, future)
        self._waiting.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(size)  # admitted just as it was cancelled: hand it on
            else:
                self._waiting.remove(entry)
                self._wake()
            raise

    def charge(self, size: int) -> None:
        """Bytes of an admitted request beyond those it declared (a body without
        `Content-Length`): counted, never waited for, so an admitted request finishes."""
        self.held += size

    def release(self, size: int) -> None:
        self.held -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            size, future = self._waiting.popleft()
            self.held += size
            future.set_result(None)


_WITHOUT_BODY = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyTooSlow(Exception):
    """A request body that stopped arriving, or came slower than the server takes. Not
    an `ErrorgraphError`: no route's handler answers it; it passes them all up to
    `AdmissionMiddleware`, which does."""


class AdmissionMiddleware:
    """Holds the first read of each HTTP request's body until `budget` has room for it,
    and answers 408 to a body that arrives slower than `min_rate` bytes a second after
    `grace` seconds (see the module docstring). Without a budget every body is read at
    once; with `min_rate` 0 any pace is taken. `garbage`, when given, hears of each
    request's body once it ended. The budget is made by the app's factory, which also
    shows it in the metrics."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        budget: BodyBudget | None,
        min_rate: int = 0,
        grace: float = 0,
        garbage: LargeBodyGarbage | None = None,
    ) -> None:
        self.app = app
        self.budget = budget
        self.min_rate = min_rate
        self.grace = grace
        self.garbage = garbage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        budget = self.budget
        if (
            (budget is None and not self.min_rate and self.garbage is None)
            or scope["type"] != "http"
            or scope["method"] in _WITHOUT_BODY
        ):
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared == 0:
            await self.app(scope, receive, send)
            return
        charged = declared or 0
        admitted = budget is None
        received = 0
        waited = 0.0  # seconds spent waiting for the client's body
        arrived = False  # the whole body: later reads wait for a disconnect, at no pace
        answering = False
        loop = asyncio.get_running_loop()

        async def counted() -> Message:
            nonlocal admitted, received, charged, waited, arrived
            if not admitted:
                assert budget is not None
                await budget.admit(charged)
                admitted = True
            if self.min_rate and not arrived:
                # What the body may still take: the grace, and a second for each
                # `min_rate` bytes it has brought (more than nothing after a read that
                # brought some, since that read ended within its own allowance).
                allowance = self.grace + received / self.min_rate - waited
                began = loop.time()
                try:
                    async with asyncio.timeout(allowance):
                        message = await receive()
                except TimeoutError:
                    raise BodyTooSlow(
                        f"the request body arrived too slowly: {received} bytes in "
                        f"{waited + loop.time() - began:.1f} s; after the first "
                        f"{self.grace:g} s at least {self.min_rate} bytes a second are "
                        "needed"
                    ) from None
                finally:
                    waited += loop.time() - began
            else:
                message = await receive()
            if message["type"] == "http.request":
                arrived = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if budget is not None and received > charged:
                    # No Content-Length, or more than it said.
                    budget.charge(received - charged)
                    charged = received
            return message

        async def watched(message: Message) -> None:
            nonlocal answering
            if message["type"] == "http.response.start":
                answering = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooSlow as exc:
            if answering:
                raise
            # Answered here, in errorgraph's own shape whatever the route's dialect: the
            # route never saw the body. The connection is closed: the rest of the body
            # may still be on its way.
            response = JSONResponse(
                {"detail": str(exc)}, status_code=408, headers={"Connection": "close"}
            )
            await response(scope, counted, send)
        finally:
            if admitted and budget is not None:
                budget.release(charged)
            if self.garbage is not None:
                self.garbage.ended(received)
