"""The API's guards: the bearer token, the exposure check at start and the request-body limit
(the route-level token check is ``deps.require_token``)."""

from __future__ import annotations

import json
import secrets

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ris.common.settings import Settings
from ris.producer.flower import is_loopback


def check_exposure(settings: Settings) -> None:
    """Refuse to serve off loopback without a token (SystemExit naming the fix)."""
    if settings.api_token is None and not is_loopback(settings.api_host):
        raise SystemExit(
            f"refusing to serve the API on {settings.api_host} without authentication: "
            "set RIS_API_TOKEN"
        )


def bearer_matches(header: bytes, token: bytes) -> bool:
    """Whether an Authorization header value carries ``token`` (compared in constant time, so
    the comparison does not leak how much of a guess was right)."""
    scheme, _, given = header.partition(b" ")
    return scheme.lower() == b"bearer" and secrets.compare_digest(given.strip(), token)


def unauthorized() -> HTTPException:
    """The 401 of a request without the right bearer token."""
    return HTTPException(
        401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
    )


class TokenGate:
    """Answer 401 to a request for a guarded path without the token before its body is read
    (FastAPI parses a form before it runs the route's dependencies)."""

    def __init__(self, app: ASGIApp, token: bytes, public: frozenset[str]) -> None:
        self.app = app
        self.token = token
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith("/api/")
            and scope["path"] not in self.public
            and not bearer_matches(dict(scope["headers"]).get(b"authorization", b""), self.token)
        ):
            await _send_json(
                send,
                401,
                {"detail": "missing or wrong bearer token"},
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, counting as they arrive, so an
    oversize upload is neither read whole nor spooled to disk (chunked bodies included)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._reason())
            return message

        await self.app(scope, counted, send)

    def _reason(self) -> str:
        return f"request body exceeds the upload limit of {self.max_bytes:,} bytes"

    async def _refuse(self, send: Send) -> None:
        await _send_json(send, 413, {"detail": self._reason()}, [(b"connection", b"close")])


async def _send_json(
    send: Send, status: int, body: dict[str, str], headers: list[tuple[bytes, bytes]]
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
