"""Issue 14, input and client side: each failure a new user found, reproduced on real processes
(the real `ris` CLI, a real worker, Redis, Milvus Lite) and shown fixed.

The module runs its own Redis (so queues and jobs are its own) and one worker with a short task
time limit; Milvus is the session's Lite file, in a collection of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from ris.common.chunks import send_chunk
from ris.common.contracts import IngestChunk
from ris.common.store import path_id
from ris.producer.local_redis import start_redis
from tests.cluster import IsolatedCluster
from tests.helpers import ROOT, run_cli, start_worker, stop_worker, wait_until

SOFT_LIMIT_S = 15


@dataclass
class IoCluster(IsolatedCluster):
    """A private Redis, the session's Milvus, one worker."""

    worker: subprocess.Popen[bytes] | None = None

    def ingest(self, *args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
        return run_cli(
            "ingest", *args, "--quiet", "--timeout", "180", env={**self.env, **env},
            timeout=timeout, check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def io(tmp_root: Path) -> Iterator[IoCluster]:
    root = tmp_root / f"io-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    url, redis_proc = start_redis(workdir=root)
    env = {
        "RIS_REDIS_URL": url,
        "RIS_COLLECTION": f"io_{uuid.uuid4().hex[:6]}",
        "RIS_CHUNK_SIZE": "8",
        "RIS_NO_WORKER_WAIT_S": "3",
        # Nothing here is lost from the queue: no resends muddle the counts.
        "RIS_STALL_CHECK_S": "600",
        # A stuck read is cut by the time limit, not by the URL timeout.
        "RIS_TASK_SOFT_TIME_LIMIT_S": str(SOFT_LIMIT_S),
        "RIS_TASK_TIME_LIMIT_S": str(SOFT_LIMIT_S + 30),
        "RIS_URL_TIMEOUT_S": "600",
    }
    cluster = IoCluster(root, env)
    cluster.worker = start_worker("cpu", "io@%h", env=env, log=root / "worker.log")
    try:
        yield cluster
    finally:
        stop_worker(cluster.worker)
        redis_proc.terminate()
        redis_proc.wait(10)


def _photos(photos: Path, dest: Path, n: int, suffix: str = ".png") -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sorted(photos.iterdir())[:n]:
        with Image.open(src) as img:
            path = dest / f"{src.stem}{suffix}"
            img.convert("RGB").save(path)
        out.append(path)
    return out


def _finished_line(out: str) -> re.Match[str]:
    m = re.search(
        r"job (\S+): finished: (\d+)/(\d+) processed \((\d+) indexed, (\d+) unchanged, "
        r"(\d+) failed",
        out,
    )
    assert m, out
    return m


# --- 2: links ------------------------------------------------------------------------------
def test_link_loops_and_linked_files_give_one_row_per_file(
    io: IoCluster, photos: Path, tmp_path: Path
) -> None:
    s = tmp_path / "s"
    real = _photos(photos, s / "real", 3)
    (s / "loop").mkdir()
    (s / "loop" / "up").symlink_to("..")  # a link back up the tree
    (s / "real" / "zz_link.png").symlink_to(real[0].name)  # one file, a second path
    os.link(real[1], s / "zz_hard.png")  # and a third, a hard link
    # Walks every extension the decoder reads: .avif was skipped by the folder walk.
    avif = s / "real" / "photo.avif"
    with Image.open(real[2]) as img:
        img.save(avif)

    for inputs in ([str(s / "**" / "*.png")], [str(s)]):
        out = io.ingest(*inputs)
        assert out.returncode == 0, out.stdout + out.stderr
        line = _finished_line(out.stdout)
        want = 3 if inputs[0].endswith(".png") else 4
        # One path per file: the first in sorted order (real/... before the links).
        assert int(line[3]) == want, out.stdout
        assert int(line[6]) == 0, out.stdout
    stored = io.store().resolve([path_id(str(p)) for p in [*real, avif]])
    assert sorted(r["path"] for r in stored.values()) == sorted(map(str, [*real, avif]))
    linked = [s / "real" / "zz_link.png", s / "zz_hard.png", s / "loop" / "up" / "zz_hard.png"]
    assert io.store().resolve([path_id(str(p)) for p in linked]) == {}


# --- 6: FIFOs, devices, time limits --------------------------------------------------------
def test_fifo_device_and_socket_fail_alone_and_the_rest_is_indexed(
    io: IoCluster, photos: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "f"
    good = _photos(photos, folder, 2)
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "sock.jpg"))
        out = io.ingest(str(folder), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    line = _finished_line(out.stdout)
    assert (int(line[4]), int(line[6])) == (len(good), 3), out.stdout
    failures = io.producer().failures(line[1])
    assert "FIFO" in failures[str(folder / "pipe.jpg")]
    assert "character device" in failures[str(folder / "zero.jpg")]
    assert "socket" in failures[str(folder / "sock.jpg")]


class _SilentServer:
    """An HTTP server that accepts connections and never answers: a read that never ends."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_stuck_read_is_cut_by_the_task_time_limit(
    io: IoCluster, photos: Path, tmp_path: Path
) -> None:
    server = _SilentServer()
    try:
        url = f"http://127.0.0.1:{server.port}/never.jpg"
        (tmp_path / "list.txt").write_text(url + "\n")
        started = time.monotonic()
        out = io.ingest(str(tmp_path / "list.txt"), timeout=SOFT_LIMIT_S + 90)
        took = time.monotonic() - started
    finally:
        server.close()
    assert out.returncode == 0, out.stdout + out.stderr
    line = _finished_line(out.stdout)
    assert int(line[6]) == 1, out.stdout
    assert f"time limit of {SOFT_LIMIT_S} s exceeded" in io.producer().failures(line[1])[url]
    assert took < SOFT_LIMIT_S + 60


def test_a_task_past_its_hard_time_limit_is_killed_and_reported(
    io: IoCluster, tmp_path: Path
) -> None:
    # No soft limit: the pool process is killed, and the worker's main process reports it.
    env = {
        **io.env,
        "RIS_QUEUES": "cpu,gpu,bulk",
        "RIS_TASK_SOFT_TIME_LIMIT_S": "0",
        "RIS_TASK_TIME_LIMIT_S": "8",
    }
    worker = start_worker("bulk", "hard@%h", env=env, log=io.root / "hard-worker.log")
    server = _SilentServer()
    try:
        url = f"http://127.0.0.1:{server.port}/never.jpg"
        (tmp_path / "list.txt").write_text(url + "\n")
        out = io.ingest(str(tmp_path / "list.txt"), "--queue", "bulk", timeout=150, **env)
    finally:
        server.close()
        stop_worker(worker)
    assert out.returncode == 0, out.stdout + out.stderr
    line = _finished_line(out.stdout)
    assert int(line[6]) == 1, out.stdout
    assert "time limit of 8 s exceeded" in io.producer().failures(line[1])[url]


# --- 7: memory -----------------------------------------------------------------------------
def _pool_peak_rss_kib(worker: subprocess.Popen[bytes]) -> int:
    """VmHWM (peak resident memory) of the worker's pool process."""
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    assert len(children) == 1, children
    status = Path(f"/proc/{children[0]}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1])  # type: ignore[index]


def test_endless_files_do_not_grow_the_worker(io: IoCluster, photos: Path, tmp_path: Path) -> None:
    assert io.worker is not None
    folder = tmp_path / "z"
    paths = [str(p) for p in _photos(photos, folder, 1)]
    for i in range(7):  # one chunk: 7 x 200 MiB (RIS_MAX_FILE_BYTES) was read and held at once
        (folder / f"zero{i}.jpg").symlink_to("/dev/zero")
        paths.append(str(folder / f"zero{i}.jpg"))
    before = _pool_peak_rss_kib(io.worker)
    # Sent as they are: `ris ingest` would send one of these links (one file, several paths).
    producer = io.producer()
    progress = producer.wait(producer.ingest(paths), timeout_s=180)
    assert (progress.indexed + progress.unchanged, progress.failed) == (1, 7)
    grown_mib = (_pool_peak_rss_kib(io.worker) - before) / 1024
    assert grown_mib < 150, f"the worker's peak memory grew by {grown_mib:.0f} MiB"


# --- 8: names that are not UTF-8 -----------------------------------------------------------
def test_a_name_that_is_not_utf8_is_indexed_and_found(
    io: IoCluster, photos: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "u"
    good = _photos(photos, folder, 2)
    odd = os.path.join(os.fsencode(folder), b"\xff\xfe.png")
    with Image.open(good[0]) as img:  # mirrored: an image no other test indexes
        ImageOps.mirror(img).save(tmp_path / "mirrored.png")
    shutil.copy(tmp_path / "mirrored.png", odd)
    text = f"file://{folder}/%FF%FE.png"  # its text form: percent-encoded bytes
    out = io.ingest(str(folder))
    assert out.returncode == 0, out.stdout + out.stderr
    line = _finished_line(out.stdout)
    assert (int(line[4]), int(line[6])) == (len(good) + 1, 0), out.stdout
    row = io.store().resolve([path_id(text)])[path_id(text)]
    assert row["path"] == text
    found = run_cli("search", os.fsdecode(odd), "--top-k", "1", env=io.env).stdout
    assert found.splitlines()[1].endswith(f"  {text}"), found
    # Named directly, with its raw bytes on the command line, it is the same file.
    again = io.ingest(os.fsdecode(odd))
    assert "0 indexed, 1 unchanged, 0 failed" in again.stdout, again.stdout


# --- 9: no worker, unknown ids -------------------------------------------------------------
def test_no_worker_on_the_queue_is_said_and_the_job_resumes(
    io: IoCluster, photos: Path, tmp_path: Path
) -> None:
    assert "--timeout" in run_cli("ingest", "--help").stdout
    image = _photos(photos, tmp_path / "g", 1)[0]
    # No worker consumes "gpu" here.
    for _ in range(2):
        started = time.monotonic()
        out = io.ingest(str(image), "--queue", "gpu", timeout=60)
        assert out.returncode == 3, out.stdout + out.stderr
        assert "no worker consumes queue 'gpu'" in out.stderr
        assert "Traceback" not in out.stderr
        assert time.monotonic() - started < 45
    # The second run waited for the same job instead of enqueueing it again.
    assert "enqueued already; waiting for it" in out.stdout
    job = re.search(r"job (\S+): ", out.stdout)[1]  # type: ignore[index]
    assert io.producer().progress(job).total == 1


def test_result_of_an_unknown_id_is_an_error_at_once(io: IoCluster, photos: Path) -> None:
    started = time.monotonic()
    out = run_cli("result", "q-00000000-nothere", env=io.env, check=False, timeout=60)
    assert time.monotonic() - started < 20
    assert out.returncode != 0
    assert "unknown task id 'q-00000000-nothere'" in out.stdout + out.stderr
    assert "Error" not in out.stderr and "Exception" not in out.stderr, out.stderr
    # A known query that no worker answers (nobody consumes "gpu"): a timeout, in one line.
    image = str(next(iter(sorted(photos.iterdir()))))
    submitted = run_cli("search", image, "--no-wait", "--queue", "gpu", env=io.env).stdout
    out = run_cli("result", submitted.split()[0], "--timeout", "2", env=io.env, check=False)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr
    assert "not answered within 2 s" in out.stderr


# --- 11: interrupted enqueue ---------------------------------------------------------------
def test_a_chunk_sent_twice_is_processed_once(io: IoCluster, photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "d"
    paths = _photos(photos, folder, 12)
    producer = io.producer()
    job = producer.job_id_for([str(folder)], "cpu")
    # A producer stopped after sending chunk 0 and before recording it: the re-run sends it
    # again, under the same task id.
    first = [str(p) for p in paths[:8]]
    chunk = IngestChunk(job_id=job, paths=first, number=0, **producer.target(None))
    producer.ledger.record(chunk)
    send_chunk(producer.app, chunk, "cpu")
    out = io.ingest(str(folder))
    assert out.returncode == 0, out.stdout + out.stderr
    line = _finished_line(out.stdout)
    assert line[1] == job
    # Had chunk 0 run twice, its second run would have found its paths "unchanged".
    assert (int(line[4]), int(line[5])) == (len(paths), 0), out.stdout


def test_ctrl_c_while_enqueueing_reports_and_resumes_exactly(io: IoCluster, tmp_path: Path) -> None:
    listing = tmp_path / "many.txt"
    n = 1000  # 500 chunks of 2: enqueueing takes long enough to be interrupted
    listing.write_text("".join(f"/nonexistent/{i}.jpg\n" for i in range(n)))
    env = {**os.environ, **io.env, "RIS_CHUNK_SIZE": "2"}
    producer = io.producer()
    job = producer.job_id_for([str(listing)], "cpu")
    cli = subprocess.Popen(
        [sys.executable, "-m", "ris.producer.cli", "ingest", str(listing), "--quiet"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def three_chunks_enqueued() -> bool:
        if (producer.tracker.resume_point(job) or (0, 0))[0] >= 3:
            return True
        assert cli.poll() is None, "enqueue not seen"
        return False

    wait_until(three_chunks_enqueued, 60, "three chunks enqueued", every_s=0.005)
    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 130, out + err
    m = re.search(rf"interrupted: job {job}: (\d+) paths enqueued", out)
    assert m, out + err
    chunks, total = producer.tracker.resume_point(job)  # type: ignore[misc]
    assert int(m[1]) == total == 2 * chunks < n
    again = run_cli("ingest", str(listing), "--quiet", "--timeout", "180", env=env)
    assert f"job {job}: resuming after {total} paths already enqueued" in again.stdout
    line = _finished_line(again.stdout)
    assert (int(line[2]), int(line[3]), int(line[6])) == (n, n, n), again.stdout
