"""Share one Milvus Lite database file between processes.

A Milvus Lite ``.db`` file can be opened by a single process only. So the first process that
needs it starts one detached server (milvus-lite's C++ engine over gRPC on a loopback port)
and records its address beside the file; every process, CLI and workers alike, then talks to
it through the same ``http://`` client code path as a Milvus standalone server.

One ``.db`` never has two engines: the wrapper takes an exclusive ``flock`` on
``.NAME.engine.lock`` and hands the descriptor to the engine, so the lock is held for as long
as the engine itself lives, whoever else dies. The engine is killed by the kernel when its
wrapper dies (``PR_SET_PDEATHSIG``), and the wrapper exits when its engine does, so a dead
server is simply started again by whoever needs it next (on the same port where it is free,
so clients holding the address reconnect). Every server is listed in a registry folder
(``ris lite list``) and stopped with ``ris lite stop``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ris.common.errors import LiteServerError

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 30.0
# How long a new wrapper waits for the lock of an engine that is still shutting down.
_LOCK_WAIT_S = 10.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class LiteServer:
    """A running server: its database file, wrapper pid and gRPC address."""

    db: str
    pid: int
    address: str


def _side_file(db: Path, suffix: str) -> Path:
    return db.with_name(f".{db.name}.{suffix}")


def _state_file(db: Path) -> Path:
    return _side_file(db, "server.json")


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


def _port_free(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        # As the engine binds (gRPC reuses addresses): a closed port in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def engine_running(db: Path) -> bool:
    """Whether an engine holds ``db``'s engine lock (probed without waiting)."""
    try:
        fd = os.open(_side_file(db, "engine.lock"), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a probe lock we may have taken
    return False


def _read_state(db: Path) -> dict[str, object]:
    try:
        info = json.loads(_state_file(db).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _running_address(db: Path) -> str | None:
    info = _read_state(db)
    address = str(info.get("address", ""))
    if address and engine_running(db) and _port_open(address):
        return address
    return None


def _writable(folder: Path, db: Path) -> None:
    """A clear error where the folder of the ``.db`` cannot hold it (the engine writes there)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        if db.exists() and not os.access(db, os.W_OK):
            raise PermissionError(13, "the database file is read-only", str(db))
    except OSError as exc:
        raise LiteServerError(
            f"Milvus Lite cannot use {db}: {exc.filename or folder}: "
            f"{exc.strerror or exc} (the file and its folder must be writable)"
        ) from None


def _start_failure(log_file: Path, offset: int) -> str:
    """The reason a server exited at start, from the new part of its log."""
    try:
        with open(log_file, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "no log"
    # The engine's own reason ("file is not a database"), else the wrapper's.
    for pattern in (r"errs: (.+)", r"^ris-lite: (.+)$"):
        reasons = re.findall(pattern, text, re.M)
        if reasons:
            return reasons[0].strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and "Warning" not in ln]
    return lines[-1].strip() if lines else "no reason logged"


def registry_entry(registry: Path, db: Path) -> Path:
    """The registry file of ``db``'s server."""
    return registry / f"{hashlib.sha1(str(db).encode()).hexdigest()[:16]}.json"


def ensure_lite_server(
    db_path: str | Path, registry: Path | None = None, bind_address: str | None = None
) -> str:
    """Return the ``http://`` URI of the server for ``db_path``, starting one if none runs,
    listening on ``bind_address`` (default ``RIS_LITE_BIND_ADDRESS``)."""
    if bind_address is None:
        from ris.common.settings import get_settings

        bind_address = get_settings().lite_bind_address
    db = Path(db_path).expanduser().absolute()
    address = _running_address(db)
    if address:
        return f"http://{address}"
    _writable(db.parent, db)
    # Serialise start-up so that two processes arriving together start one server.
    with open(_side_file(db, "start.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        address = _running_address(db)
        if address:
            return f"http://{address}"
        previous = str(_read_state(db).get("address", ""))
        # The same port again where it is free: clients holding the address reconnect.
        if not (previous.startswith(f"{bind_address}:") and _port_free(previous)):
            previous = f"{bind_address}:{_free_port(bind_address)}"
        address = previous
        log_file = _side_file(db, "server.log")
        offset = log_file.stat().st_size if log_file.exists() else 0
        cmd = [sys.executable, "-m", "ris.common.store.lite_server", str(db), address]
        if registry is not None:
            cmd.append(str(registry))
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the process that started it
                cwd=str(Path(__file__).resolve().parent.parent),
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LiteServerError(
                    f"Milvus Lite could not open {db}: {_start_failure(log_file, offset)} "
                    f"(log: {log_file})"
                )
            if _port_open(address):
                state = {"pid": proc.pid, "address": address}
                _state_file(db).write_text(json.dumps(state))
                if registry is not None:
                    registry.mkdir(parents=True, exist_ok=True)
                    registry_entry(registry, db).write_text(json.dumps({"db": str(db), **state}))
                log.info("started Milvus Lite server for %s on %s (pid %d)", db, address, proc.pid)
                return f"http://{address}"
            time.sleep(0.1)
        proc.kill()
        raise LiteServerError(f"Milvus Lite server for {db} did not open {address} in time")


def stop_lite_server(db_path: str | Path, timeout_s: float = 10.0) -> bool:
    """Stop the server for ``db_path`` if one runs; True when one was stopped."""
    db = Path(db_path).expanduser().absolute()
    try:
        pid = int(str(_read_state(db)["pid"]))
    except (KeyError, ValueError):
        return False
    if not _pid_alive(pid):
        _state_file(db).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while (_pid_alive(pid) or engine_running(db)) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    return True


def list_lite_servers(registry: Path) -> list[LiteServer]:
    """The servers in ``registry`` whose engine still runs; entries of dead ones are removed."""
    found: list[LiteServer] = []
    for entry in sorted(registry.glob("*.json")) if registry.is_dir() else []:
        try:
            info = json.loads(entry.read_text())
            server = LiteServer(str(info["db"]), int(info["pid"]), str(info["address"]))
        except (OSError, ValueError, KeyError):
            continue
        if _pid_alive(server.pid) and engine_running(Path(server.db)):
            found.append(server)
        else:
            entry.unlink(missing_ok=True)
    return found


# --- the wrapper process: python -m ris.common.store.lite_server DB ADDRESS [REGISTRY] ---
def _take_engine_lock(db: Path) -> int:
    """The exclusive engine lock of ``db``; waits briefly for an engine that is shutting down."""
    fd = os.open(_side_file(db, "engine.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                sys.exit(f"ris-lite: {db} is already served by another Milvus Lite engine")
            time.sleep(0.1)
    # milvus-lite's embedded mode (MilvusClient("x.db")) locks .x.db.lock with lockf: honour it.
    embedded = os.open(_side_file(db, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(embedded, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(f"ris-lite: {db} is open in another program (embedded Milvus Lite)")
    os.set_inheritable(fd, True)
    return fd


def _die_with(parent: int) -> None:
    """In the engine, before exec: be killed when the wrapper dies (also if it already has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _serve(db: Path, address: str, registry: Path | None) -> None:
    """Run the milvus-lite engine for ``db`` on ``address`` until SIGTERM or its exit."""
    from milvus_lite.server import BIN_PATH

    lock_fd = _take_engine_lock(db)
    bin_path = os.environ.get("BIN_PATH", BIN_PATH)
    env = {**os.environ, "LD_LIBRARY_PATH": f"{bin_path}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    parent = os.getpid()
    engine = subprocess.Popen(
        [str(Path(bin_path) / "milvus"), str(db), address, os.environ.get("LOG_LEVEL", "ERROR")],
        env=env,
        cwd=str(db.parent),
        pass_fds=(lock_fd,),  # the engine holds the lock itself, for as long as it lives
        preexec_fn=lambda: _die_with(parent),
    )

    def _stop(*_: object) -> None:
        engine.terminate()
        try:
            engine.wait(5)
        except subprocess.TimeoutExpired:
            engine.kill()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    code = engine.wait()
    if registry is not None:
        registry_entry(registry, db).unlink(missing_ok=True)
    print(f"ris-lite: engine for {db} exited with code {code}", flush=True)
    sys.exit(0 if code in (0, -signal.SIGTERM) else 1)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    _serve(
        Path(sys.argv[1]),
        sys.argv[2],
        Path(sys.argv[3]) if len(sys.argv) > 3 else None,
    )
