"""The ``ris`` command line in-process (click's CliRunner): its one-line errors and exit codes,
its help, and its lazy loading. No service is reached: neither Redis nor Milvus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from ris.common.defaults import MAX_TOP_K
from ris.common.errors import NoWorkerError, RisError, SyncError
from ris.common.settings import get_settings
from ris.producer import cli, reports
from ris.producer.interrupts import first_interrupt_stops
from tests.helpers import ROOT, free_port


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """Each run reads the environment again (get_settings caches the first read)."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def ris(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli.ris, list(args), env=env, prog_name="ris")


def one_line(result: Result, code: int) -> str:
    """The exit code is ``code`` and stderr is one line, with no traceback; that line."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(("name", "value"), [("RIS_TOP_K", "0"), ("RIS_CHUNK_SIZE", "many")])
def test_an_invalid_setting_is_one_line(name: str, value: str) -> None:
    line = one_line(ris("status", "some-job", env={name: value}), 1)
    assert line.startswith(f"error: invalid setting: {name}: "), line


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"RIS_MODEL": "efficientnet-lite0-int8", "RIS_DEVICE": "cuda"}, "int8 model for CPU"),
        ({"RIS_INDEX_TYPE": "HNSW"}, "index type HNSW needs a Milvus server"),
    ],
)
def test_settings_that_do_not_go_together_are_one_line(env: dict[str, str], reason: str) -> None:
    line = one_line(ris("status", "some-job", env=env), 1)
    assert line.startswith("error: invalid setting: "), line
    assert reason in line and "RIS_:" not in line and "Value error" not in line, line


@pytest.mark.parametrize("top_k", ["0", "-1", str(MAX_TOP_K + 1)])
def test_top_k_out_of_range_is_a_usage_error(tmp_path: Path, top_k: str) -> None:
    line = one_line(ris("search", str(tmp_path / "q.jpg"), "--top-k", top_k), 2)
    assert "--top-k" in line and f"out of range: 1 to {MAX_TOP_K}" in line, line
    assert one_line(ris("eval", str(tmp_path), "-k", top_k), 2).startswith("error: ris eval:")


def test_top_k_must_be_an_integer(tmp_path: Path) -> None:
    assert "not an integer: 'many'" in one_line(ris("search", "q.jpg", "-k", "many"), 2)


@pytest.mark.parametrize("command", [["ingest", "x.jpg"], ["search", "x.jpg"], ["worker"]])
def test_an_unknown_queue_is_a_usage_error(command: list[str]) -> None:
    line = one_line(ris(*command, "--queue", "nope"), 2)
    assert "'nope' is not one of 'cpu', 'gpu' (RIS_QUEUES)" in line, line


def no_redis() -> dict[str, str]:
    """Settings that point at a port nobody listens on (the session's Redis may be up when
    system tests run beside these)."""
    return {"RIS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}


def test_the_queues_are_the_settings() -> None:
    # Past parsing, ingest checks Redis: down here, so exit 1 rather than a usage error.
    env = {**no_redis(), "RIS_QUEUES": "cpu,bulk"}
    assert "Redis at" in one_line(ris("ingest", "x.jpg", "--queue", "bulk", env=env), 1)


def test_an_unknown_command_is_a_usage_error() -> None:
    assert "No such command 'nope'" in one_line(ris("nope"), 2)
    assert "No such option '--nope'" in one_line(ris("info", "--nope"), 2)
    assert "Missing argument" in one_line(ris("ingest"), 2)


def test_search_of_a_missing_file_is_that_query_s_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reported with the others on stdout (exit 1); the file is read before anything is sent,
    so no service is reached once Redis' check is set aside."""
    monkeypatch.setattr("ris.producer.local_redis.check_redis", lambda *_: None)
    missing = tmp_path / "missing.png"
    result = ris("search", str(missing), env=no_redis())
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        f"query: {missing}",
        f"  error: {missing}: No such file or directory",
    ]
    assert result.stderr == ""


def test_a_command_that_needs_redis_says_in_one_line_that_it_is_down() -> None:
    line = one_line(ris("status", "some-job", env=no_redis()), 1)
    assert line.startswith("error: Redis at redis://127.0.0.1:") and "unreachable" in line


def test_drop_without_yes_refuses() -> None:
    assert one_line(ris("drop"), 2) == "refusing to drop without --yes"


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        cli, "find_spec", lambda name: None if name in ("uvicorn", "towhee") else object()
    )
    line = one_line(ris("serve"), 2)
    assert (
        line == "error: `ris serve` needs the api extra: pip install 'ris[api]' (missing: uvicorn)"
    )
    settings = get_settings().model_copy(update={"device": "cuda"})
    assert "pip install 'ris[gpu]' (missing: towhee)" in str(cli.missing_extra("worker", settings))
    monkeypatch.undo()
    assert cli.missing_extra("serve", settings) is None


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (RisError("broken"), 1, "error: broken"),
        (SyncError("not a folder"), SyncError.exit_code, "error: not a folder"),
        (NoWorkerError("no worker consumes queue 'gpu'"), 3, "error: no worker consumes"),
        (TimeoutError("not within 2 s"), 1, "error: not within 2 s"),
        (ConnectionError("refused"), 1, "error: refused"),
    ],
)
def test_one_handler_turns_errors_into_one_line_and_their_exit_code(
    monkeypatch: pytest.MonkeyPatch, error: Exception, code: int, line: str
) -> None:
    def fail() -> None:
        raise error

    monkeypatch.setattr(cli, "read_settings", fail)
    assert one_line(ris("info"), code).startswith(line)


def test_ctrl_c_exits_130_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "read_settings", interrupted)
    result = ris("info")
    assert result.exit_code == 130 and result.stderr == ""


def test_help_lists_every_command_by_section() -> None:
    result = ris("--help")
    assert result.exit_code == 0
    for section, entries in cli.SECTIONS.items():
        block = result.stdout.split(f"{section}:\n", 1)[1].split("\n\n", 1)[0]
        assert [line.split()[0] for line in block.splitlines()] == list(entries)
    assert ris("-h").stdout == result.stdout


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_command_has_help_matching_the_list(name: str) -> None:
    result = ris(name, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: ris {name} ")
    command = cli.ris.get_command(click.Context(cli.ris), name)
    assert command is not None and command.help is not None
    assert command.help.splitlines()[0] == cli.COMMANDS[name].summary


def test_help_imports_no_command() -> None:
    """``ris --help`` loads click alone: no settings (pydantic), Celery or worker stack."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['ris', '--help']\n"
        "try:\n    runpy.run_module('ris.producer.cli', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stderr.split())
    assert "Jobs:" in proc.stdout
    for heavy in ("pydantic", "celery", "ris.common.settings", "ris.workers.cli", "tqdm"):
        assert heavy not in loaded, heavy


# --- what the commands print, built apart ----------------------------------------------------
def test_failure_lines_stop_at_the_limit() -> None:
    failures = {f"/{i}.jpg": "not an image" for i in range(23)}
    lines = reports.failure_lines(failures)
    assert lines[0] == "  FAILED /0.jpg: not an image" and len(lines) == 21
    assert lines[-1] == "  ... and 3 more (ris status JOB --failures)"
    assert len(reports.failure_lines(failures, limit=None)) == 23


def test_progress_line() -> None:
    from ris.common.jobs import JobProgress

    p = JobProgress("j1", 5, True, 3, 1, 0, "cpu", 0.0)
    assert reports.progress_line(p) == (
        "job j1: running: 4/5 processed (3 indexed, 1 unchanged, 0 failed, 1 pending)"
    )


def test_absolute_prefix_keeps_a_trailing_slash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ris.producer.inputs import absolute_prefix

    monkeypatch.chdir(tmp_path)
    assert absolute_prefix("a/") == f"{tmp_path}/a/"
    assert absolute_prefix("a") == f"{tmp_path}/a"
    assert absolute_prefix("s3://bucket/a") == "s3://bucket/a"


def test_a_first_ctrl_c_only_asks_to_stop_a_second_interrupts() -> None:
    before = signal.getsignal(signal.SIGINT)
    with first_interrupt_stops() as interrupted:
        assert not interrupted()
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupted()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
