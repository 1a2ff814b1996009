"""Redis down, through the real ``ris`` process (``python -m ris.producer.cli``): each command
that needs Redis says so in one line within seconds, without the password."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import free_port, run_cli


@pytest.mark.parametrize("command", ["ingest", "status", "search"])
def test_redis_down_is_one_line_within_seconds(command: str, photos: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {"RIS_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0"}
    image = str(next(iter(sorted(photos.iterdir()))))
    args = {"ingest": [image], "status": ["somejob"], "search": [image]}[command]
    started = time.monotonic()
    out = run_cli(command, *args, env=env, check=False, timeout=60)
    assert time.monotonic() - started < 15
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert lines == [lines[0]] and "Traceback" not in out.stderr, out.stderr
    assert f"Redis at redis://127.0.0.1:{port}/0 is unreachable" in lines[0]
    assert "hunter2" not in out.stdout + out.stderr
