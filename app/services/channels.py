"""Where alerts go: e-mail over SMTP, e-mail through Postmark's API, a JSON webhook, and a
Slack-compatible webhook.

A sender either returns (the receiver took the message) or raises `ChannelError`, whose
`permanent` says whether trying again could help: a refused address or a 4xx answer will
be refused again, a timeout, a closed port or a 5xx may not. The dispatcher decides about
retries; senders never sleep.

Postmark's API as this follows it: `POST {api}/email` with `X-Postmark-Server-Token`,
JSON `From`, `To` (comma-separated), `Subject`, `TextBody`, `MessageStream`; 200 with
`ErrorCode` 0 is success (postmarkapp.com/developer/api/email-api, 2025).
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Literal

from app.config import Settings

if TYPE_CHECKING:
    import httpx

ChannelName = Literal["email", "postmark", "webhook", "slack"]
CHANNELS: tuple[ChannelName, ...] = ("email", "postmark", "webhook", "slack")

# One address: something@domain, no spaces or commas (the list separator).
_ADDRESS = re.compile(r"^[^@\s,<>]+@[^@\s,<>]+\.[^@\s,<>]+$")


class ChannelError(Exception):
    """A notification that did not get through; `permanent` when retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Notification:
    """One message, rendered for every channel: a subject and plain text for mail and
    Slack, and `payload` (the same facts as JSON) for webhooks."""

    subject: str
    text: str
    payload: dict[str, Any]
    link: str | None = None


def addresses(target: str) -> list[str]:
    """The comma-separated addresses of an e-mail target, in order, without blanks."""
    return [part.strip() for part in target.split(",") if part.strip()]


def invalid_address(target: str) -> str | None:
    """None when `target` is a usable address list, else the first address that is not."""
    found = addresses(target)
    if not found:
        return target
    return next((address for address in found if not _ADDRESS.match(address)), None)


def _retryable_status(status: int) -> bool:
    return status >= 500 or status in {408, 425, 429}


def _http_failure(response: httpx.Response, what: str) -> ChannelError:
    body = response.text[:300].strip()
    return ChannelError(
        f"{what} answered {response.status_code}: {body}"
        if body
        else f"{what} answered {response.status_code}",
        permanent=not _retryable_status(response.status_code),
    )


class Senders:
    """The channels, with the server's mail settings and one shared HTTP client.

    The client, and the SMTP and HTTP libraries, are loaded at the first message that
    needs them: most servers never send one, and httpx with its TLS context held ~8 MiB
    in every process."""

    def __init__(self, *, settings: Settings) -> None:
        self._settings = settings
        self._http: httpx.AsyncClient | None = None

    async def _http_post(self, url: str, failed: str, **options: Any) -> httpx.Response:
        """POST through the shared client, made here the first time; a failure to get an
        answer becomes a ChannelError worth retrying, `failed` saying what failed."""
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient(follow_redirects=False)
        try:
            return await self._http.post(url, timeout=self._settings.alert_send_timeout, **options)
        except httpx.HTTPError as exc:
            raise ChannelError(f"{failed}: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def send(
        self,
        *,
        channel: str,
        target: str,
        options: dict[str, Any] | None,
        notification: Notification,
    ) -> None:
        options = options or {}
        if channel == "email":
            await self._smtp(addresses(target), notification)
        elif channel == "postmark":
            await self._postmark(addresses(target), notification)
        elif channel == "webhook":
            headers = {str(k): str(v) for k, v in (options.get("headers") or {}).items()}
            await self._post(target, notification.payload, headers, "the webhook")
        elif channel == "slack":
            await self._post(target, {"text": slack_text(notification)}, {}, "the Slack webhook")
        else:
            raise ChannelError(f"unknown channel {channel!r}", permanent=True)

    async def _post(
        self, url: str, body: dict[str, Any], headers: dict[str, str], what: str
    ) -> None:
        response = await self._http_post(url, f"{what} at {url} failed", json=body, headers=headers)
        if response.status_code >= 300:
            raise _http_failure(response, what)

    async def _postmark(self, to: list[str], notification: Notification) -> None:
        settings = self._settings
        if settings.postmark_api_token is None or not settings.postmark_from_email:
            raise ChannelError(
                "Postmark is not configured: set POSTMARK_API_TOKEN and POSTMARK_FROM_EMAIL",
                permanent=True,
            )
        response = await self._http_post(
            settings.postmark_api_url.rstrip("/") + "/email",
            "Postmark failed",
            json={
                "From": settings.postmark_from_email,
                "To": ", ".join(to),
                "Subject": notification.subject,
                "TextBody": notification.text,
                "MessageStream": "outbound",
            },
            headers={
                "Accept": "application/json",
                "X-Postmark-Server-Token": settings.postmark_api_token.get_secret_value(),
            },
        )
        if response.status_code != 200:
            raise _http_failure(response, "Postmark")
        try:
            code = response.json().get("ErrorCode", 0)
        except ValueError:
            code = 0
        if code:
            raise ChannelError(f"Postmark refused the message: {response.text[:300]}")

    async def _smtp(self, to: list[str], notification: Notification) -> None:
        settings = self._settings
        if not settings.smtp_host or not settings.smtp_from:
            raise ChannelError(
                "SMTP is not configured: set ERRORGRAPH_SMTP_HOST and ERRORGRAPH_SMTP_FROM",
                permanent=True,
            )
        message = EmailMessage()
        message["From"] = settings.smtp_from
        message["To"] = ", ".join(to)
        message["Subject"] = notification.subject
        message["Date"] = email.utils.formatdate(localtime=False)
        message["Message-ID"] = email.utils.make_msgid(domain="errorgraph")
        message.set_content(notification.text)
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        import aiosmtplib

        try:
            await aiosmtplib.send(
                message,
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_user,
                password=password,
                start_tls=settings.smtp_starttls,
                use_tls=False,
                timeout=settings.alert_send_timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise ChannelError(f"the mail server refused {to}: {exc}", permanent=True) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # 5xx replies are final (RFC 5321 §4.2.1); 4xx ones are worth another try.
            raise ChannelError(
                f"the mail server answered {exc.code}: {exc.message}", permanent=exc.code >= 500
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise ChannelError(f"sending mail failed: {type(exc).__name__}: {exc}") from exc


def slack_text(notification: Notification) -> str:
    """Slack's mrkdwn: the subject bold and linked, then the text."""
    subject = notification.subject.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    head = f"*<{notification.link}|{subject}>*" if notification.link else f"*{subject}*"
    return f"{head}\n{notification.text}"
