"""The HTTP API (``ris serve``): the producer's search, ingest and progress over JSON, and the
web page. Every route goes through ``producer.client.Producer``, like the CLI.

``create_app`` only assembles: the routes are in ``routes/``, what they share in ``deps.py``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from ris.common.errors import RisError
from ris.common.settings import Settings
from ris.producer.api import metrics
from ris.producer.api.deps import Access
from ris.producer.api.metrics import RequestMetrics
from ris.producer.api.routes import PUBLIC_PATHS, api_router, page
from ris.producer.api.routes.health import WEB_DIR
from ris.producer.api.security import BodyLimit, TokenGate
from ris.producer.client import Producer
from ris.producer.flower import is_loopback

log = logging.getLogger("ris.api")

# Room for the multipart envelope (boundaries, part headers, small fields) around the image.
MULTIPART_OVERHEAD = 64 * 1024

__all__ = ["PUBLIC_PATHS", "create_app"]


async def ris_error(request: Request, exc: Exception) -> JSONResponse:
    """Any project error a route lets through: its message, with its ``http_status``."""
    status = exc.http_status if isinstance(exc, RisError) else 500
    return JSONResponse({"detail": str(exc)}, status_code=status)


def create_app(settings: Settings, producer: Producer | None = None) -> FastAPI:
    """The FastAPI application for ``settings`` (see ``producer/api/serve.py`` to run it)."""
    app = FastAPI(
        title="ris: reverse image search",
        version="0.1.0",
        description="Search indexed images by example, index folders, follow jobs. "
        "Every /api route but /api/health and /api/config needs `Authorization: Bearer "
        "<RIS_API_TOKEN>` when a token is set.",
    )
    app.state.settings = settings
    app.state.producer = producer or Producer(settings)
    app.state.access = Access(settings, is_loopback(settings.api_host))

    # Added first = innermost: CORS answers preflights, then the body limit, then the token.
    if settings.api_token is not None:
        token = settings.api_token.get_secret_value().encode()
        app.add_middleware(TokenGate, token=token, public=PUBLIC_PATHS)
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_upload_bytes + MULTIPART_OVERHEAD)
    if settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api_cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    # Outermost: requests refused by the guards above are counted too.
    app.add_middleware(RequestMetrics)
    app.add_exception_handler(RisError, ris_error)

    app.include_router(api_router)
    app.include_router(metrics.router)
    app.include_router(page)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    log.info("API ready: token %s", "required" if settings.api_token else "not set (loopback)")
    return app
