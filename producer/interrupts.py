"""Ctrl-C during an enqueue: stop between two chunks, so that the record of what was sent
stays exact and a second run resumes where this one stopped."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def first_interrupt_stops() -> Iterator[Callable[[], bool]]:
    """Within the block a first SIGINT only sets a flag, read by the callable yielded (the
    enqueue loop's ``should_stop``); a second one interrupts at once. The previous handler
    is restored on leaving."""
    stop: list[bool] = []

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if stop:  # a second Ctrl-C: at once
            raise KeyboardInterrupt
        stop.append(True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: bool(stop)
    finally:
        signal.signal(signal.SIGINT, previous)
