"""The API's routes: ``api_router`` (everything under /api) and ``page`` (the web page)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ris.producer.api.deps import require_token
from ris.producer.api.routes import health, images, jobs, search, sync
from ris.producer.api.routes.health import page

# Routes under /api that answer without the token (no data from the index): health's.
PUBLIC_PATHS = frozenset({"/api/health", "/api/config"})

api_router = APIRouter(prefix="/api")
for guarded in (search.router, jobs.router, sync.router, images.router):
    api_router.include_router(guarded, dependencies=[Depends(require_token)])
api_router.include_router(health.router)

__all__ = ["PUBLIC_PATHS", "api_router", "page"]
