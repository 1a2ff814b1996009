"""The chunks of each job that a worker finished, by task id.

Chunk task ids are deterministic (``JOB-000042``): a chunk sent twice, by a producer stopped
between sending it and recording that it did and then run again, is processed once. A chunk
redelivered after its worker died never finished, so it runs again.
"""

from __future__ import annotations

import redis

_PREFIX = "ris:job:"


def _key(job_id: str) -> str:
    return f"{_PREFIX}{job_id}:chunks_done"


def chunk_done(client: redis.Redis, job_id: str, task_id: str) -> bool:
    """Whether the chunk task ``task_id`` of ``job_id`` already ran to its end."""
    return bool(client.sismember(_key(job_id), task_id))


def record_chunk_done(client: redis.Redis, job_id: str, task_id: str, ttl_s: int) -> None:
    """Remember that the chunk task ``task_id`` of ``job_id`` ran to its end."""
    pipe = client.pipeline()
    pipe.sadd(_key(job_id), task_id)
    pipe.expire(_key(job_id), ttl_s)
    pipe.execute()
