"""Ingest-job progress, kept in Redis so ``ris status JOB`` works from any machine.

Progress is recorded per path in sets and hashes, not counters: a chunk redelivered after a
worker crash marks the same paths again and the totals stay exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.settings import Settings

_PREFIX = "ris:job:"


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client that rides out a restart: retries with backoff for about a minute."""
    return redis.Redis.from_url(
        settings.redis_url.get_secret_value(),
        retry=Retry(ExponentialBackoff(cap=5.0, base=0.2), retries=20),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
        health_check_interval=30,
    )


@dataclass(frozen=True)
class JobProgress:
    """A snapshot of one job."""

    job_id: str
    total: int  # paths enqueued so far
    enqueue_finished: bool  # the producer has enqueued every chunk
    indexed: int  # embedded and written (new or changed)
    unchanged: int  # already indexed with the same content: skipped
    failed: int
    queue: str
    created_at: float

    @property
    def processed(self) -> int:
        return self.indexed + self.unchanged + self.failed

    @property
    def pending(self) -> int:
        return max(0, self.total - self.processed)

    @property
    def finished(self) -> bool:
        return self.enqueue_finished and self.pending == 0


class JobTracker:
    """Reads and writes job progress in Redis."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.r = client
        self.ttl_s = ttl_s

    @staticmethod
    def _keys(job_id: str) -> tuple[str, str, str, str]:
        base = f"{_PREFIX}{job_id}"
        return base, f"{base}:indexed", f"{base}:unchanged", f"{base}:failed"

    def exists(self, job_id: str) -> bool:
        return bool(self.r.exists(self._keys(job_id)[0]))

    def create(self, job_id: str, queue: str) -> None:
        """Register a job; a resumed job keeps its progress."""
        base = self._keys(job_id)[0]
        self.r.hsetnx(base, "created_at", time.time())
        self.r.hset(base, mapping={"queue": queue, "enqueue_finished": 0})
        self.r.expire(base, self.ttl_s)

    def is_complete(self, job_id: str) -> bool:
        """True when the job exists and its producer enqueued every chunk."""
        return self.r.hget(self._keys(job_id)[0], "enqueue_finished") == b"1"

    def set_total(self, job_id: str, total: int, chunks: int, finished: bool) -> None:
        """Record how many paths and chunks are enqueued, and whether that is all of them."""
        self.r.hset(
            self._keys(job_id)[0],
            mapping={"total": total, "chunks": chunks, "enqueue_finished": int(finished)},
        )

    def resume_point(self, job_id: str) -> tuple[int, int] | None:
        """``(chunks, paths)`` already enqueued by an interrupted producer; None when the job
        is unknown or was enqueued completely."""
        chunks, total, finished = self.r.hmget(
            self._keys(job_id)[0], "chunks", "total", "enqueue_finished"
        )
        if finished is None or finished == b"1":
            return None
        return int(chunks or 0), int(total or 0)

    def mark(
        self, job_id: str, indexed: list[str], unchanged: list[str], failed: dict[str, str]
    ) -> None:
        """Record the outcome of paths of a chunk; marking twice counts once."""
        _, k_idx, k_unch, k_fail = self._keys(job_id)
        pipe = self.r.pipeline()
        if indexed:
            pipe.sadd(k_idx, *indexed)
            pipe.hdel(k_fail, *indexed)  # a retry that succeeded clears the earlier failure
        if unchanged:
            pipe.sadd(k_unch, *unchanged)
            pipe.hdel(k_fail, *unchanged)
        if failed:
            pipe.hset(k_fail, mapping=failed)
        for key in (k_idx, k_unch, k_fail):
            pipe.expire(key, self.ttl_s)
        pipe.execute()

    def unprocessed(self, job_id: str, paths: list[str]) -> list[str]:
        """The paths of ``paths`` that no worker has reported for the job yet."""
        _, k_idx, k_unch, k_fail = self._keys(job_id)
        pipe = self.r.pipeline()
        pipe.smismember(k_idx, paths)
        pipe.smismember(k_unch, paths)
        pipe.hmget(k_fail, paths)
        indexed, unchanged, failed = pipe.execute()
        return [
            path
            for path, i, u, f in zip(paths, indexed, unchanged, failed, strict=True)
            if not (i or u or f is not None)
        ]

    def progress(self, job_id: str) -> JobProgress:
        """The job's current progress; KeyError for an unknown job."""
        base, k_idx, k_unch, k_fail = self._keys(job_id)
        pipe = self.r.pipeline()
        pipe.hgetall(base)
        pipe.scard(k_idx)
        pipe.scard(k_unch)
        pipe.hlen(k_fail)
        meta, n_idx, n_unch, n_fail = pipe.execute()
        if not meta:
            raise KeyError(f"unknown job {job_id!r} (expired, or never created)")
        meta = {k.decode(): v.decode() for k, v in meta.items()}
        return JobProgress(
            job_id=job_id,
            total=int(meta.get("total", 0)),
            enqueue_finished=meta.get("enqueue_finished") == "1",
            indexed=n_idx,
            unchanged=n_unch,
            failed=n_fail,
            queue=meta.get("queue", ""),
            created_at=float(meta.get("created_at", 0)),
        )

    def failures(self, job_id: str) -> dict[str, str]:
        """``path -> reason`` for every failed path of the job."""
        raw = self.r.hgetall(self._keys(job_id)[3])
        return {k.decode(): v.decode() for k, v in sorted(raw.items())}
