"""The store side of issue 14, on real processes: `ris delete` prefixes, tasks naming their
store, readers that never create collections, one Milvus Lite engine per `.db` and its
lifecycle, and clear one-line errors for read-only and corrupt databases."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ris.common.contracts import ImageRow
from ris.common.settings import get_settings
from ris.common.store import open_store, path_id
from tests.helpers import ROOT, UNPRIVILEGED, run_cli, start_worker, stop_worker, wait_until


def _images(folder: Path, names: list[str]) -> list[Path]:
    """Small, distinct JPEGs at ``folder/name``."""
    out = []
    for n, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(n)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def _ingest(*args: str, env: dict[str, str] | None = None, timeout: str = "300") -> str:
    return run_cli("ingest", *args, "--quiet", "--timeout", timeout, env=env).stdout


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one `error:` line of a failed command (and no traceback)."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(("error:", "ris "))]
    assert len(errors) == 1, proc.stderr
    return errors[-1]


def _engines(db: Path) -> list[int]:
    """Pids of the milvus-lite engines serving ``db``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and argv[0].endswith(b"/milvus") and argv[1] == str(db).encode():
            pids.append(int(proc.name))
    return pids


def _lite_env(db: Path, collection: str, **extra: str) -> dict[str, str]:
    return {"RIS_MILVUS_URI": str(db), "RIS_COLLECTION": collection, **extra}


def _fill(db: Path, collection: str, n: int) -> None:
    """``n`` rows written straight into ``collection`` of ``db``."""
    store = open_store(
        get_settings().model_copy(update={"milvus_uri": str(db), "collection": collection})
    )
    rng = np.random.default_rng(0)
    rows = [
        ImageRow(
            id=path_id(f"/x/{i}.jpg"),
            vector=rng.standard_normal(store.dim).astype(np.float32),
            path=f"/x/{i}.jpg",
            sha256="0" * 64,
            width=1,
            height=1,
            ingested_at=0,
        )
        for i in range(n)
    ]
    store.upsert(rows)
    store.close()


@pytest.fixture
def lite_db(tmp_path: Path) -> Iterator[Path]:
    """A private Milvus Lite file; its server is stopped afterwards."""
    from ris.common.store.lite_server import stop_lite_server

    db = tmp_path / "own.db"
    yield db
    stop_lite_server(db)
    for pid in _engines(db):  # what an older lite_server left behind
        os.kill(pid, signal.SIGKILL)


# --- 1: ris delete --------------------------------------------------------------------------
@pytest.mark.usefixtures("worker")
def test_delete_prefix_is_a_folder_with_plain_wildcards_and_counts_real_rows(
    tmp_path: Path, producer
) -> None:
    root = tmp_path / "p"
    names = ["a/1.jpg", "a2/1.jpg", "u_x/1.jpg", "uYx/1.jpg", "c%d/1.jpg", "cXd/1.jpg"]
    files = _images(root, names)
    assert "6 indexed" in _ingest(str(root))
    ids = {name: path_id(str(f)) for name, f in zip(names, files, strict=True)}

    out = run_cli("delete", "--prefix", f"{root}/a/").stdout
    assert "deleted 1 row(s)" in out
    out = run_cli("delete", "--prefix", str(root / "u_x")).stdout
    assert "deleted 1 row(s)" in out
    out = run_cli("delete", "--prefix", str(root / "c%d")).stdout
    assert "deleted 1 row(s)" in out
    left = producer.store.resolve(list(ids.values()))
    assert sorted(row["path"] for row in left.values()) == sorted(
        str(root / n) for n in ("a2/1.jpg", "uYx/1.jpg", "cXd/1.jpg")
    )
    # Rows actually removed, not ids asked for: a path never indexed deletes nothing.
    assert "deleted 0 row(s)" in run_cli("delete", str(root / "never.jpg")).stdout
    assert "deleted 1 row(s)" in run_cli("delete", str(root / "a2/1.jpg")).stdout
    assert "deleted 0 row(s)" in run_cli("delete", str(root / "a2/1.jpg")).stdout


def test_delete_prefix_removes_more_rows_than_one_query_returns(lite_db: Path) -> None:
    """On the store (4-dim vectors: 20,000 model-sized rows take minutes to write here)."""
    from ris.common.store import ImageStore

    settings = get_settings().model_copy(
        update={"milvus_uri": str(lite_db), "collection": "many", "index_type": "FLAT"}
    )
    store = ImageStore(settings, "tiny", 4)
    paths = [f"/big/{i}.jpg" for i in range(20_000)] + [f"/bigger/{i}.jpg" for i in range(3)]
    fields = {"sha256": "0" * 64, "width": 1, "height": 1, "ingested_at": 0}
    rows = [ImageRow(id=path_id(p), vector=[1.0, 0, 0, 0], path=p, **fields) for p in paths]
    for start in range(0, len(rows), 5000):
        store.upsert(rows[start : start + 5000])
    # A plain Milvus query stops at 16,384 rows: the prefix scan must not.
    assert store.delete_prefix("/big") == 20_000
    assert store.count() == 3
    store.close()


# --- 3: a task names its store --------------------------------------------------------------
@pytest.mark.usefixtures("worker")
def test_worker_refuses_a_task_for_another_milvus(tmp_path: Path, producer) -> None:
    files = _images(tmp_path / "imgs", ["one.jpg", "two.jpg"])
    other = tmp_path / "elsewhere" / "other.db"
    out = _ingest(str(tmp_path / "imgs"), env={"RIS_MILVUS_URI": str(other)})
    assert "0 indexed, 0 unchanged, 2 failed" in out, out
    for f in files:
        assert re.search(rf"FAILED {re.escape(str(f))}: not indexed: the task is for Milvus", out)
    assert "this worker uses lite://" in out
    assert producer.store.resolve([path_id(str(f)) for f in files]) == {}
    assert not other.exists()  # nobody opened a database the producer only named


@pytest.mark.usefixtures("worker")
def test_producer_collection_is_the_one_written(tmp_path: Path) -> None:
    _images(tmp_path / "imgs", ["one.jpg", "two.jpg"])
    env = {"RIS_COLLECTION": f"mine_{uuid.uuid4().hex[:6]}"}
    assert "2 indexed" in _ingest(str(tmp_path / "imgs"), env=env)
    info = json.loads(run_cli("info", env=env).stdout)
    assert info["rows"] == 2


# --- 4: readers never create collections ----------------------------------------------------
@pytest.mark.usefixtures("worker")
def test_search_and_info_never_create_a_collection(tmp_path: Path, producer) -> None:
    (query,) = _images(tmp_path, ["q.jpg"])
    typo = f"typo_{uuid.uuid4().hex[:6]}"
    # The worker refuses the query (never creating the collection): that query's error.
    proc = run_cli("search", str(query), "--collection", typo, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"error: search failed: collection {typo!r} does not exist" in proc.stdout, proc.stdout
    line = _error_line(run_cli("info", check=False, env={"RIS_COLLECTION": typo}))
    assert "does not exist" in line
    assert typo not in producer.store.client.list_collections()
    # A mistyped Lite path: an error, no new database, no server for it.
    missing = tmp_path / "mistyped" / "milvus.db"
    line = _error_line(run_cli("info", check=False, env={"RIS_MILVUS_URI": str(missing)}))
    assert "no Milvus Lite database at" in line
    assert not missing.exists() and _engines(missing) == []


# --- 5: one engine per .db, and a dead one comes back ---------------------------------------
def test_killed_wrapper_takes_its_engine_and_one_engine_serves_the_db(lite_db: Path) -> None:
    collection = "five"
    # Started by another process, as a worker would: the test process is not its parent.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ris.common.store.lite_server import ensure_lite_server; "
            "ensure_lite_server(sys.argv[1])",
            str(lite_db),
        ],
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    _fill(lite_db, collection, 7)
    state = json.loads(lite_db.with_name(f".{lite_db.name}.server.json").read_text())
    assert len(_engines(lite_db)) == 1
    os.kill(int(state["pid"]), signal.SIGKILL)
    wait_until(lambda: not _engines(lite_db), 15, "the engine gone with its wrapper", every_s=0.2)
    info = json.loads(run_cli("info", env=_lite_env(lite_db, collection)).stdout)
    assert info["rows"] == 7
    assert len(_engines(lite_db)) == 1
    # A second server for the same file is refused by the engine's own lock.
    from ris.common.store.lite_server import _side_file

    second = subprocess.run(
        [sys.executable, "-m", "ris.common.store.lite_server", str(lite_db), "127.0.0.1:1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode != 0 and "already served" in second.stderr
    assert _side_file(lite_db, "engine.lock").exists()
    assert len(_engines(lite_db)) == 1


def test_killed_engine_is_logged_restarted_and_the_job_finishes(
    lite_db: Path, tmp_path: Path
) -> None:
    env = _lite_env(lite_db, "five", RIS_QUEUES="cpu,gpu,hard5", RIS_MILVUS_TIMEOUT_S="5")
    log = tmp_path / "worker.log"
    worker = start_worker("hard5", env=env, log=log)
    try:
        _images(tmp_path / "a", ["1.jpg", "2.jpg"])
        _images(tmp_path / "b", ["3.jpg", "4.jpg"])
        assert "2 indexed" in _ingest(str(tmp_path / "a"), "--queue", "hard5", env=env)
        state = lite_db.with_name(f".{lite_db.name}.server.json")
        address = json.loads(state.read_text())["address"]
        (engine,) = _engines(lite_db)
        os.kill(engine, signal.SIGKILL)
        started = time.monotonic()
        # Within 90 s (pymilvus alone retried for 3.5 minutes, silently).
        out = _ingest(str(tmp_path / "b"), "--queue", "hard5", env=env, timeout="90")
        assert "2 indexed, 0 unchanged, 0 failed" in out, out
        assert time.monotonic() - started < 90
        text = log.read_text(errors="replace")
        assert "Milvus Lite engine for" in text and "starting it again" in text, text[-3000:]
        assert len(_engines(lite_db)) == 1
        assert json.loads(state.read_text())["address"] == address  # same port: clients return
        assert json.loads(run_cli("info", env=env).stdout)["rows"] == 4
    finally:
        stop_worker(worker)


# --- lifecycle: ris lite list / stop, and ris info --------------------------------------------
def test_lite_servers_are_listed_and_stopped(lite_db: Path) -> None:
    env = _lite_env(lite_db, "life")
    _fill(lite_db, "life", 2)
    info = json.loads(run_cli("info", env=env).stdout)
    assert str(lite_db) in [s["db"] for s in info["lite_servers"]]
    assert str(lite_db) in run_cli("lite", "list", env=env).stdout
    assert len(_engines(lite_db)) == 1
    assert f"stopped {lite_db}" in run_cli("lite", "stop", env=env).stdout
    assert _engines(lite_db) == []
    assert str(lite_db) not in run_cli("lite", "list", env=env).stdout
    assert "no server running" in run_cli("lite", "stop", str(lite_db), env=env).stdout


# --- 12: clear errors -------------------------------------------------------------------------
def test_corrupt_db_says_what_is_wrong(tmp_path: Path) -> None:
    db = tmp_path / "bad" / "milvus.db"
    db.parent.mkdir()
    db.write_bytes(b"this is not a database\n" * 400)
    line = _error_line(run_cli("info", check=False, env=_lite_env(db, "x")))
    assert "file is not a database" in line and str(db) in line
    assert "another program" not in line


@pytest.mark.skipif(os.geteuid() == 0 and not UNPRIVILEGED, reason="root ignores permissions")
def test_db_in_read_only_folder_says_so(lite_db: Path) -> None:
    from ris.common.store.lite_server import stop_lite_server

    _fill(lite_db, "ro", 1)
    stop_lite_server(lite_db)
    folder = lite_db.parent
    for side in folder.glob(f".{lite_db.name}.*"):
        side.unlink()
    folder.chmod(0o555)
    try:
        proc = subprocess.run(
            [*UNPRIVILEGED, sys.executable, "-m", "ris.producer.cli", "info"],
            cwd=ROOT,
            env={**os.environ, **_lite_env(lite_db, "ro")},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        folder.chmod(0o755)
    line = _error_line(proc)
    assert "Milvus Lite cannot use" in line and "writable" in line, line
