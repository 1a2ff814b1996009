"""The whole path on real parts: CLI -> Redis -> Celery worker -> model -> Milvus -> CLI."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ris.common.store import path_id
from ris.producer.grid import TILE, TILE_BACKGROUND, tile_origin
from tests.helpers import (
    WORKERS_HONOUR_PERMISSIONS,
    Backend,
    run_cli,
    start_worker,
    stop_worker,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("worker")


def _altered_copies(photos: Path, dest: Path) -> dict[Path, Path]:
    """A resized (60%), JPEG re-encoded copy of each photo: what users search with."""
    dest.mkdir(exist_ok=True)
    copies = {}
    for src in sorted(photos.iterdir()):
        with Image.open(src) as img:
            rgb = img.convert("RGB")
            small = rgb.resize((max(1, rgb.width * 3 // 5), max(1, rgb.height * 3 // 5)))
            out = dest / f"{src.stem}_copy.jpg"
            small.save(out, "JPEG", quality=75)
        copies[src] = out
    return copies


def test_one_folder_ingested_twice_at_once_stores_each_image_once(
    photos: Path, tmp_path: Path, backend: Backend
) -> None:
    """Two jobs over the same new files at the same time, on two workers: both chunks look
    the paths up as absent; only the chunk holding their claims may insert them (the other
    upserts after it), so each image is stored once and both jobs report it indexed."""
    folder = tmp_path / "twice"
    folder.mkdir()
    for copy in range(3):  # one chunk a job, long enough to embed that both look up first
        for src in sorted(photos.iterdir()):
            shutil.copyfile(src, folder / f"{copy}_{src.name}")
    n = len(list(folder.iterdir()))
    collection = f"twice_{uuid.uuid4().hex[:6]}"

    def ingest(source: str) -> str:
        args = ("--collection", collection, "--quiet", "--timeout", "600")
        return run_cli("ingest", source, *args, env=backend.env).stdout

    second = start_worker("cpu", "cpu-second@%h", env=backend.env or None)
    try:
        # The folder and a glob of it: the same paths in two jobs (one input would resume
        # the first job instead of starting another).
        with ThreadPoolExecutor(2) as pool:
            outs = list(pool.map(ingest, [str(folder), str(folder / "*")]))
    finally:
        stop_worker(second)
    for out in outs:  # a job whose look-up came after the other's write finds them unchanged
        indexed, unchanged, failed = map(
            int, re.findall(r"(\d+) indexed, (\d+) unchanged, (\d+) failed", out)[-1]
        )
        assert indexed + unchanged == n and failed == 0, out
    store = backend.producer.store_for(collection)
    assert len(store.resolve([path_id(str(p)) for p in folder.iterdir()])) == n
    assert store.count() == n
    store.drop()


@pytest.fixture(scope="module")
def indexed(photos: Path, backend: Backend) -> dict[str, object]:
    """Ingest the photo folder once per back end through the real CLI."""
    proc = run_cli("ingest", str(photos), "--quiet", "--timeout", "600", env=backend.env)
    job = re.search(r"job (\w+): finished", proc.stdout)
    assert job, proc.stdout
    return {"job": job.group(1), "stdout": proc.stdout}


def test_ingest_indexes_every_photo(
    indexed: dict[str, object], photos: Path, backend: Backend
) -> None:
    n = len(list(photos.iterdir()))
    assert n >= 20
    assert f"{n} indexed, 0 unchanged, 0 failed, 0 pending" in str(indexed["stdout"])
    stored = backend.producer.store.resolve([path_id(str(p)) for p in photos.iterdir()])
    assert len(stored) == n
    for p in photos.iterdir():
        row = stored[path_id(str(p))]
        assert row["path"] == str(p)
        with Image.open(p) as img:
            assert (row["width"], row["height"]) == img.size
        assert len(row["sha256"]) == 64


def _consumed(metrics: str, collection_id: int, kind: str) -> float:
    """Messages of ``kind`` (insert, delete) the server's data node consumed for a collection."""
    labels = f'collection_id="{collection_id}",msg_type="{kind}"'
    pattern = rf"milvus_datanode_consume_msg_count{{{labels}[^}}]*}} (\S+)"
    return sum(float(v) for v in re.findall(pattern, metrics))


def test_new_images_reach_the_server_without_deletes(
    photos: Path, backend: Backend, request: pytest.FixtureRequest
) -> None:
    """New images are inserted, not upserted: a server counts an upsert's delete against the
    new row's own segment, then rewrites and re-indexes every such segment (a second index
    build of everything ingested). Read from the server's own metrics."""
    import time

    import requests

    if backend.name != "server":
        pytest.skip("Milvus Lite reports no metrics (and does not compact this way)")
    server = request.getfixturevalue("milvus_server")
    collection = f"fresh_{uuid.uuid4().hex[:6]}"
    proc = run_cli(
        "ingest",
        str(photos),
        "--collection",
        collection,
        "--quiet",
        "--timeout",
        "600",
        env=backend.env,
    )
    n = len(list(photos.iterdir()))
    assert f"{n} indexed, 0 unchanged, 0 failed" in proc.stdout
    store = backend.producer.store_for(collection)
    collection_id = store.client.describe_collection(collection)["collection_id"]
    wait_until(
        lambda: _consumed(
            requests.get(server.metrics_url, timeout=10).text, collection_id, "insert"
        ),
        30,
        "the server's data node consuming an insert",
        every_s=0.5,
    )
    time.sleep(2)  # an upsert's delete travels with its insert
    metrics = requests.get(server.metrics_url, timeout=10).text
    assert _consumed(metrics, collection_id, "delete") == 0
    assert store.count() == n
    store.drop()


def test_every_photo_and_its_altered_copy_find_the_original(
    indexed: dict[str, object], photos: Path, tmp_path: Path, backend: Backend
) -> None:
    copies = _altered_copies(photos, tmp_path / "copies")
    queries = [str(p) for p in sorted(photos.iterdir())] + [str(c) for c in copies.values()]
    expected = [str(p) for p in sorted(photos.iterdir())] + [str(o) for o in copies]
    results = backend.producer.search(queries, top_k=5)
    for res, want in zip(results, expected, strict=True):
        assert res.error is None, res.error
        assert res.hits[0].path == want, (res.query, [h.path for h in res.hits])
        scores = [h.score for h in res.hits]
        assert scores == sorted(scores, reverse=True)
    # An exact re-query scores ~1 (cosine of unit vectors).
    assert results[0].hits[0].score == pytest.approx(1.0, abs=1e-3)


def test_reingest_adds_no_rows(indexed: dict[str, object], photos: Path, backend: Backend) -> None:
    before = backend.producer.store.count()
    proc = run_cli("ingest", str(photos), "--quiet", "--timeout", "600", env=backend.env)
    n = len(list(photos.iterdir()))
    assert f"0 indexed, {n} unchanged, 0 failed" in proc.stdout
    assert backend.producer.store.count() == before


def _scores(producer, query: Path) -> dict[str | None, float]:
    return {h.path: h.score for h in producer.search([str(query)], top_k=10)[0].hits}


def test_changed_file_replaces_its_vector(tmp_path: Path, photos: Path, producer) -> None:
    """Whatever else the collection holds: the path's one row follows its new content."""
    target = tmp_path / "changing.png"
    shutil.copyfile(photos / "coffee.png", target)
    run_cli("ingest", str(target), "--quiet")
    first = producer.store.resolve([path_id(str(target))])[path_id(str(target))]
    assert _scores(producer, photos / "coffee.png")[str(target)] > 0.999
    shutil.copyfile(photos / "rocket.jpg", target)  # new content, same path
    proc = run_cli("ingest", str(target), "--quiet")
    assert "1 indexed, 0 unchanged" in proc.stdout
    second = producer.store.resolve([path_id(str(target))])[path_id(str(target))]
    assert second["sha256"] != first["sha256"]
    assert _scores(producer, photos / "rocket.jpg")[str(target)] > 0.999
    assert _scores(producer, photos / "coffee.png").get(str(target), 0.0) < 0.9
    producer.store.delete_ids([path_id(str(target))])


def _bad_inputs(folder: Path, photos: Path) -> dict[str, str]:
    """Bad files beside good ones, each with the reason the job must report."""
    folder.mkdir()
    shutil.copyfile(photos / "coffee.png", folder / "good.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "random.jpg").write_bytes(bytes(range(256)) * 40)
    (folder / "notes.png").write_text("this is a text file, not an image\n")
    data = (photos / "rocket.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "dir.jpg").mkdir()
    (folder / "dangling.jpg").symlink_to(folder / "nowhere.jpg")
    expected = {
        "empty.jpg": "empty file",
        "random.jpg": "not an image",
        "notes.png": "not an image",
        "truncated.jpg": "truncated",
        "dir.jpg": "is a directory",
        "dangling.jpg": "broken symbolic link",
        "missing.jpg": "no such file",
    }
    if WORKERS_HONOUR_PERMISSIONS:
        (folder / "locked.jpg").write_bytes(data)
        (folder / "locked.jpg").chmod(0)
        expected["locked.jpg"] = "permission denied"
    return expected


def test_job_reports_bad_files_and_indexes_the_rest(tmp_path: Path, photos: Path, producer) -> None:
    folder = tmp_path / "mixed"
    expected = _bad_inputs(folder, photos)
    # A list file names every entry, the missing one too (a folder walk would skip dir.jpg).
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{folder / n}\n" for n in ["good.png", *expected]))
    proc = run_cli("ingest", str(listing), "--quiet")
    job = re.search(r"job (\w+): finished", proc.stdout).group(1)  # type: ignore[union-attr]
    assert "1 indexed" in proc.stdout and f"{len(expected)} failed" in proc.stdout

    status = json.loads(run_cli("status", job, "--json").stdout)
    assert status["finished"] and status["indexed"] == 1
    failures = {Path(p).name: reason for p, reason in status["failures"].items()}
    assert set(failures) == set(expected)
    for name, fragment in expected.items():
        assert fragment in failures[name], (name, failures[name])
    assert producer.store.resolve([path_id(str(folder / "good.png"))])


def test_search_no_wait_then_result_with_grid(
    indexed: dict[str, object], photos: Path, tmp_path: Path, backend: Backend
) -> None:
    query = photos / "chelsea.png"
    submitted = run_cli("search", str(query), "--no-wait", env=backend.env).stdout.split()
    task_id = submitted[0]
    grid = tmp_path / "grid.png"
    out = json.loads(run_cli("result", task_id, "--json", env=backend.env).stdout)
    assert out[0]["hits"][0]["path"] == str(query)
    run_cli("result", task_id, "--show", str(grid), env=backend.env)
    # Each tile is the query, then its matches in rank order (six tiles a row).
    cells = [str(query)] + [hit["path"] for hit in out[0]["hits"]]
    with Image.open(grid) as img:
        drawn = np.asarray(img.convert("RGB"), np.float32)
    for k, path in enumerate(cells):
        row, column = divmod(k, 6)
        x, y = tile_origin(row, column)
        tile = drawn[y : y + TILE, x : x + TILE]
        # Photos differ by 29 to 157 on this scale; a tile of its own photo by under 1.
        assert np.abs(tile - _expected_tile(path)).mean() < 5, (k, path)


def _expected_tile(path: str) -> np.ndarray:
    """What the grid shows for ``path``, drawn here: the photo (transparency on white) scaled
    to fit a tile, centred on grey."""
    with Image.open(path) as img:
        rgba = img.convert("RGBA")
    picture = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    picture.thumbnail((TILE, TILE))
    tile = Image.new("RGB", (TILE, TILE), TILE_BACKGROUND)
    tile.paste(picture, ((TILE - picture.width) // 2, (TILE - picture.height) // 2))
    return np.asarray(tile, np.float32)


def test_bad_query_image_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    proc = run_cli("search", str(bad), str(tmp_path / "missing.png"), check=False)
    assert proc.returncode == 1
    assert "error: not an image" in proc.stdout
    assert "No such file" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_delete_by_path_and_prefix(tmp_path: Path, photos: Path, backend: Backend) -> None:
    folder = tmp_path / "to_delete"
    folder.mkdir()
    for name in ("coins.png", "moon.png", "page.png"):
        shutil.copyfile(photos / name, folder / name)
    run_cli("ingest", str(folder), "--quiet", env=backend.env)
    ids = [path_id(str(p)) for p in folder.iterdir()]
    store = backend.producer.store
    assert len(store.resolve(ids)) == 3
    run_cli("delete", str(folder / "coins.png"), env=backend.env)
    assert len(store.resolve(ids)) == 2
    run_cli("delete", "--prefix", str(folder), env=backend.env)
    assert store.resolve(ids) == {}


def test_a_second_collection_is_indexed_and_searched_apart(
    photos: Path, tmp_path: Path, producer
) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        shutil.copy(photos / name, folder / name)
    other = "second_collection"
    producer.drop_collection(other)
    run_cli("ingest", str(folder), "--collection", other, "--quiet")
    assert producer.store_for(other).count() == 2
    out = run_cli("search", str(photos / "coffee.png"), "--collection", other, "-k", "2").stdout
    hits = [line for line in out.splitlines() if "score=" in line]
    assert len(hits) == 2 and hits[0].endswith(str(folder / "coffee.png"))


def test_a_query_that_fails_on_the_worker_is_reported_with_the_others(
    indexed: dict[str, object], photos: Path, backend: Backend
) -> None:
    """The worker refuses to search a collection built by another model: that query's error is
    shown, the query beside it is answered, and the exit status says something failed."""
    from ris.common.store import ImageStore

    settings = backend.producer.settings.model_copy(update={"collection": "built_by_resnet"})
    other = ImageStore(settings, "resnet50", 2048)
    try:
        out = run_cli(
            "search",
            str(photos / "coffee.png"),
            "--collection",
            "built_by_resnet",
            check=False,
            env=backend.env,
        )
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert "error: search failed" in out.stdout and "resnet50" in out.stdout, out.stdout
    finally:
        other.drop()
    both = run_cli(
        "search", str(photos / "coffee.png"), str(photos / "nope.png"), check=False, env=backend.env
    )
    assert both.returncode == 1
    assert re.search(r"score=1\.0000 .*coffee\.png", both.stdout), both.stdout
    assert "nope.png" in both.stdout and "error:" in both.stdout


def test_info_shows_the_index_milvus_built_and_the_workers() -> None:
    info = json.loads(run_cli("info").stdout)
    assert info["index"]["index_type"] == "IVF_FLAT" and info["index"]["metric_type"] == "IP"
    assert info["index"]["params"]["nlist"] == "1024"
    assert any(name.startswith("cpu-main@") for name in info["workers"])


def test_rows_read_back_as_written(backend: Backend) -> None:
    """The packed writes (ris.common.store.write) store every field of every row exactly; new
    ids go in by insert, and a write of stored ids replaces them, on Lite and on a server."""
    from dataclasses import replace

    from ris.common.contracts import ImageRow

    name = f"rows_{uuid.uuid4().hex[:8]}"
    store = backend.producer.store_for(name, create=True)
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((300, store.dim)).astype(np.float32)
    rows = [
        ImageRow(
            id=path_id(f"/photos/ünï {i}'%_.jpg"),
            vector=vectors[i],
            path=f"/photos/ünï {i}'%_.jpg",
            sha256=f"{i:064x}",
            width=i + 1,
            height=2**31 - 1 - i,
            ingested_at=1_790_000_000_000 + i,
            size=-1 if i % 2 else 2**40 + i,
            mtime_ns=-1 if i % 2 else 2**62 + i,
        )
        for i in range(len(vectors))
    ]
    try:
        # Stale values first (inserted: new ids): the second write must replace them, not add
        # rows, and insert the other half.
        stale = [replace(r, width=0, vector=-r.vector) for r in rows[:150]]
        store.upsert(stale, new_ids={r.id for r in stale})
        # A new id twice in one write is stored once.
        store.upsert([rows[-1], rows[-1]], new_ids={rows[-1].id})
        assert store.count() == 151
        store.upsert(rows, new_ids={r.id for r in rows[150:-1]})
        stored = {
            int(r["id"]): r
            for r in store.client.query(
                name,
                filter=f"id in {[r.id for r in rows]}",
                output_fields=["*"],
                consistency_level="Strong",
            )
        }
        assert store.count() == len(rows) == len(stored)
        for row in rows:
            got = stored[row.id]
            assert np.array_equal(np.asarray(got["vector"], dtype=np.float32), row.vector)
            for field in ("path", "sha256", "width", "height", "ingested_at", "size", "mtime_ns"):
                assert got[field] == getattr(row, field), (field, row.path)
    finally:
        backend.producer.drop_collection(name)
