"""The wheel installs by role: its base (the producer) in a fresh venv brings the `ris` command
and the `ris` package only, no generic top-level names and no model stack."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.startup import FORBIDDEN, build_wheel, importable, install_base


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new venv with the project's wheel and no extra (from the package index)."""
    work = tmp_path_factory.mktemp("wheel")
    yield install_base(work / "venv", build_wheel(work))


def _run(
    bin_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | (env or {})
    return subprocess.run(
        [str(bin_dir / "ris"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tempfile.gettempdir(),  # not the checkout: nothing importable by accident
        env=environ,
    )


def test_base_install_has_one_import_name_and_no_model_stack(base_venv: Path) -> None:
    assert importable(base_venv, ("ris", "ris.producer.cli", "celery", "pymilvus")) == [
        "ris",
        "ris.producer.cli",
        "celery",
        "pymilvus",
    ]
    assert importable(base_venv) == [], f"the base install brings some of {FORBIDDEN}"
    proc = subprocess.run(
        [str(base_venv / "python"), "-c", "import common"],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    assert proc.returncode != 0 and "No module named 'common'" in proc.stderr


def test_base_install_runs_the_producer_commands(base_venv: Path, redis_url: str) -> None:
    from ris.common.jobs import JobTracker, redis_client
    from ris.common.settings import get_settings

    helped = _run(base_venv, "--help")
    assert helped.returncode == 0 and "ingest" in helped.stdout and "worker" in helped.stdout

    settings = get_settings()
    tracker = JobTracker(redis_client(settings), settings.result_ttl_s)
    job = f"packaging-{os.urandom(3).hex()}"
    tracker.create(job, "cpu")
    tracker.set_total(job, 3, 1, finished=True)
    tracker.mark(job, ["/a.jpg"], ["/b.jpg"], {"/c.jpg": "not an image"})
    status = _run(base_venv, "status", job, env={"RIS_REDIS_URL": redis_url})
    assert status.returncode == 0, status.stderr
    assert f"job {job}: finished: 3/3 processed" in status.stdout
    assert "FAILED /c.jpg: not an image" in status.stdout


def test_base_install_names_the_extra_a_worker_needs(base_venv: Path, redis_url: str) -> None:
    """A role started without its extra stops at once with one line saying what to install."""
    for args, extra in ((["worker", "--queue", "cpu"], "worker"), (["serve"], "api")):
        proc = _run(base_venv, *args, env={"RIS_REDIS_URL": redis_url})
        assert proc.returncode != 0, args
        last = proc.stderr.strip().splitlines()[-1]
        assert f"ris[{extra}]" in last and "Traceback" not in proc.stderr, proc.stderr
