"""Processes that read, hash and decode images for a worker process.

Decoding in threads holds the GIL: on 16 cores, 16 threads decode 1,161 images/s and 16
processes 2,666 (H200 machine, ``../shared/gpu-check``). A GPU worker runs one process with
its model on one thread, so its reading and decoding go to a pool of processes shared by all
its tasks. The processes are spawned, not forked: the worker may hold a CUDA context.

Decoded pixels come back through shared memory: a process writes them into a slot of one
shared block, and the worker reads the slot in place. Pickling them through a pipe instead
cost the worker's one GIL about 200 µs an image, more than everything else it does. Slots are
taken without waiting; when none is free (or no shared memory can be had), pixels are pickled.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import mmap
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures import TimeoutError as futures_TimeoutError  # not builtin before 3.11
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from ris.common.settings import Settings
from ris.workers.loading import Item, Loaded, load

log = logging.getLogger(__name__)

# Slots of decoded images in shared memory: enough for several tasks' windows in flight
# (224 px: 150 KiB each, 300 MiB in all).
_SLOTS = 2048


class _Slots:
    """Image slots in one shared memory block, handed out by index (the worker's side)."""

    def __init__(self, count: int, shape: tuple[int, int, int]) -> None:
        self.shape = shape
        self.nbytes = int(np.prod(shape))
        # A block larger than /dev/shm's free space would be created (sparse) and then kill us
        # with SIGBUS when written: Docker gives containers 64 MiB unless told otherwise.
        shm_dir = os.statvfs("/dev/shm")
        if shm_dir.f_bavail * shm_dir.f_frsize < count * self.nbytes:
            raise OSError(f"/dev/shm has less than {count * self.nbytes >> 20} MiB free")
        self.shm = SharedMemory(create=True, size=count * self.nbytes)
        atexit.register(self.close)  # a replaced pool's block too: threads may still read it
        self.array = np.ndarray((count, *shape), np.uint8, self.shm.buf)
        self.array.fill(0)  # its pages allocated now, not by the first chunks' decoding
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(count):
            self._free.put(i)

    def take(self, n: int) -> list[int]:
        """Up to ``n`` free slots, without waiting."""
        out: list[int] = []
        while len(out) < n:
            try:
                out.append(self._free.get_nowait())
            except queue.Empty:
                break
        return out

    def give(self, slots: Sequence[int]) -> None:
        for i in slots:
            self._free.put(i)

    def close(self) -> None:
        del self.array
        self.shm.close()
        with contextlib.suppress(FileNotFoundError):
            self.shm.unlink()


class _Pool:
    """The processes and their slots."""

    def __init__(self, processes: int, shape: tuple[int, int, int]) -> None:
        self.slots: _Slots | None = None
        try:
            self.slots = _Slots(_SLOTS, shape)
        except OSError as exc:  # no /dev/shm, or too small: pickle the pixels instead
            log.warning("no shared memory for decoded images (%s); pickling them", exc)
        self.executor = ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_process,
            initargs=(os.getpid(), self.slots.shm.name if self.slots else None, shape),
        )
        # The executor spawns a process only when no idle one is left, so the first big chunk
        # paid for spawning them (6 s of a 14 s run on the H200 machine): start them all now.
        wait([self.executor.submit(time.sleep, 0.2) for _ in range(processes)])


_pool: _Pool | None = None
_pool_lock = threading.Lock()

# In a decoding process: the shared block (kept referenced: its mapping ends with it) and its
# slots as an array.
_process_shm: SharedMemory | None = None
_process_slots: np.ndarray | None = None


def _init_process(parent: int, shm_name: str | None, shape: tuple[int, int, int]) -> None:
    """Set up a decoding process: it dies with the worker, ignores Ctrl-C (the worker stops
    it), and maps the worker's slots."""
    global _process_shm, _process_slots

    def watch() -> None:
        # Not PR_SET_PDEATHSIG: that fires when the *thread* that started us ends.
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if shm_name:
        _process_shm = SharedMemory(name=shm_name)
        count = _process_shm.size // int(np.prod(shape))
        _process_slots = np.ndarray((count, *shape), np.uint8, _process_shm.buf)
        # Map every page now (one read each), not while the first chunks are decoded.
        _process_slots.reshape(-1)[:: mmap.PAGESIZE].sum()


def _load_into_slots(
    items: Sequence[Item], slots: Sequence[int], settings: Settings, size: int
) -> list[Loaded]:
    """In a decoding process: load each item, its pixels into its slot where it has one."""
    out = []
    for i, item in enumerate(items):
        loaded = load(item, settings, size)
        if loaded.pixels is not None and i < len(slots) and _process_slots is not None:
            _process_slots[slots[i]] = loaded.pixels
            loaded = replace(loaded, pixels=None, slot=slots[i])
        out.append(loaded)
    return out


def start(processes: int, size: int) -> None:
    """Start the decoding processes now rather than on the first file."""
    _get_pool(processes, size)


def _get_pool(processes: int, size: int) -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _Pool(processes, (size, size, 3))
            log.info("reading and decoding in %d processes", processes)
        return _pool


def _discard(pool: _Pool, kill: bool = False) -> None:
    """Stop using ``pool`` (the next call starts another); ``kill``: its processes too."""
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    if kill:  # (no processes left once another task's call shut the pool down)
        for process in list((pool.executor._processes or {}).values()):
            process.kill()
    pool.executor.shutdown(wait=False, cancel_futures=True)


def _run(
    pool: _Pool, parts: Sequence[Sequence[Item]], settings: Settings, size: int
) -> list[Loaded]:
    """One round trip per part, all in flight at once; the pixels of the results are read out
    of their slots here (a copy), and every slot is free again on return."""
    slots = pool.slots if pool.slots is not None and pool.slots.shape[0] == size else None
    taken: list[list[int]] = []
    try:
        futures = []
        for part in parts:
            taken.append(slots.take(len(part)) if slots else [])
            futures.append(
                pool.executor.submit(_load_into_slots, list(part), taken[-1], settings, size)
            )
        # Bounded: Celery's threads pool (a GPU worker's) enforces no time limit, and a
        # process stuck on a file (a hung network mount) would hold the task forever.
        deadline = time.monotonic() + settings.task_soft_time_limit_s
        try:
            loaded = [x for f in futures for x in f.result(max(0.0, deadline - time.monotonic()))]
        except futures_TimeoutError:
            _discard(pool, kill=True)
            raise TimeoutError(
                f"the decoding processes gave no answer in {settings.task_soft_time_limit_s:g} s "
                "(RIS_TASK_SOFT_TIME_LIMIT_S): replaced"
            ) from None
        if slots is None:
            return loaded
        return [
            replace(x, pixels=slots.array[x.slot].copy(), slot=-1) if x.slot >= 0 else x
            for x in loaded
        ]
    finally:
        if slots:
            for t in taken:
                slots.give(t)


def load_in_processes(
    items: Sequence[Item], settings: Settings, size: int, processes: int, group: int = 16
) -> list[Loaded]:
    """:func:`ris.workers.loading.load` of each item in the worker's decoding processes, in
    ``group``-item round trips, all at once.

    A process that dies (a file that crashes the decoder, or a kill) breaks the pool: it is
    replaced, and the items are loaded again one at a time, so that only an item that kills a
    process twice fails, with that reason (once could be another task's file).
    """
    pool = _get_pool(processes, size)
    parts = [items[i : i + group] for i in range(0, len(items), group)]
    try:
        return _run(pool, parts, settings, size)
    except BrokenProcessPool:
        _discard(pool)
    log.warning("a decoding process died; loading %d files one at a time", len(items))
    out: list[Loaded] = []
    for item in items:
        for _ in range(2):
            pool = _get_pool(processes, size)
            try:
                out.extend(_run(pool, [[item]], settings, size))
                break
            except BrokenProcessPool:
                _discard(pool)
        else:
            out.append(Loaded(item.key, error="cannot decode: the decoding process died on it"))
    return out
