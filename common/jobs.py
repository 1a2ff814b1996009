"""Ingest-job progress, kept in Redis so ``ris status JOB`` works from any machine.

Progress is recorded per path in sets and hashes, not counters: a chunk redelivered after a
worker crash marks the same paths again and the totals stay exact.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ris.common.settings import Settings

_PREFIX = "ris:job:"
# The jobs not yet seen finished, for the cluster's recovery (ris.workers.recovery).
RUNNING_KEY = "ris:jobs:running"


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients here return bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def job_key(job_id: str, part: str = "") -> str:
    """The Redis key of ``job_id`` (its hash), or of one of its parts (``indexed``,
    ``chunks``...): every key of a job is named here."""
    return f"{_PREFIX}{job_id}:{part}" if part else f"{_PREFIX}{job_id}"


# A broken or dead connection to Redis: worth retrying wherever it happens (redis-py raises
# its own ConnectionError, not the builtin one).
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def keepalive_options(settings: Settings) -> dict[int, int]:
    """TCP options (level IPPROTO_TCP) that make a dead connection fail within about
    ``2 * redis_dead_after_s``: keepalive probes while idle, and TCP_USER_TIMEOUT while sent
    data goes unacknowledged (a partition mid-command), instead of TCP's minutes."""
    n = settings.redis_dead_after_s
    opts = {"TCP_KEEPIDLE": n, "TCP_KEEPINTVL": max(1, n // 2), "TCP_KEEPCNT": 2}
    opts["TCP_USER_TIMEOUT"] = 2 * n * 1000  # milliseconds
    return {getattr(socket, k): v for k, v in opts.items() if hasattr(socket, k)}


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client that rides out a restart or a partition: notices a dead connection
    within seconds and retries with backoff for about a minute."""
    return redis.Redis.from_url(
        settings.redis_url.get_secret_value(),
        retry=Retry(ExponentialBackoff(cap=5.0, base=0.2), retries=20),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=settings.redis_dead_after_s,
        socket_keepalive=True,
        socket_keepalive_options=keepalive_options(settings),
        health_check_interval=settings.redis_dead_after_s,
    )


# Records a chunk's outcomes atomically, one outcome per path: indexed beats unchanged beats
# failed. A redelivered chunk (a worker cut off, then back) may report late that a path it
# did not write is "unchanged", or "failed" when its own writes broke; neither may undo
# another delivery's "indexed", so indexed + unchanged + failed stays equal to the total.
# KEYS: indexed set, unchanged set, failed hash. ARGV: ttl, #indexed, #unchanged, the indexed
# paths, the unchanged paths, then (path, reason) pairs of the failed ones.
_MARK = """
local ttl, ni, nu = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
for _ = 1, ni do
  redis.call('SADD', KEYS[1], ARGV[i])
  redis.call('SREM', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[3], ARGV[i])
  i = i + 1
end
for _ = 1, nu do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then
    redis.call('SADD', KEYS[2], ARGV[i])
    redis.call('HDEL', KEYS[3], ARGV[i])
  end
  i = i + 1
end
while i < #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0
      and redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
for k = 1, 3 do redis.call('EXPIRE', KEYS[k], ttl) end
return 0
"""


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
    resent: int = 0  # paths of lost chunks that the cluster sent again

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
        self._mark = client.register_script(_MARK)

    @staticmethod
    def _keys(job_id: str) -> tuple[str, str, str, str]:
        return (
            job_key(job_id),
            job_key(job_id, "indexed"),
            job_key(job_id, "unchanged"),
            job_key(job_id, "failed"),
        )

    def exists(self, job_id: str) -> bool:
        return bool(self.r.exists(self._keys(job_id)[0]))

    def create(self, job_id: str, queue: str) -> None:
        """Register a job; a resumed job keeps its progress."""
        base = self._keys(job_id)[0]
        pipe = self.r.pipeline()
        pipe.hsetnx(base, "created_at", time.time())
        pipe.hset(base, mapping={"queue": queue, "enqueue_finished": 0})
        pipe.expire(base, self.ttl_s)
        pipe.sadd(RUNNING_KEY, job_id)
        pipe.execute()

    def running(self) -> list[str]:
        """Ids of the jobs not yet seen finished (by :meth:`forget_running`)."""
        return sorted(text(m) for m in self.r.smembers(RUNNING_KEY))

    def forget_running(self, job_id: str) -> None:
        """Take a finished (or expired) job off the running list."""
        self.r.srem(RUNNING_KEY, job_id)

    def add_resent(self, job_id: str, paths: int) -> None:
        """Count ``paths`` of lost chunks sent again."""
        self.r.hincrby(self._keys(job_id)[0], "resent", paths)

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
        """Record the outcome of paths of a chunk; marking twice counts once, and a path
        another delivery indexed stays indexed (see ``_MARK``)."""
        if not (indexed or unchanged or failed):
            return
        _, k_idx, k_unch, k_fail = self._keys(job_id)
        pairs = [item for path_reason in failed.items() for item in path_reason]
        self._mark(
            keys=[k_idx, k_unch, k_fail],
            args=[self.ttl_s, len(indexed), len(unchanged), *indexed, *unchanged, *pairs],
        )

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
            resent=int(meta.get("resent", 0)),
        )

    def failures(self, job_id: str) -> dict[str, str]:
        """``path -> reason`` for every failed path of the job."""
        raw = self.r.hgetall(self._keys(job_id)[3])
        return {text(k): text(v) for k, v in sorted(raw.items())}
