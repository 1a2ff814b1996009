"""The cluster's recovery (ris.workers.recovery) on a real Redis and a real broker queue that no
worker consumes, so every chunk it sends again stays there to be counted: a chunk whose
holder's lease lapsed is sent again at once and only once, however many workers check at the
same moment; a live hold is left alone; a stalled job with nothing queued is sent again after
RIS_STALL_CHECK_S, and not again until as long has passed; a chunk whose outcomes are all
recorded is marked done instead of being sent; one worker checks per interval.

The end-to-end cases (workers SIGKILLed, frozen, cut off) are in test_faults.py and
test_multihost.py, at the shipped settings.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ris.common.celery_app import make_app
from ris.common.chunks import ChunkLedger
from ris.common.contracts import IngestChunk
from ris.common.jobs import JobTracker, redis_client
from ris.common.settings import Settings, get_settings
from ris.workers.recovery import LOCK_KEY, Recovery

QUEUE = "recovery-test"


@dataclass
class Rig:
    settings: Settings
    tracker: JobTracker
    ledger: ChunkLedger

    def recovery(self, name: str = "w") -> Recovery:
        return Recovery(self.settings, make_app(self.settings), self.tracker, self.ledger, name)

    def job(self, chunks: int = 2, per_chunk: int = 3) -> tuple[str, list[IngestChunk]]:
        """A job enqueued completely whose chunks are recorded but sent nowhere."""
        job_id = uuid.uuid4().hex[:12]
        self.tracker.create(job_id, QUEUE)
        made = [
            IngestChunk(
                job_id=job_id,
                number=n,
                paths=[f"/data/{job_id}/{n}-{i}.jpg" for i in range(per_chunk)],
            )
            for n in range(chunks)
        ]
        for chunk in made:
            self.ledger.record(chunk)
        self.tracker.set_total(job_id, chunks * per_chunk, chunks, finished=True)
        return job_id, made

    def sent(self) -> list[tuple[str, IngestChunk]]:
        """``(task id, chunk)`` of each message waiting on the queue (kombu's Redis list),
        oldest first."""
        out = []
        for raw in reversed(self.tracker.r.lrange(QUEUE, 0, -1)):
            message = json.loads(raw)
            args, _, _ = json.loads(base64.b64decode(message["body"]))
            out.append((message["headers"]["id"], IngestChunk.model_validate(args[0])))
        return out


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    settings = get_settings().model_copy(
        update={"queues": ["cpu", "gpu", QUEUE], "stall_check_s": 1.0}
    )
    client = redis_client(settings)
    client.delete(QUEUE, LOCK_KEY)
    yield Rig(settings, JobTracker(client, 3600), ChunkLedger(client, 3600, settings.lease_s))
    client.delete(QUEUE)


def test_a_chunk_whose_holder_is_gone_is_sent_again_once(rig: Rig) -> None:
    job_id, chunks = rig.job()
    rig.ledger.hold([(job_id, 0, f"{job_id}-000000"), (job_id, 1, f"{job_id}-000001")], "w1")
    rig.tracker.r.delete(rig.ledger.lease_key(f"{job_id}-000000"))  # its worker died
    checkers = [rig.recovery(f"w{i}") for i in range(4)]
    sent: list[int] = []
    threads = [threading.Thread(target=lambda c=c: sent.append(c.check(job_id))) for c in checkers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(sent) == [0, 0, 0, 3]
    ((task_id, chunk),) = rig.sent()
    assert task_id.startswith(f"{job_id}-000000-r") and chunk == chunks[0]
    assert rig.ledger.held(job_id) == {f"{job_id}-000001": True}  # the live one untouched
    assert rig.tracker.progress(job_id).resent == 3
    assert rig.recovery().check(job_id) == 0  # nothing left to take over


def test_only_unprocessed_paths_are_sent_again_and_a_chunk_all_recorded_is_done(
    rig: Rig,
) -> None:
    job_id, chunks = rig.job(chunks=2)
    first, second = chunks
    rig.tracker.mark(job_id, [first.paths[0]], [], {first.paths[1]: "bad"})
    rig.tracker.mark(job_id, second.paths, [], {})  # recorded, but its worker died after
    rig.ledger.hold([(job_id, 0, "t0"), (job_id, 1, "t1")], "w1")
    rig.tracker.r.delete(rig.ledger.lease_key("t0"), rig.ledger.lease_key("t1"))
    assert rig.recovery().check(job_id) == 1
    ((_, chunk),) = rig.sent()
    assert chunk.paths == [first.paths[2]] and chunk.number == 0
    assert rig.ledger.is_done(job_id, 1) and not rig.ledger.is_done(job_id, 0)


def test_a_stalled_job_is_sent_again_after_the_stall_check_and_not_twice(rig: Rig) -> None:
    """Chunks lost in transit (held by nobody, not on the queue): sent again once the job
    has not moved for stall_check_s (1 s here; test_faults.py runs the shipped 60 s)."""
    job_id, chunks = rig.job(chunks=2)
    recovery = rig.recovery()
    assert recovery.check(job_id) == 0  # first seen: the clock starts
    time.sleep(1.2)
    assert recovery.check(job_id) == 6
    assert [chunk for _, chunk in rig.sent()] == chunks
    assert recovery.check(job_id) == 0  # the clock restarted when they were sent
    time.sleep(1.2)
    assert recovery.check(job_id) == 0  # its chunks wait on the queue now
    rig.tracker.r.delete(QUEUE)  # lost again, long after the last resend
    assert recovery.check(job_id) == 6


def test_a_stalled_job_waits_while_a_worker_holds_a_chunk_or_its_queue_is_not_empty(
    rig: Rig,
) -> None:
    job_id, _ = rig.job(chunks=2)
    recovery = rig.recovery()
    rig.ledger.hold([(job_id, 0, "t0")], "w1")  # a live worker on a long chunk
    recovery.check(job_id)
    time.sleep(1.2)
    assert recovery.check(job_id) == 0
    rig.ledger.finish(job_id, 0, "t0")
    rig.tracker.r.lpush(QUEUE, "a message of another job")
    assert recovery.check(job_id) == 0
    assert rig.ledger.held(job_id) == {}


def test_one_worker_checks_per_interval_and_finished_jobs_are_forgotten(rig: Rig) -> None:
    job_id, chunks = rig.job(chunks=1)
    rig.tracker.mark(job_id, chunks[0].paths, [], {})
    assert job_id in rig.tracker.running()
    a, b = rig.recovery("a"), rig.recovery("b")
    a.beat()
    assert job_id not in rig.tracker.running()
    assert rig.tracker.r.get(LOCK_KEY) == b"a"
    other, _ = rig.job(chunks=1)
    b.beat()  # a's turn still: b checks nothing
    assert other in rig.tracker.running()
    ttl = rig.tracker.r.pttl(LOCK_KEY)
    assert 0 < ttl <= rig.settings.recovery_interval_s * 1000
