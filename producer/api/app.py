"""The HTTP API (``ris serve``): the producer's search, ingest and progress over JSON, and the
web page. Every route goes through ``producer.client.Producer``, like the CLI."""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi import Path as PathParam
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ris.common.errors import CollectionNotFoundError
from ris.common.filters import FilterError, SearchFilter
from ris.common.images import ImageError
from ris.common.settings import Settings
from ris.common.sources import SourceError
from ris.common.store import BoundedClient, ImageStore
from ris.producer.api.access import AccessError, check_source, read_checked
from ris.producer.api.imaging import TooLarge, check_image, full_size, thumbnail
from ris.producer.api.schemas import (
    COLLECTION_PATTERN,
    HealthOut,
    HitOut,
    IngestIn,
    JobOut,
    PageConfig,
    SyncIn,
    SyncOut,
    TaskOut,
)
from ris.producer.api.security import BodyLimit, TokenGate, token_guard
from ris.producer.client import Producer, QueryError, QueryResult
from ris.producer.flower import is_loopback
from ris.producer.inputs import expand_inputs

log = logging.getLogger("ris.api")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# Room for the multipart envelope (boundaries, part headers, small fields) around the image.
MULTIPART_OVERHEAD = 64 * 1024
TASK_ID_PATTERN = r"^q-[0-9a-f]{8}-[0-9a-f]{8}$"
JOB_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"
# Routes under /api that answer without the token (no data from the index).
PUBLIC_PATHS = frozenset({"/api/health", "/api/config"})
Collection = Annotated[str | None, Query(pattern=COLLECTION_PATTERN)]
TaskId = Annotated[str, PathParam(pattern=TASK_ID_PATTERN)]
JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN)]


def task_out(task_id: str, state: str, result: QueryResult | None) -> TaskOut:
    """A query task's state and, when done, its ranked hits."""
    if result is None:
        return TaskOut(task_id=task_id, state=state)
    hits = [
        HitOut(
            rank=rank,
            id=str(hit.id),
            score=hit.score,
            path=hit.path,
            width=hit.width,
            height=hit.height,
            ingested_at=hit.ingested_at,
        )
        for rank, hit in enumerate(result.hits, 1)
    ]
    return TaskOut(
        task_id=task_id,
        state=state if not result.error else "FAILURE",
        query=result.query,
        hits=None if result.error else hits,
        error=result.error,
        timing_ms=result.timing_ms,
    )


def create_app(settings: Settings, producer: Producer | None = None) -> FastAPI:
    """The FastAPI application for ``settings`` (see ``producer/api/serve.py`` to run it)."""
    producer = producer or Producer(settings)
    loopback = is_loopback(settings.api_host)
    app = FastAPI(
        title="ris: reverse image search",
        version="0.1.0",
        description="Search indexed images by example, index folders, follow jobs. "
        "Every /api route but /api/health and /api/config needs `Authorization: Bearer "
        "<RIS_API_TOKEN>` when a token is set.",
    )
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
    api = APIRouter(prefix="/api", dependencies=[Depends(token_guard(settings))])
    public = APIRouter(prefix="/api")

    def queue_of(queue: str | None) -> str:
        if queue is None:
            return settings.queues[0]
        if queue not in settings.queues:
            raise HTTPException(422, f"unknown queue {queue!r} (RIS_QUEUES: {settings.queues})")
        return queue

    def existing_store(collection: str | None) -> ImageStore:
        # Opening a store creates a missing collection: a read must not.
        if collection and not producer.store.client.has_collection(collection):
            raise HTTPException(404, f"no collection {collection!r}")
        return producer.store_for(collection)

    # --- search ----------------------------------------------------------------------------
    @api.post(
        "/search",
        status_code=202,
        response_model=TaskOut,
        summary="Search by example: an uploaded image, or a path/URL the server may read",
        responses={
            200: {"description": "with wait=true: the ranked hits"},
            403: {"description": "path or URL outside the allowed roots/prefixes"},
            413: {"description": "upload over RIS_API_MAX_UPLOAD_BYTES or the pixel limit"},
            415: {"description": "not a decodable image"},
        },
    )
    def search(
        response: Response,
        file: Annotated[UploadFile | None, File(description="the query image")] = None,
        source: Annotated[str | None, Form(description="or a path/URL to read")] = None,
        top_k: Annotated[int, Query(ge=1, le=1000)] = settings.top_k,
        collection: Collection = None,
        queue: str | None = None,
        wait: bool = False,
        under: Annotated[str | None, Form(description="only matches under this folder")] = None,
        ingested_after: Annotated[
            str | None, Form(description="ISO date: indexed at/after")
        ] = None,
        ingested_before: Annotated[str | None, Form(description="ISO date: indexed before")] = None,
        min_width: Annotated[int | None, Form(ge=0)] = None,
        min_height: Annotated[int | None, Form(ge=0)] = None,
    ) -> TaskOut:
        if (file is None) == (source is None):
            raise HTTPException(422, "give exactly one of: an uploaded file, a source path/URL")
        try:
            filters = SearchFilter.build(
                under, ingested_after, ingested_before, min_width, min_height
            )
        except FilterError as exc:
            raise HTTPException(422, f"bad filter: {exc}") from None
        target_queue = queue_of(queue)
        if file is not None:
            name = f"upload:{file.filename or 'image'}"
            data = file.file.read(settings.api_max_upload_bytes + 1)
            if len(data) > settings.api_max_upload_bytes:
                raise HTTPException(
                    413, f"upload exceeds the limit of {settings.api_max_upload_bytes:,} bytes"
                )
        else:
            name = str(source)
            try:
                data = read_checked(name, settings, loopback)
            except AccessError as exc:
                raise HTTPException(403, str(exc)) from None
            except SourceError as exc:
                raise HTTPException(404, f"{name}: {exc}") from None
            except OSError as exc:
                raise HTTPException(502, f"{name}: cannot fetch: {exc}") from None
        try:
            check_image(data, settings.api_max_upload_pixels)
        except TooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except ImageError as exc:
            raise HTTPException(415, f"not a usable image: {exc}") from None
        try:
            task_id = producer.submit_query_bytes(
                name, data, top_k, target_queue, collection or settings.collection, filters
            )
        except QueryError as exc:
            raise HTTPException(413, str(exc)) from None
        log.info("query %s: %s (%d bytes, top %d)", task_id, name, len(data), top_k)
        if not wait:
            response.headers["Location"] = f"/api/tasks/{task_id}"
            return TaskOut(task_id=task_id, state="PENDING", query=name)
        try:
            result = producer.collect(task_id, settings.api_wait_timeout_s, name)
        except TimeoutError as exc:
            raise HTTPException(504, f"{exc}; poll /api/tasks/{task_id}") from None
        response.status_code = 200
        return task_out(task_id, "SUCCESS", result)

    @api.get("/tasks/{task_id}", response_model=TaskOut, summary="A query's state and hits")
    def get_task(task_id: TaskId) -> TaskOut:
        try:
            state, result = producer.query_state(task_id)
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        return task_out(task_id, state, result)

    # --- ingest ----------------------------------------------------------------------------
    @api.post("/ingest", status_code=202, response_model=JobOut, summary="Index images")
    def ingest(body: IngestIn) -> JobOut:
        target_queue = queue_of(body.queue)
        for source in body.inputs:
            try:
                check_source(source, settings, loopback)
            except AccessError as exc:
                raise HTTPException(403, str(exc)) from None
        # Named explicitly: workers fall back to their own RIS_COLLECTION, the API's may differ.
        collection = body.collection or settings.collection
        job_id = producer.job_id_for(body.inputs, target_queue, collection)
        try:  # expanded first: a bad list file fails the request before any chunk is sent
            paths = list(expand_inputs(body.inputs))
        except (OSError, ValueError, csv.Error) as exc:
            raise HTTPException(422, f"cannot read the inputs: {exc}") from None
        producer.ingest(paths, queue=target_queue, job_id=job_id, collection=collection)
        log.info("job %s: %s -> queue %s", job_id, body.inputs, target_queue)
        return job_out(job_id)

    @api.post("/sync", response_model=SyncOut, summary="Index new and changed files, drop gone")
    def sync(body: SyncIn) -> SyncOut:
        from ris.producer.sync import SyncError, plan_sync, stat_note

        target_queue = queue_of(body.queue)
        for root in body.roots:
            if "://" in root:
                raise HTTPException(422, f"{root}: sync takes folders, not URLs")
            try:
                check_source(root, settings, loopback)
            except AccessError as exc:
                raise HTTPException(403, str(exc)) from None
        collection = body.collection or settings.collection
        store = producer.store_for(collection, create=True)
        try:
            plan = plan_sync(store, body.roots)
        except SyncError as exc:
            raise HTTPException(422, str(exc)) from None
        out = SyncOut(
            new=len(plan.new),
            changed=len(plan.changed),
            unchanged=plan.unchanged,
            deleted=0,
            gone=len(plan.gone),
            note=stat_note(plan),
        )
        if body.dry_run:
            return out
        out.deleted = store.delete_ids(plan.gone) if plan.gone else 0
        if plan.to_index:
            job_id = producer.ingest(plan.to_index, queue=target_queue, collection=collection)
            out.job = job_out(job_id, failures=False)
        log.info("sync %s: %s", body.roots, out.model_dump(exclude={"job"}))
        return out

    def job_out(job_id: str, failures: bool = True) -> JobOut:
        try:
            p = producer.progress(job_id)
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        return JobOut(
            **asdict(p),
            processed=p.processed,
            pending=p.pending,
            finished=p.finished,
            failures=producer.failures(job_id) if failures else {},
        )

    @api.get("/jobs/{job_id}", response_model=JobOut, summary="A job's progress and failures")
    def get_job(job_id: JobId) -> JobOut:
        return job_out(job_id)

    @api.get(
        "/jobs/{job_id}/events",
        summary="Server-sent events: the job's progress until it finishes",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    def job_events(
        job_id: JobId,
        interval_s: Annotated[float, Query(ge=0.1, le=60)] = 0.5,
    ) -> StreamingResponse:
        job_out(job_id, failures=False)  # 404 before the stream starts

        def events() -> Iterator[str]:
            last = None
            while True:
                out = job_out(job_id, failures=False)
                if out != last:
                    yield f"event: progress\ndata: {out.model_dump_json()}\n\n"
                    last = out
                if out.finished:
                    return
                time.sleep(interval_s)

        return StreamingResponse(events(), media_type="text/event-stream")

    # --- images ----------------------------------------------------------------------------
    def indexed_image(image_id: int, collection: str | None) -> bytes:
        """The bytes of an indexed image, read only from where the API may read: the path
        comes from the collection, never from the request."""
        fields = existing_store(collection).resolve([image_id])
        if image_id not in fields:
            raise HTTPException(404, f"id {image_id} is not in the collection")
        path = str(fields[image_id]["path"])
        try:
            return read_checked(path, settings, loopback)
        except AccessError as exc:
            log.warning("image %d refused: %s", image_id, exc)
            raise HTTPException(403, str(exc)) from None
        except SourceError as exc:
            raise HTTPException(404, f"{path}: {exc}") from None
        except OSError as exc:
            raise HTTPException(502, f"{path}: cannot fetch: {exc}") from None

    image_responses: dict[int | str, dict[str, object]] = {
        403: {"description": "the indexed path is outside the allowed roots/prefixes"},
        404: {"description": "id not in the collection, or its file is gone"},
    }

    @api.get(
        "/images/{image_id}/thumbnail",
        response_class=Response,
        summary="A JPEG thumbnail of an indexed image",
        responses={200: {"content": {"image/jpeg": {}}}, **image_responses},
    )
    def get_thumbnail(image_id: int, collection: Collection = None) -> Response:
        data = indexed_image(image_id, collection)
        try:
            jpeg = thumbnail(data, settings.api_thumbnail_px, settings.max_image_pixels)
        except ImageError as exc:
            raise HTTPException(415, str(exc)) from None
        return Response(jpeg, media_type="image/jpeg", headers=_IMAGE_HEADERS)

    @api.get(
        "/images/{image_id}",
        response_class=Response,
        summary="An indexed image, full size",
        responses={200: {"content": {"image/*": {}}}, **image_responses},
    )
    def get_image(image_id: int, collection: Collection = None) -> Response:
        data = indexed_image(image_id, collection)
        try:
            body, media_type = full_size(data, settings.max_image_pixels)
        except ImageError as exc:
            raise HTTPException(415, str(exc)) from None
        return Response(body, media_type=media_type, headers=_IMAGE_HEADERS)

    # --- health and the page's settings ----------------------------------------------------
    @public.get("/health", response_model=HealthOut, summary="Redis, Milvus and workers")
    def health() -> JSONResponse:
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

    @public.get("/config", response_model=PageConfig, summary="What the web page needs")
    def page_config() -> PageConfig:
        return PageConfig(
            token_required=settings.api_token is not None,
            top_k=settings.top_k,
            queues=settings.queues,
            max_upload_bytes=settings.api_max_upload_bytes,
            flower_url=settings.api_flower_url,
            flower_port=settings.flower_port,
        )

    app.include_router(api)
    app.include_router(public)

    # --- the web page ----------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    log.info("API ready: token %s", "required" if settings.api_token else "not set (loopback)")
    return app


_IMAGE_HEADERS = {"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}
