"""Real receivers for alert tests, on 127.0.0.1 in the test's event loop: an HTTP server
that records what webhooks, Slack and the Postmark API are sent, and an SMTP server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

import orjson
import uvicorn
from aiosmtpd.smtp import SMTP, Envelope, Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from support import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class HttpReceiver:
    """Answers every POST 200 (Postmark's shape on /email); 500 while `failures` > 0;
    `statuses[path]` when set."""

    base_url: str = ""
    requests: list[Received] = field(default_factory=list)
    failures: int = 0
    failed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return self.base_url + path

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def wait_for(self, path: str, count: int = 1, timeout: float = 20) -> list[Received]:
        async with asyncio.timeout(timeout):
            while len(self.on(path)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.on(path)

    async def _endpoint(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        if self.failures > 0:
            self.failures -= 1
            self.failed += 1
            return JSONResponse({"error": "try later"}, status_code=500)
        if request.url.path in self.statuses:
            self.failed += 1
            return JSONResponse({"error": "no"}, status_code=self.statuses[request.url.path])
        self.requests.append(
            Received(path=request.url.path, headers=dict(request.headers), body=body)
        )
        self._arrived.set()
        if request.url.path == "/email":
            return JSONResponse(
                {"To": body.get("To"), "ErrorCode": 0, "Message": "OK", "MessageID": "test"}
            )
        return JSONResponse({"ok": True})


@contextlib.asynccontextmanager
async def http_receiver() -> AsyncIterator[HttpReceiver]:
    receiver = HttpReceiver()
    app = Starlette(routes=[Route("/{path:path}", receiver._endpoint, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            ws="none",
            http="h11",
        )
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 (uvicorn has no event for it)
            await asyncio.sleep(0.01)
    receiver.base_url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task


@dataclass
class Inbox:
    """What the SMTP server accepted: envelope recipients and the parsed message."""

    messages: list[tuple[list[str], Message]] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(content)))
        self._arrived.set()
        return "250 OK"

    async def wait_for(
        self, count: int = 1, timeout: float = 20
    ) -> list[tuple[list[str], Message]]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.messages


@contextlib.asynccontextmanager
async def smtp_server() -> AsyncIterator[Inbox]:
    inbox = Inbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(inbox, hostname="errorgraph-test", loop=loop), "127.0.0.1", 0
    )
    inbox.port = server.sockets[0].getsockname()[1]
    try:
        yield inbox
    finally:
        server.close()
        await server.wait_closed()
