"""Share one Milvus Lite database file between processes.

A Milvus Lite ``.db`` file can be opened by a single process only. So the first process that
needs it starts one detached server (milvus-lite's C++ engine over gRPC on a loopback port)
and records its address beside the file; every process, CLI and workers alike, then talks to
it through the same ``http://`` client code path as a Milvus standalone server. The server is
the single writer of the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 30.0


def _state_file(db: Path) -> Path:
    return db.with_name(f".{db.name}.server.json")


def _port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _running_address(db: Path) -> str | None:
    state = _state_file(db)
    try:
        info = json.loads(state.read_text())
    except (OSError, ValueError):
        return None
    if _pid_alive(int(info.get("pid", 0))) and _port_open(info["address"]):
        return str(info["address"])
    return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_lite_server(db_path: str | Path, bind_address: str | None = None) -> str:
    """Return the ``http://`` URI of the server for ``db_path``, starting one if none runs
    on ``bind_address`` (default ``RIS_LITE_BIND_ADDRESS``)."""
    from common.settings import get_settings

    host = bind_address or get_settings().lite_bind_address
    db = Path(db_path).expanduser().absolute()
    db.parent.mkdir(parents=True, exist_ok=True)
    address = _running_address(db)
    if address:
        return f"http://{address}"
    # Serialise start-up so that two processes arriving together start one server.
    lock_path = db.with_name(f".{db.name}.start.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        address = _running_address(db)
        if address:
            return f"http://{address}"
        address = f"{host}:{_free_port(host)}"
        log_file = db.with_name(f".{db.name}.server.log")
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "common.lite_server", str(db), address],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the process that started it
                cwd=str(Path(__file__).resolve().parent.parent),
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"Milvus Lite server for {db} exited with code {proc.returncode}; "
                    f"see {log_file} (is the file open in another program?)"
                )
            if _port_open(address):
                _state_file(db).write_text(json.dumps({"pid": proc.pid, "address": address}))
                log.info("started Milvus Lite server for %s on %s (pid %d)", db, address, proc.pid)
                return f"http://{address}"
            time.sleep(0.1)
        proc.kill()
        raise RuntimeError(f"Milvus Lite server for {db} did not open {address} in time")


def stop_lite_server(db_path: str | Path, timeout_s: float = 10.0) -> bool:
    """Stop the server for ``db_path`` if one runs; True when one was stopped."""
    db = Path(db_path).expanduser().absolute()
    state = _state_file(db)
    try:
        pid = int(json.loads(state.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return False
    if not _pid_alive(pid):
        state.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    state.unlink(missing_ok=True)
    return True


def _serve(db: str, address: str) -> None:
    """Run the milvus-lite engine for ``db`` on ``address`` until SIGTERM."""
    from milvus_lite.server import Server

    server = Server(db, address=address)
    if not server.init() or not server.start():
        sys.exit(f"could not start Milvus Lite for {db} (already opened by another process?)")

    def _stop(*_: object) -> None:
        server.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # The engine runs as our child; wait for it and exit with it.
    proc = server._p  # milvus-lite exposes no public handle to its process
    sys.exit(proc.wait() if proc is not None else 1)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    _serve(sys.argv[1], sys.argv[2])
