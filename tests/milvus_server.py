"""A real Milvus server for the tests: PyPI's ``milvus`` 2.3.5 (the standalone binary with
embedded etcd and local storage), on free ports, data in a folder of its own, authorization on
with a non-default root password.

``milvus-server`` (a Python wrapper) starts ``milvus run standalone`` as its child and only
polls it, so both are stopped here by pid: the server first, then the wrapper.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.helpers import ROOT, free_port, wait_until

DEFAULT_ROOT_PASSWORD = "Milvus"
# Keys of milvus.yaml for every port the server listens on. They are passed with
# --extra-config rather than --proxy-port & co.: the wrapper test-binds those without
# SO_REUSEADDR, which fails for a minute after a SIGKILL (TIME_WAIT) although Milvus itself
# binds them again at once.
PORT_KEYS = (
    "proxy.port",
    "proxy.internalPort",
    "rootCoord.port",
    "queryCoord.port",
    "queryNode.port",
    "indexNode.port",
    "dataCoord.port",
    "dataNode.port",
)
START_TIMEOUT_S = 180.0
# Milvus 2.3 often outlasts a SIGTERM; the tests need no graceful flush of temporary data.
STOP_TIMEOUT_S = 5.0


def deployed_tuning() -> dict[str, str]:
    """The ``dataCoord`` settings the compose file gives its Milvus (environment variables,
    which Milvus reads over milvus.yaml), so tests and benchmarks run the deployed tuning."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["milvus"]["environment"]
    return {k: str(v) for k, v in env.items() if k.startswith("DATACOORD_")}


def sealed_segments(store: Any) -> list[tuple[int, bool]] | None:
    """Rows of each sealed segment the server's query node searches (a search visits each),
    and whether its index is loaded; None where the back end does not say (Milvus Lite)."""
    from pymilvus import utility

    try:
        info = utility.get_query_segment_info(store.name, using=store.client.raw._using)
    except Exception:
        return None
    return [(seg.num_rows, seg.indexID != 0) for seg in info if seg.state == 3]  # Sealed


class MilvusServerUnavailable(RuntimeError):
    """The milvus-server binary is missing or did not come up in time."""


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    try:
        wait_until(lambda: not _alive(pid), timeout, f"process {pid} gone")
    except TimeoutError:
        return False
    return True


class MilvusServer:
    """One Milvus standalone server; it can be stopped, killed and started again on its data."""

    def __init__(
        self,
        root: Path,
        password: str = "ris-test-Pa55word",
        config: Mapping[str, str] | None = None,
    ) -> None:
        """``config``: more milvus.yaml keys (dotted) and values, e.g. the segment size."""
        self.root = root
        self.config = dict(config or {})
        self.data_dir = root / "data"
        self.password = password
        self.ports = {key: free_port() for key in PORT_KEYS}
        self.etcd_port = free_port()
        self.wrapper: subprocess.Popen[bytes] | None = None
        self.server_pid: int | None = None
        self._log = root / "milvus-server.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy.port']}"

    @property
    def token(self) -> str:
        return f"root:{self.password}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics of the running server (the wrapper picks the port and hands it
        to the server in its environment)."""
        assert self.server_pid is not None, "server not running"
        environ = Path(f"/proc/{self.server_pid}/environ").read_bytes().split(b"\0")
        port = next(v.split(b"=", 1)[1] for v in environ if v.startswith(b"METRICS_PORT="))
        return f"http://127.0.0.1:{port.decode()}/metrics"

    def env(self) -> dict[str, str]:
        """RIS_* variables pointing a ris process at this server."""
        return {"RIS_MILVUS_URI": self.uri, "RIS_MILVUS_TOKEN": self.token}

    # --- life cycle --------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server (on the same data and ports as before, if it ran) and wait until
        it answers with the root password, setting that password on the first start."""
        beside = Path(sys.executable).with_name("milvus-server")  # the venv's, off PATH too
        exe = str(beside) if beside.exists() else shutil.which("milvus-server")
        if exe is None:
            raise MilvusServerUnavailable("no milvus-server binary (pip install milvus==2.3.5)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        extra = [f"{key}={port}" for key, port in self.ports.items()]
        extra.append(f"etcd.endpoints=localhost:{self.etcd_port}")
        extra += [f"{key}={value}" for key, value in self.config.items()]
        cmd = [exe, "--data", str(self.data_dir), "--authorization-enabled", "true"]
        for item in extra:
            cmd += ["--extra-config", item]
        with open(self._log, "ab") as log:
            self.wrapper = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **deployed_tuning()},
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        wrapper = self.wrapper
        assert wrapper is not None

        def ready() -> bool:
            if wrapper.poll() is not None:
                raise MilvusServerUnavailable(
                    f"milvus-server exited {wrapper.returncode} (log: {self._log})"
                )
            if self.server_pid is None:
                self.server_pid = next(iter(_children(wrapper.pid)), None)
            elif not _alive(self.server_pid):  # the wrapper would wait for it for ever
                raise MilvusServerUnavailable(
                    f"milvus run standalone exited (logs: {self.data_dir / 'logs'})"
                )
            return self.server_pid is not None and self._answers()

        try:
            wait_until(ready, timeout, every_s=1)
        except TimeoutError:
            raise MilvusServerUnavailable(
                f"Milvus server not answering at {self.uri} after {timeout:.0f} s "
                f"(log: {self.data_dir / 'logs'})"
            ) from None

    def _answers(self) -> bool:
        from pymilvus import MilvusClient

        for password in (self.password, DEFAULT_ROOT_PASSWORD):
            try:
                client = MilvusClient(uri=self.uri, token=f"root:{password}", timeout=3)
            except Exception:
                continue
            try:
                if password == DEFAULT_ROOT_PASSWORD:
                    client.update_password("root", DEFAULT_ROOT_PASSWORD, self.password)
                client.list_collections()
                return True
            except Exception:
                return False
            finally:
                client.close()
        return False

    def kill(self) -> None:
        """SIGKILL the Milvus server process (a crash), then end its wrapper."""
        if self.server_pid is not None:
            os.kill(self.server_pid, signal.SIGKILL)
            _wait_gone(self.server_pid, STOP_TIMEOUT_S)
        self._end_wrapper()

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL after a bound), then its wrapper."""
        if self.server_pid is not None and _alive(self.server_pid):
            os.kill(self.server_pid, signal.SIGTERM)
            if not _wait_gone(self.server_pid, STOP_TIMEOUT_S):
                os.kill(self.server_pid, signal.SIGKILL)
                _wait_gone(self.server_pid, STOP_TIMEOUT_S)
        self._end_wrapper()

    def _end_wrapper(self) -> None:
        self.server_pid = None
        if self.wrapper is None:
            return
        if self.wrapper.poll() is None:
            self.wrapper.terminate()
            try:
                self.wrapper.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.wrapper.kill()
                self.wrapper.wait(STOP_TIMEOUT_S)
        self.wrapper = None


def main() -> int:
    """Run one server in the foreground for benchmarks until interrupted:
    ``python -m tests.milvus_server DIR [KEY=VALUE ...]`` (KEY: a dotted milvus.yaml key)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("config", nargs="*", help="milvus.yaml KEY=VALUE")
    args = parser.parse_args()
    server = MilvusServer(args.root, config=dict(item.split("=", 1) for item in args.config))
    server.start()
    print(f"--milvus-uri {server.uri} --milvus-token {server.token} (pid {server.server_pid})")
    print("Ctrl-C stops it", flush=True)
    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        signal.sigwait(stops)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
