"""A job's chunks in Redis (the ledger): what was sent, which worker holds what, what is done.

The ledger is what lets the cluster, not a waiting client, finish a job:

- the producer records each chunk (its paths) before it sends it (:meth:`ChunkLedger.record`);
- a worker that takes a chunk, prefetched or running, holds it under a lease its main
  process renews (:meth:`ChunkLedger.hold`, :meth:`ChunkLedger.renew`);
- a chunk that ran to its end is marked done and its record dropped
  (:meth:`ChunkLedger.finish`), so a copy of it that arrives later (sent twice by a resumed
  producer, resent by the recovery, or the dead task's message redelivered after
  ``RIS_VISIBILITY_TIMEOUT_S``) is skipped.

A chunk held under a lease that lapsed lost its worker; the recovery
(:mod:`ris.workers.recovery`) takes it over atomically (:meth:`ChunkLedger.take_orphan`) and
sends its unprocessed paths again. Chunk task ids are deterministic (``JOB-000042``), and a
resent chunk's are ``JOB-000042-rXXXXXX``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import redis

from ris.common.contracts import INGEST_TASK, IngestChunk
from ris.common.jobs import job_key, text

if TYPE_CHECKING:
    from celery import Celery

_LEASE_PREFIX = "ris:lease:chunk:"

# KEYS: held hash, lease key, done set, chunks hash. ARGV: task id. Takes over the chunk held
# by a task whose lease lapsed: drops the hold and returns the chunk's record, or nothing when
# the lease is alive, the hold was taken over already, or the chunk is done.
_TAKE_ORPHAN = """
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local number = redis.call('HGET', KEYS[1], ARGV[1])
if not number then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('SISMEMBER', KEYS[3], number) == 1 then return false end
return redis.call('HGET', KEYS[4], number)
"""


def chunk_task_id(job_id: str, number: int, resent: bool = False) -> str:
    """The task id of chunk ``number``; a resent copy's has a random suffix."""
    return f"{job_id}-{number:06d}" + (f"-r{os.urandom(3).hex()}" if resent else "")


def send_chunk(app: Celery, chunk: IngestChunk, queue: str, resent: bool = False) -> str:
    """Send ``chunk`` (recorded in the ledger by the caller) as an ingest task; returns its
    task id."""
    assert chunk.number is not None
    task_id = chunk_task_id(chunk.job_id, chunk.number, resent)
    first = os.path.basename(chunk.paths[0]) if chunk.paths else ""
    app.send_task(
        INGEST_TASK,
        args=(chunk.model_dump(mode="json"),),
        queue=queue,
        task_id=task_id,
        argsrepr=f"(job={chunk.job_id}, chunk #{chunk.number}{' again' if resent else ''}: "
        f"{len(chunk.paths)} paths, first {first!r})",
    )
    return task_id


class ChunkLedger:
    """Reads and writes the ledger of every job in one Redis."""

    def __init__(self, client: redis.Redis, ttl_s: int, lease_s: float) -> None:
        self.r, self.ttl_s, self.lease_s = client, ttl_s, lease_s
        self._take_orphan = client.register_script(_TAKE_ORPHAN)

    @staticmethod
    def lease_key(task_id: str) -> str:
        return f"{_LEASE_PREFIX}{task_id}"

    # --- producer ---------------------------------------------------------------------------
    def record(self, chunk: IngestChunk) -> None:
        """Record a chunk about to be sent (``chunk.number`` set)."""
        key = job_key(chunk.job_id, "chunks")
        pipe = self.r.pipeline()
        pipe.hset(key, str(chunk.number), chunk.model_dump_json())
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    # --- worker -----------------------------------------------------------------------------
    def is_done(self, job_id: str, number: int) -> bool:
        return bool(self.r.sismember(job_key(job_id, "done"), str(number)))

    def hold(self, chunks: Iterable[tuple[str, int, str]], holder: str) -> None:
        """Hold ``(job_id, number, task_id)`` chunks under leases of this worker's."""
        pipe = self.r.pipeline()  # MULTI: a hold never exists without its lease
        for job_id, number, task_id in chunks:
            pipe.hset(job_key(job_id, "held"), task_id, number)
            pipe.expire(job_key(job_id, "held"), self.ttl_s)
            pipe.set(self.lease_key(task_id), holder, px=int(self.lease_s * 1000))
        pipe.execute()

    def renew(self, task_ids: list[str]) -> list[bool]:
        """Renew the leases of ``task_ids``; False for each that lapsed already (it stays
        lapsed: the recovery may have sent its chunk again)."""
        pipe = self.r.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.set(self.lease_key(task_id), "held", px=int(self.lease_s * 1000), xx=True)
        return [bool(ok) for ok in pipe.execute()]

    def finish(self, job_id: str, number: int, task_id: str | None) -> None:
        """Chunk ``number`` ran to its end (each path's outcome recorded): mark it done,
        drop its record, and the hold of ``task_id``."""
        pipe = self.r.pipeline()
        pipe.sadd(job_key(job_id, "done"), number)
        pipe.expire(job_key(job_id, "done"), self.ttl_s)
        pipe.hdel(job_key(job_id, "chunks"), str(number))
        if task_id:
            pipe.hdel(job_key(job_id, "held"), task_id)
            pipe.delete(self.lease_key(task_id))
        pipe.execute()

    # --- recovery ---------------------------------------------------------------------------
    def held(self, job_id: str) -> dict[str, bool]:
        """``task_id -> lease alive`` for every chunk of the job a worker took."""
        task_ids = [text(t) for t in self.r.hkeys(job_key(job_id, "held"))]
        if not task_ids:
            return {}
        alive = self.r.exists(*(self.lease_key(t) for t in task_ids))
        if alive == len(task_ids):
            return dict.fromkeys(task_ids, True)
        pipe = self.r.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.exists(self.lease_key(task_id))
        return {t: bool(n) for t, n in zip(task_ids, pipe.execute(), strict=True)}

    def take_orphan(self, job_id: str, task_id: str) -> IngestChunk | None:
        """The chunk ``task_id`` held, taken over from it if its lease lapsed (atomically:
        one caller gets it); None if it is alive, done, or taken over already."""
        raw = self._take_orphan(
            keys=[
                job_key(job_id, "held"),
                self.lease_key(task_id),
                job_key(job_id, "done"),
                job_key(job_id, "chunks"),
            ],
            args=[task_id],
        )
        return IngestChunk.model_validate_json(raw) if raw else None

    def pending(self, job_id: str) -> list[IngestChunk]:
        """The job's chunks not done yet, by number."""
        raw = self.r.hvals(job_key(job_id, "chunks"))
        return sorted(
            (IngestChunk.model_validate_json(r) for r in raw), key=lambda c: c.number or 0
        )

    def forget(self, job_id: str) -> None:
        """Drop a finished job's records and holds (its done set expires with the job)."""
        self.r.delete(job_key(job_id, "chunks"), job_key(job_id, "held"))
