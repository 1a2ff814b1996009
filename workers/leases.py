"""Leases in Redis, renewed from a thread of the holder's own process.

A lease is a Redis key with a time to live (``RIS_LEASE_S``). Its holder renews it every
third of that while the holder's process runs and reaches Redis; a holder that is killed,
frozen (SIGSTOP) or cut off stops renewing, and its leases lapse within one lease. The
renewing thread is per process and restarts itself after a fork (a prefork pool's children
inherit no threads).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from ris.common.jobs import CONNECTION_ERRORS
from ris.common.metrics import REDIS_ERRORS

log = logging.getLogger(__name__)


class Periodic:
    """Calls ``beat`` every ``period_s`` on a daemon thread of this process (a renewal, or the
    recovery's check), started on the first :meth:`start` or :meth:`wake` in each process."""

    def __init__(self, name: str, period_s: float, beat: Callable[[], object]) -> None:
        self.name, self.period_s, self._beat = name, period_s, beat
        self._pid = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()

    def start(self) -> None:
        """Start the thread in this process unless it runs already."""
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._wake, self._stop = threading.Event(), threading.Event()
            threading.Thread(target=self._run, name=self.name, daemon=True).start()

    def wake(self) -> None:
        """Beat now rather than at the next period (starting the thread if needed)."""
        self.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._beat()
            except CONNECTION_ERRORS as exc:  # Redis unreachable: the next period retries
                REDIS_ERRORS.inc()
                log.warning("%s: %s", self.name, exc)
            except Exception:  # the thread outlives any one failure
                log.exception("%s failed", self.name)
            self._wake.wait(self.period_s)
            self._wake.clear()
