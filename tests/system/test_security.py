"""Celery accepts JSON only: a pickled message published to the queue is never executed."""

from __future__ import annotations

import pickle
import subprocess
import uuid
from pathlib import Path

import redis
from kombu import Connection

from ris.common.contracts import INGEST_TASK
from tests.helpers import wait_until

# What the worker logs when it drops a message it will not deserialize (Celery and kombu).
REFUSAL = "Received invalid task message: Refusing to deserialize untrusted content of type pickle"


class _Marker:
    """Unpickling this would create a file: proof that pickle was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (Path(self.path),))


def test_pickled_task_message_is_rejected(
    tmp_path: Path,
    tmp_root: Path,
    redis_url: str,
    photos: Path,
    producer,
    worker: subprocess.Popen[bytes],
) -> None:
    log = tmp_root / "worker.log"  # the session worker's
    refusals = log.read_text(errors="replace").count(REFUSAL)
    marker = tmp_path / "executed"
    task_id = str(uuid.uuid4())
    body = pickle.dumps(((_Marker(str(marker)), []), {}, {}))
    with Connection(redis_url) as conn:
        publisher = conn.Producer(serializer="pickle")
        publisher.publish(
            body,
            routing_key="cpu",
            exchange="cpu",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={
                "lang": "py",
                "task": INGEST_TASK,
                "id": task_id,
                "argsrepr": "",
                "kwargsrepr": "",
                "retries": 0,
            },
        )
    # The worker received it, said why it refused it and dropped it: the queue is empty.
    wait_until(
        lambda: log.read_text(errors="replace").count(REFUSAL) != refusals,
        60,
        "the worker logging that it refused the message",
        every_s=0.2,
    )
    assert redis.Redis.from_url(redis_url).llen("cpu") == 0
    # A JSON job sent after it still runs: the worker survived and consumes the queue.
    job = producer.ingest([str(photos / "coins.png")])
    assert producer.wait(job, timeout_s=120).indexed + producer.progress(job).unchanged == 1
    assert not marker.exists()
    assert producer.app.AsyncResult(task_id).state == "PENDING"  # never ran
