"""Stall recovery belongs to the ingest client: a job whose chunks were lost from Redis still
finishes for a waiter that is not the CLI (``Producer.wait`` as ``ris eval`` and ``ris demo``
call it), whether the job's paths were a list or a one-shot iterator."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from ris.common.settings import get_settings
from ris.common.store import path_id
from ris.producer.client import Producer
from tests.helpers import start_worker, stop_worker

QUEUE = "lost"


def test_waiter_sends_lost_chunks_again(
    photos: Path, tmp_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = get_settings().model_copy(
        update={
            "queues": ["cpu", "gpu", QUEUE],
            "collection": f"lost_{uuid.uuid4().hex[:6]}",
            "chunk_size": 2,
            "stall_check_s": 2.0,
        }
    )
    producer = Producer(settings)
    images = sorted(str(p) for p in photos.iterdir())[:6]
    # No worker consumes the queue yet: every chunk waits there, then Redis loses them all.
    as_list = producer.ingest(images[:3], queue=QUEUE)
    as_iterator = producer.ingest((p for p in images[3:]), queue=QUEUE)
    assert producer.tracker.r.delete(QUEUE) == 1
    worker = start_worker(QUEUE, env={"RIS_QUEUES": f"cpu,gpu,{QUEUE}"}, log=tmp_root / "lost.log")
    try:
        with caplog.at_level(logging.WARNING, logger="ris.producer.client"):
            for job in (as_list, as_iterator):
                progress = producer.wait(job, timeout_s=120)
                assert (progress.indexed, progress.failed, progress.total) == (3, 0, 3)
    finally:
        stop_worker(worker)
    for job in (as_list, as_iterator):
        assert f"job {job}: 3 pending, none queued or running: sent 3 again" in caplog.text
    assert len(producer.store_for(settings.collection).resolve([path_id(p) for p in images])) == 6
