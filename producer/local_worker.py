"""Start a real ``ris worker`` process on this machine and wait until it answers a ping: what
``ris demo``, the tests and the benchmarks share."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from celery import Celery

_ROOT = Path(__file__).resolve().parent.parent


def start_worker_process(
    app: Celery,
    queue: str = "cpu",
    name: str | None = None,
    *,
    env: dict[str, str] | None = None,
    concurrency: int | None = None,
    loglevel: str = "INFO",
    output: int | IO[bytes] | None = None,
    prefix: Sequence[str] = (),
    timeout_s: float = 180.0,
) -> subprocess.Popen[bytes]:
    """Start ``ris worker`` on ``queue`` (``env``: RIS_* overrides; ``output``: where its
    stdout and stderr go, default this terminal; ``prefix``: a command to run it under) and
    return once the worker named ``name`` answers ``app``'s ping."""
    name = name or f"{queue}-{uuid.uuid4().hex[:6]}@%h"
    proc = subprocess.Popen(
        [
            *prefix,
            sys.executable,
            "-m",
            "ris.producer.cli",
            "worker",
            "--queue",
            queue,
            *(["--concurrency", str(concurrency)] if concurrency else []),
            "--hostname",
            name,
            "--loglevel",
            loglevel,
        ],
        cwd=_ROOT,
        env={**os.environ, **(env or {})},
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True,  # its own process group: it can be stopped (or killed) whole
    )
    wanted = name.split("@")[0]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with code {proc.returncode}")
        try:
            replies = app.control.ping(timeout=0.5) or []
        except Exception:  # a connection closed by an earlier broker restart: ping again
            replies = []
        if any(n.split("@")[0] == wanted for reply in replies for n in reply):
            return proc
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the worker did not answer within {timeout_s:.0f}s")
