"""Recovery in the cluster: running jobs' lost chunks found and sent again by the workers.

Every worker checks every ``RIS_RECOVERY_INTERVAL_S``; one at a time does it (a Redis lock
that lapses after one interval, so a dead checker is replaced by the next). For each running
job (:meth:`ris.common.jobs.JobTracker.running`) it looks at the job's ledger
(:mod:`ris.common.chunks`):

- a chunk held by a task whose lease lapsed (its worker was killed, froze or was cut off) is
  taken over (atomically: one checker gets it) and its unprocessed paths are sent again at
  once;
- a job whose progress has not moved for ``RIS_STALL_CHECK_S``, of which no worker holds a
  chunk and whose queue is empty, lost chunks in transit (kombu's Redis transport can lose a
  message taken as Redis goes down): its pending chunks' unprocessed paths are sent again.

No client needs to wait: a job sent with ``--no-wait``, or through the API by a client that
went away, is finished by the cluster. A chunk is sent again only after it is taken over
from the ledger, so a checker never sends one twice; a copy that arrives after the chunk was
done is skipped by the task.
"""

from __future__ import annotations

import logging

import redis
from celery import Celery

from ris.common.chunks import ChunkLedger, send_chunk
from ris.common.contracts import IngestChunk
from ris.common.jobs import JobProgress, JobTracker, text
from ris.common.metrics import CHUNKS
from ris.common.settings import Settings

log = logging.getLogger(__name__)

LOCK_KEY = "ris:recovery:lock"
# job id -> "processed:since" (Redis time, s): when the checker last saw the job move.
SEEN_KEY = "ris:recovery:seen"

# KEYS: seen hash. ARGV: job id, the value read, the new value. Restarts a stalled job's clock
# only if no other checker did since it was read.
_RESTART_CLOCK = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""


class Recovery:
    """Finds the running jobs' lost chunks and sends them again (module docstring)."""

    def __init__(
        self, settings: Settings, app: Celery, tracker: JobTracker, ledger: ChunkLedger, name: str
    ) -> None:
        self.settings, self.app, self.tracker, self.ledger = settings, app, tracker, ledger
        self.name = name
        self.r: redis.Redis = tracker.r
        self._restart_clock = self.r.register_script(_RESTART_CLOCK)

    def beat(self) -> int:
        """One check, if this worker's turn (the lock); returns the paths sent again."""
        interval_ms = int(self.settings.recovery_interval_s * 1000)
        if not self.r.set(LOCK_KEY, self.name, nx=True, px=interval_ms):
            return 0
        return sum(self.check(job_id) for job_id in self.tracker.running())

    def check(self, job_id: str) -> int:
        """Send again what ``job_id`` lost; the paths sent."""
        try:
            progress = self.tracker.progress(job_id)
        except KeyError:  # expired
            progress = None
        if progress is None or progress.finished:
            self.tracker.forget_running(job_id)
            self.ledger.forget(job_id)
            self.r.hdel(SEEN_KEY, job_id)
            return 0
        held = self.ledger.held(job_id)
        sent = 0
        for task_id, alive in held.items():
            if not alive and (chunk := self.ledger.take_orphan(job_id, task_id)):
                sent += self._send_again(chunk, progress, f"its worker ({task_id}) is gone")
        if not any(held.values()) and self._stalled(job_id, progress):
            stall = self.settings.stall_check_s
            for chunk in self.ledger.pending(job_id):
                sent += self._send_again(chunk, progress, f"no progress for {stall:g} s")
        return sent

    def _stalled(self, job_id: str, progress: JobProgress) -> bool:
        """Whether the job, enqueued completely, made no progress for ``stall_check_s``
        and nothing waits on its queue; True restarts its clock (the next resend waits as
        long again) and is given to one checker only."""
        now = int(self.r.time()[0])
        raw = self.r.hget(SEEN_KEY, job_id)
        value = f"{progress.processed}:{now}"
        if raw is None or text(raw).split(":")[0] != str(progress.processed):
            self.r.hset(SEEN_KEY, job_id, value)
            return False
        since = int(text(raw).split(":")[1])
        if not progress.enqueue_finished or now - since < self.settings.stall_check_s:
            return False
        if self._queued(progress.queue):
            return False
        return bool(self._restart_clock(keys=[SEEN_KEY], args=[job_id, raw, value]))

    def _queued(self, queue: str) -> bool:
        """Whether messages wait on ``queue`` (the job's chunks may be among them)."""
        with self.app.connection_for_read() as conn:
            return bool(conn.default_channel.queue_declare(queue).message_count)

    def _send_again(self, chunk: IngestChunk, progress: JobProgress, why: str) -> int:
        missing = self.tracker.unprocessed(chunk.job_id, chunk.paths)
        if not missing:  # every outcome recorded; its worker died before it said so
            assert chunk.number is not None
            self.ledger.finish(chunk.job_id, chunk.number, None)
            return 0
        send_chunk(self.app, chunk.model_copy(update={"paths": missing}), progress.queue, True)
        self.tracker.add_resent(chunk.job_id, len(missing))
        CHUNKS.labels("resent").inc()
        log.warning(
            "job %s: chunk #%s: %s: sent %d paths again", chunk.job_id, chunk.number, why,
            len(missing),
        )  # fmt: skip
        return len(missing)
