"""A real ``ris serve`` process for the tests: started on a free port, reached over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.helpers import ROOT, free_port, wait_until


@dataclass
class Server:
    """A running ``ris serve`` process and how to reach it."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    token: str | None = None
    session: requests.Session = field(default_factory=requests.Session)

    def call(self, method: str, path: str, auth: bool = True, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", {}))
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return self.session.request(
            method, self.url + path, headers=headers, timeout=kw.pop("timeout", 120), **kw
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def launch(host: str, log: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    full_env = {**os.environ, "RIS_API_HOST": host, "RIS_API_PORT": str(port), **env}
    out = open(log, "ab")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ris.producer.cli", "serve"],
        cwd=ROOT,
        env=full_env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    return proc, port


def start_server(
    host: str, log: Path, env: dict[str, str], connect_host: str | None = None
) -> Server:
    """Start ``ris serve`` and wait until it answers."""
    proc, port = launch(host, log, env)
    server = Server(f"http://{connect_host or host}:{port}", proc, log, env.get("RIS_API_TOKEN"))

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"ris serve exited {proc.returncode}: {log.read_text()}")
        try:
            return server.call("GET", "/api/config", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(answers, 120, every_s=0.3)
    except TimeoutError:
        server.stop()
        raise RuntimeError(f"ris serve did not answer within 120 s: {log.read_text()}") from None
    return server


def wait_job(server: Server, job_id: str, timeout_s: float = 600) -> dict[str, Any]:
    """The job's JSON (``GET /api/jobs/ID``) once it is finished."""

    def finished() -> dict[str, Any] | None:
        job = server.call("GET", f"/api/jobs/{job_id}").json()
        return job if job["finished"] else None

    return wait_until(finished, timeout_s, f"job {job_id} finished", every_s=0.5)


def wait_task(server: Server, task_id: str, timeout_s: float = 120) -> dict[str, Any]:
    """The task's JSON (``GET /api/tasks/ID``) once it succeeded or failed."""

    def done() -> dict[str, Any] | None:
        response = server.call("GET", f"/api/tasks/{task_id}")
        assert response.status_code == 200, response.text
        task = response.json()
        return task if task["state"] in ("SUCCESS", "FAILURE") else None

    return wait_until(done, timeout_s, f"task {task_id} done", every_s=0.2)
