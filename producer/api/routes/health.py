"""What answers without the token: the health check, the page's settings, and the page."""

from __future__ import annotations

from pathlib import Path

import redis
from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

from ris.common.errors import CollectionNotFoundError
from ris.common.store import BoundedClient
from ris.producer.api.deps import ProducerDep, SettingsDep
from ris.producer.api.schemas import HealthOut, PageConfig

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
router = APIRouter()  # under /api
page = APIRouter(include_in_schema=False)


@router.get("/health", response_model=HealthOut, summary="Redis, Milvus and workers")
def health(settings: SettingsDep, producer: ProducerDep) -> JSONResponse:
    """200 when Redis and Milvus answer and a worker does, else 503 with the reasons."""
    errors: dict[str, str] = {}
    try:
        quick = redis.Redis.from_url(
            settings.redis_url.get_secret_value(), socket_connect_timeout=2, socket_timeout=2
        )
        redis_ok = bool(quick.ping())
    except redis.RedisError as exc:
        redis_ok, errors["redis"] = False, str(exc)
    try:
        client = BoundedClient(settings, create=False)
        try:
            client.list_collections()
        finally:
            client.close()
        milvus_ok = True
    except CollectionNotFoundError:  # a Lite file nothing was indexed into yet
        milvus_ok = True
    except Exception as exc:  # any client error means "not reachable"
        milvus_ok, errors["milvus"] = False, str(exc)
        producer.reconnect()
    workers = len(producer.workers_online()) if redis_ok else 0
    if redis_ok and not workers:
        errors["workers"] = "no worker answers a ping"
    out = HealthOut(
        ok=redis_ok and milvus_ok and workers > 0,
        redis=redis_ok,
        milvus=milvus_ok,
        workers=workers,
        errors=errors,
    )
    return JSONResponse(out.model_dump(), status_code=200 if out.ok else 503)


@router.get("/config", response_model=PageConfig, summary="What the web page needs")
def page_config(settings: SettingsDep) -> PageConfig:
    """Whether a token is needed, the default top-k, the queues, the upload limit, Flower."""
    return PageConfig(
        token_required=settings.api_token is not None,
        top_k=settings.top_k,
        queues=settings.queues,
        max_upload_bytes=settings.api_max_upload_bytes,
        flower_url=settings.api_flower_url,
        flower_port=settings.flower_port,
    )


@page.get("/")
def index() -> FileResponse:
    """The web page (its scripts and styles are under /static)."""
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})
