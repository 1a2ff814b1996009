"""Search by example (``POST /api/search``) and a query's state and hits (``/api/tasks``)."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Response, UploadFile
from fastapi import Path as PathParam

from ris.common.defaults import MAX_TOP_K
from ris.common.errors import ImageError, InvalidInput, QueryError, TooLarge
from ris.common.filters import FilterError, SearchFilter
from ris.common.metrics import SEARCH_ROUND_TRIP
from ris.producer.api.deps import AccessDep, Collection, ProducerDep, QueueDep, SettingsDep
from ris.producer.api.imaging import check_image
from ris.producer.api.schemas import HitOut, TaskOut
from ris.producer.client import QueryResult

log = logging.getLogger("ris.api")
router = APIRouter()

TASK_ID_PATTERN = r"^q-[0-9a-f]{8}-[0-9a-f]{8}$"
TaskId = Annotated[str, PathParam(pattern=TASK_ID_PATTERN)]


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


@router.post(
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
    settings: SettingsDep,
    producer: ProducerDep,
    access: AccessDep,
    queue: QueueDep,
    file: Annotated[UploadFile | None, File(description="the query image")] = None,
    source: Annotated[str | None, Form(description="or a path/URL to read")] = None,
    top_k: Annotated[
        int | None, Query(ge=1, le=MAX_TOP_K, description="default: RIS_TOP_K")
    ] = None,
    collection: Collection = None,
    wait: bool = False,
    under: Annotated[str | None, Form(description="only matches under this folder")] = None,
    ingested_after: Annotated[str | None, Form(description="ISO date: indexed at/after")] = None,
    ingested_before: Annotated[str | None, Form(description="ISO date: indexed before")] = None,
    min_width: Annotated[int | None, Form(ge=0)] = None,
    min_height: Annotated[int | None, Form(ge=0)] = None,
) -> TaskOut:
    """Submit one query image; with ``wait``, answer with its hits (200) instead of 202."""
    if (file is None) == (source is None):
        raise InvalidInput("give exactly one of: an uploaded file, a source path/URL")
    try:
        filters = SearchFilter.build(under, ingested_after, ingested_before, min_width, min_height)
    except FilterError as exc:
        raise FilterError(f"bad filter: {exc}") from None
    if file is not None:
        name = f"upload:{file.filename or 'image'}"
        data = file.file.read(settings.api_max_upload_bytes + 1)
        if len(data) > settings.api_max_upload_bytes:
            raise TooLarge(f"upload exceeds the limit of {settings.api_max_upload_bytes:,} bytes")
    else:
        name = str(source)
        data = access.read(name)
    try:
        check_image(data, settings.api_max_upload_pixels)
    except TooLarge:
        raise  # 413
    except ImageError as exc:
        # 415, not ImageError's 422: the upload is not an image the API can take.
        raise HTTPException(415, f"not a usable image: {exc}") from None
    k = settings.top_k if top_k is None else top_k
    sent = time.perf_counter()
    try:
        task_id = producer.submit_query_bytes(
            name, data, k, queue, collection or settings.collection, filters
        )
    except QueryError as exc:
        # 413, not QueryError's 422: the one QueryError here is RIS_MAX_QUERY_BYTES exceeded.
        raise TooLarge(str(exc)) from None
    log.info("query %s: %s (%d bytes, top %d)", task_id, name, len(data), k)
    if not wait:
        response.headers["Location"] = f"/api/tasks/{task_id}"
        return TaskOut(task_id=task_id, state="PENDING", query=name)
    try:
        result = producer.collect(task_id, settings.api_wait_timeout_s, name)
    except TimeoutError as exc:
        raise HTTPException(504, f"{exc}; poll /api/tasks/{task_id}") from None
    SEARCH_ROUND_TRIP.observe(time.perf_counter() - sent)
    response.status_code = 200
    return task_out(task_id, "SUCCESS", result)


@router.get("/tasks/{task_id}", response_model=TaskOut, summary="A query's state and hits")
def get_task(task_id: TaskId, producer: ProducerDep) -> TaskOut:
    """The task's Celery state, and its hits once it ran."""
    try:
        state, result = producer.query_state(task_id)
    except KeyError as exc:
        raise HTTPException(404, str(exc.args[0])) from None
    return task_out(task_id, state, result)
