"""The API's guards: the bearer token, the exposure check at start and the request-body limit."""

# No `from __future__ import annotations`: FastAPI must resolve the guard's annotation, which
# names a local variable.
import json
import secrets
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.settings import Settings
from producer.flower import is_loopback


def check_exposure(settings: Settings) -> None:
    """Refuse to serve off loopback without a token (SystemExit naming the fix)."""
    if settings.api_token is None and not is_loopback(settings.api_host):
        raise SystemExit(
            f"refusing to serve the API on {settings.api_host} without authentication: "
            "set RIS_API_TOKEN"
        )


def token_guard(settings: Settings) -> Callable[..., None]:
    """A dependency that demands ``Authorization: Bearer <RIS_API_TOKEN>`` when a token is set."""
    bearer = HTTPBearer(auto_error=False, description="RIS_API_TOKEN")
    token = settings.api_token.get_secret_value().encode() if settings.api_token else None

    def guard(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if token is None:
            return
        given = credentials.credentials.encode() if credentials else b""
        # Constant time: the comparison must not leak how much of a guess was right.
        if not secrets.compare_digest(given, token):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    return guard


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
        body = json.dumps({"detail": self._reason()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
