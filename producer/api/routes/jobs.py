"""Indexing jobs: start one (``POST /api/ingest``), read its progress, follow it as events."""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse

from ris.producer.api.deps import AccessDep, ProducerDep, SettingsDep, queue_of
from ris.producer.api.schemas import IngestIn, JobOut
from ris.producer.client import Producer
from ris.producer.inputs import expand_inputs

log = logging.getLogger("ris.api")
router = APIRouter()

JOB_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"
JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN)]


def job_out(producer: Producer, job_id: str, failures: bool = True) -> JobOut:
    """A job's progress (404 for an unknown id), with its failures unless ``failures=False``."""
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


@router.post("/ingest", status_code=202, response_model=JobOut, summary="Index images")
def ingest(
    body: IngestIn, settings: SettingsDep, producer: ProducerDep, access: AccessDep
) -> JobOut:
    """Enqueue every image the inputs name; the job id is derived from them (resumable)."""
    target_queue = queue_of(settings, body.queue)
    for source in body.inputs:
        access.check(source)
    # Named explicitly: workers fall back to their own RIS_COLLECTION, the API's may differ.
    collection = body.collection or settings.collection
    job_id = producer.job_id_for(body.inputs, target_queue, collection)
    try:  # expanded first: a bad list file fails the request before any chunk is sent
        paths = list(expand_inputs(body.inputs))
    except (OSError, ValueError, csv.Error) as exc:
        raise HTTPException(422, f"cannot read the inputs: {exc}") from None
    producer.ingest(paths, queue=target_queue, job_id=job_id, collection=collection)
    log.info("job %s: %s -> queue %s", job_id, body.inputs, target_queue)
    return job_out(producer, job_id)


@router.get("/jobs/{job_id}", response_model=JobOut, summary="A job's progress and failures")
def get_job(job_id: JobId, producer: ProducerDep) -> JobOut:
    """Counts so far, and each failed path with its reason."""
    return job_out(producer, job_id)


@router.get(
    "/jobs/{job_id}/events",
    summary="Server-sent events: the job's progress until it finishes",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def job_events(
    job_id: JobId,
    producer: ProducerDep,
    interval_s: Annotated[float, Query(ge=0.1, le=60)] = 0.5,
) -> StreamingResponse:
    """A ``progress`` event each time the counts change; the stream ends with the job."""
    job_out(producer, job_id, failures=False)  # 404 before the stream starts

    def events() -> Iterator[str]:
        last = None
        while True:
            out = job_out(producer, job_id, failures=False)
            if out != last:
                yield f"event: progress\ndata: {out.model_dump_json()}\n\n"
                last = out
            if out.finished:
                return
            time.sleep(interval_s)

    return StreamingResponse(events(), media_type="text/event-stream")
