"""A worker's hold on the chunks it has taken, as leases renewed by its main process.

Every ingest message the worker has taken from the broker, prefetched or running, is one of
Celery's current requests in the main process (``celery.worker.state.requests``). This
holds each under a lease (:meth:`ris.common.chunks.ChunkLedger.hold`) as soon as it arrives
(``task_received`` wakes the thread) and renews them all every third of ``RIS_LEASE_S`` in
one pipelined Redis call. A worker killed, frozen or cut off stops renewing; the recovery
sends its chunks again once their leases lapse.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker import state

from ris.common.chunks import ChunkLedger
from ris.common.contracts import INGEST_TASK, IngestChunk
from ris.workers.leases import Periodic

log = logging.getLogger(__name__)


def _chunk_of(request: Any) -> IngestChunk | None:
    try:
        raw = (request.kwargs or {}).get("chunk", (request.args or [None])[0])
        return IngestChunk.model_validate(raw)
    except Exception:  # a malformed message: the task itself reports it
        return None


class ChunkHolds:
    """Holds the ingest chunks of this worker's current requests under leases."""

    def __init__(self, ledger: ChunkLedger, holder: str) -> None:
        self.ledger, self.holder = ledger, holder
        self._held: set[str] = set()
        self._lapsed: set[str] = set()  # not renewed in time: the recovery may own them now
        self.thread = Periodic("chunk-leases", ledger.lease_s / 3, self.beat)

    def beat(self) -> None:
        """Hold the requests taken since the last beat, renew the others."""
        current: dict[str, tuple[str, int, str]] = {}
        for request in list(state.requests.values()):  # a C-level copy: safe across threads
            if request.name != INGEST_TASK:
                continue
            chunk = _chunk_of(request)
            if chunk is not None and chunk.number is not None:
                current[request.id] = (chunk.job_id, chunk.number, request.id)
        new = [h for t, h in current.items() if t not in self._held and t not in self._lapsed]
        if new:
            self.ledger.hold(new, self.holder)
        kept = [task_id for task_id in current if task_id in self._held]
        for task_id, alive in zip(kept, self.ledger.renew(kept), strict=True):
            if not alive:
                log.warning("chunk %s: its lease lapsed before it was renewed", task_id)
                self._lapsed.add(task_id)
        self._lapsed &= set(current)
        self._held = set(current) - self._lapsed
