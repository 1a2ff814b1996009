"""Keeping an index in step with a library (issue 13), on real parts: search filters with
hostile folder names, batch queries to CSV, `ris sync`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from PIL import Image

from tests.api_server import start_server, wait_job
from tests.helpers import WORKERS_HONOUR_PERMISSIONS, run_cli

pytestmark = pytest.mark.usefixtures("worker")

# Folder names a LIKE pattern or a naive string splice gets wrong: "50%_off" as a LIKE
# pattern also matches "5000_off"; "dir" as a prefix also matches "dir2"; quotes and
# backslashes end or escape a string literal.
HOSTILE = ['quo"te', "it's", "50%_off", "5000_off", "back\\slash", "back", "dir", "dir2", "a_b"]


def _collection_env() -> dict[str, str]:
    return {"RIS_COLLECTION": f"lib_{uuid.uuid4().hex[:8]}"}


@pytest.fixture(scope="module")
def library(tmp_root: Path, photos: Path) -> dict[str, object]:
    """Two photos in each hostile folder, indexed in a collection of their own."""
    root = tmp_root / "library"
    originals = sorted(photos.iterdir())
    for n, name in enumerate(HOSTILE):
        (root / name).mkdir(parents=True)
        for src in originals[2 * n : 2 * n + 2]:
            shutil.copy(src, root / name / src.name)
    env = _collection_env()
    run_cli("ingest", str(root), "--quiet", "--timeout", "600", env=env)
    return {"root": root, "env": env}


def _search_json(query: Path, env: dict[str, str], *extra: str) -> list[dict[str, object]]:
    proc = run_cli("search", str(query), "--top-k", "100", "--json", *extra, env=env)
    [result] = json.loads(proc.stdout)
    assert result["error"] is None, result
    return list(result["hits"])


def test_under_matches_exactly_the_folder_with_hostile_names(library: dict[str, object]) -> None:
    root, env = Path(str(library["root"])), dict(library["env"])  # type: ignore[call-overload]
    query = next((root / "dir").iterdir())
    everything = _search_json(query, env)
    assert len(everything) == 2 * len(HOSTILE)
    for name in HOSTILE:
        hits = _search_json(query, env, "--under", str(root / name))
        assert sorted(h["path"] for h in hits) == sorted(str(p) for p in (root / name).iterdir()), (
            name
        )


def test_min_size_and_ingested_dates_filter(library: dict[str, object]) -> None:
    root, env = Path(str(library["root"])), dict(library["env"])  # type: ignore[call-overload]
    files = sorted(p for d in root.iterdir() for p in d.iterdir())
    widths = {str(p): Image.open(p).width for p in files}
    cut = sorted(widths.values())[len(widths) // 2]
    hits = _search_json(files[0], env, "--min-width", str(cut))
    assert sorted(h["path"] for h in hits) == sorted(p for p, w in widths.items() if w >= cut)
    assert _search_json(files[0], env, "--ingested-after", "2999-01-01") == []
    assert len(_search_json(files[0], env, "--ingested-before", "2999-01-01T00:00:00")) == len(
        files
    )
    assert _search_json(files[0], env, "--ingested-before", "2000-01-01") == []


def test_bad_filter_is_one_clear_line(library: dict[str, object], photos: Path) -> None:
    env = dict(library["env"])  # type: ignore[call-overload]
    query = str(next(photos.iterdir()))
    proc = run_cli("search", query, "--ingested-after", "yesterday", env=env, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: not an ISO date or date-time: 'yesterday'"
    proc = run_cli("search", query, "--under", "a\nb", env=env, check=False)
    assert proc.returncode == 1 and "line break" in proc.stderr, proc.stderr


def test_api_search_takes_the_same_filters(library: dict[str, object], tmp_path: Path) -> None:
    root, env = Path(str(library["root"])), dict(library["env"])  # type: ignore[call-overload]
    server = start_server("127.0.0.1", tmp_path / "api.log", env)
    try:
        query = next((root / "50%_off").iterdir())
        with open(query, "rb") as fh:
            response = server.call(
                "POST",
                "/api/search?wait=true&top_k=100",
                files={"file": ("q.png", fh.read())},
                data={"under": str(root / "50%_off"), "min_width": "1"},
            )
        assert response.status_code == 200, response.text
        paths = sorted(h["path"] for h in response.json()["hits"])
        assert paths == sorted(str(p) for p in (root / "50%_off").iterdir())
        response = server.call(
            "POST",
            "/api/search",
            files={"file": ("q.png", query.read_bytes())},
            data={"ingested_after": "not a date"},
        )
        assert response.status_code == 422 and "not an ISO date" in response.text
    finally:
        server.stop()


def test_batch_queries_write_a_csv(library: dict[str, object], tmp_path: Path) -> None:
    root, env = Path(str(library["root"])), dict(library["env"])  # type: ignore[call-overload]
    queries = tmp_path / "queries"
    queries.mkdir()
    for p in sorted((root / "dir").iterdir()) + sorted((root / 'quo"te').iterdir()):
        shutil.copy(p, queries / p.name)
    (queries / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "results.csv"
    proc = run_cli("search", str(queries), "--top-k", "3", "--out", str(out), env=env, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one query failed, and says so
    assert "broken.jpg" in proc.stdout
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_query: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_query.setdefault(os.path.basename(row["query"]), []).append(row)
    assert len(by_query) == 5
    assert by_query["broken.jpg"][0]["error"] and not by_query["broken.jpg"][0]["match"]
    for name, matches in by_query.items():
        if name == "broken.jpg":
            continue
        assert [m["rank"] for m in matches] == ["1", "2", "3"]
        # Each query is a copy of an indexed photo: that photo comes first.
        assert os.path.basename(matches[0]["match"]) == name
        assert float(matches[0]["score"]) == pytest.approx(1.0, abs=1e-3)


def _counts(stdout: str) -> str:
    line = next(x for x in stdout.splitlines() if x.startswith("sync: "))
    return line.removeprefix("sync: ")


def _rows(env: dict[str, str]) -> int:
    proc = run_cli("info", env=env)
    return int(json.loads(proc.stdout)["rows"])


def test_sync_indexes_new_and_changed_and_deletes_gone(tmp_path: Path, photos: Path) -> None:
    env = _collection_env()
    originals = sorted(photos.iterdir())
    root = tmp_path / "lib%_a"  # a LIKE pattern would also match its sibling "libXYa"
    sibling = tmp_path / "libXYa"
    for folder, srcs in ((root, originals[:5]), (sibling, originals[5:7])):
        folder.mkdir()
        for src in srcs:
            shutil.copy(src, folder / src.name)
    run_cli("ingest", str(sibling), "--quiet", env=env)
    proc = run_cli("sync", str(root), "--quiet", env=env)
    assert _counts(proc.stdout) == "5 new, 0 changed, 0 unchanged, 0 gone"
    assert "5 indexed, 0 unchanged, 0 failed" in proc.stdout
    assert _counts(run_cli("sync", str(root), env=env).stdout) == (
        "0 new, 0 changed, 5 unchanged, 0 gone"
    )

    files = sorted(root.iterdir())
    files[0].unlink()  # gone
    shutil.copy(originals[9], files[1])  # changed content, same name
    os.utime(files[2], ns=(files[2].stat().st_atime_ns, files[2].stat().st_mtime_ns + 10**9))
    shutil.copy(originals[10], root / "added.png")  # new
    (sibling / originals[5].name).unlink()  # outside the root: its row must stay

    proc = run_cli("sync", str(root), "--dry-run", env=env)
    assert _counts(proc.stdout) == "1 new, 2 changed, 2 unchanged, 1 gone"
    assert f"gone {files[0]}" in proc.stdout
    assert _rows(env) == 7  # a dry run changes nothing

    proc = run_cli("sync", str(root), "--quiet", env=env)
    assert _counts(proc.stdout) == "1 new, 2 changed, 2 unchanged, 1 gone"
    # The touched file has the same content: not re-embedded, only its stat refreshed.
    assert "2 indexed, 1 unchanged, 0 failed" in proc.stdout
    assert _rows(env) == 7 - 1 + 1
    hits = _search_json(originals[9], env, "--under", str(root))
    assert hits[0]["path"] == str(files[1])
    assert _counts(run_cli("sync", str(root), env=env).stdout) == (
        "0 new, 0 changed, 5 unchanged, 0 gone"
    )


@pytest.mark.skipif(not WORKERS_HONOUR_PERMISSIONS, reason="workers run as root with all caps")
def test_worker_skips_a_file_whose_size_and_mtime_match(tmp_path: Path, photos: Path) -> None:
    env = _collection_env()
    folder = tmp_path / "stat"
    folder.mkdir()
    src = sorted(photos.iterdir())[0]
    shutil.copy(src, folder / src.name)
    run_cli("ingest", str(folder), "--quiet", env=env)
    (folder / src.name).chmod(0)  # unreadable now, but size and mtime unchanged
    try:
        proc = run_cli("ingest", str(folder), "--quiet", env=env)
        assert "0 indexed, 1 unchanged, 0 failed" in proc.stdout, proc.stdout
    finally:
        (folder / src.name).chmod(0o644)


def test_sync_sees_the_files_ingest_indexed_through_linked_folders(
    tmp_path: Path, photos: Path
) -> None:
    """`ris sync` walks like `ris ingest`: into linked folders, each folder once (a loop too)."""
    env = _collection_env()
    originals = sorted(photos.iterdir())
    root, elsewhere = tmp_path / "lib", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    shutil.copy(originals[0], root / originals[0].name)
    shutil.copy(originals[1], elsewhere / originals[1].name)
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(root, target_is_directory=True)
    assert "2 indexed" in run_cli("ingest", str(root), "--quiet", env=env).stdout
    assert _counts(run_cli("sync", str(root), env=env).stdout) == (
        "0 new, 0 changed, 2 unchanged, 0 gone"
    )
    shutil.copy(originals[2], elsewhere / "added.png")  # new, behind the link
    proc = run_cli("sync", str(root), "--quiet", env=env)
    assert _counts(proc.stdout) == "1 new, 0 changed, 2 unchanged, 0 gone"
    assert _rows(env) == 3


def test_sync_refuses_a_missing_root(tmp_path: Path) -> None:
    proc = run_cli("sync", str(tmp_path / "unmounted"), env=_collection_env(), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {tmp_path / 'unmounted'}: not a folder (nothing synced)"


def test_duplicates_groups_generated_copies_among_distractors(tmp_path: Path, photos: Path) -> None:
    from PIL import ImageOps

    env = _collection_env()
    root = tmp_path / "dups"
    root.mkdir()
    srcs = sorted(photos.iterdir())
    expected = []
    for src in srcs[:3]:  # originals, each with three altered copies
        with Image.open(src) as img:
            rgb = ImageOps.exif_transpose(img).convert("RGB")
        group = [root / f"{src.stem}.png", root / f"{src.stem}_small.jpg"]
        group += [root / f"{src.stem}_q20.jpg", root / f"{src.stem}_flip.jpg"]
        rgb.save(group[0])
        rgb.resize((rgb.width // 2, rgb.height // 2)).save(group[1], quality=85)
        rgb.save(group[2], quality=20)
        ImageOps.mirror(rgb).save(group[3], quality=85)
        expected.append(sorted(map(str, group)))
    for src in srcs[3:]:  # distractors: every other photo, once
        shutil.copy(src, root / src.name)
    outside = tmp_path / "outside"  # a copy outside --under: not part of any group
    outside.mkdir()
    shutil.copy(srcs[0], outside / srcs[0].name)
    run_cli("ingest", str(root), str(outside), "--quiet", env=env)

    out = tmp_path / "groups.json"
    proc = run_cli("duplicates", "--under", str(root), "--out", str(out), "--quiet", env=env)
    assert proc.stdout.startswith("3 groups (12 images) among "), proc.stdout
    assert sorted(json.loads(out.read_text())) == sorted(expected)

    # Without --under, the copy outside joins its group; CSV output.
    out = tmp_path / "groups.csv"
    run_cli("duplicates", "--out", str(out), "--quiet", env=env)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row["path"])
    assert sorted(map(sorted, groups.values())) == sorted(
        sorted([*g, str(outside / srcs[0].name)])
        if g[0].startswith(str(root / srcs[0].stem))
        else g
        for g in expected
    )


def test_sync_on_a_collection_created_before_the_stat_fields(tmp_path: Path, photos: Path) -> None:
    from pymilvus import DataType, MilvusClient

    from ris.common.models import get_spec
    from ris.common.settings import get_settings
    from ris.common.store import BoundedClient

    env = _collection_env()
    settings = get_settings()
    spec = get_spec(settings.model)
    client = BoundedClient(settings)
    # The schema as it was before size and mtime_ns.
    schema = MilvusClient.create_schema(
        auto_id=False,
        description=json.dumps({"model": spec.name, "dim": spec.dim, "metric": settings.metric}),
    )
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=spec.dim)
    schema.add_field("path", DataType.VARCHAR, max_length=4096)
    schema.add_field("sha256", DataType.VARCHAR, max_length=64)
    schema.add_field("width", DataType.INT32)
    schema.add_field("height", DataType.INT32)
    schema.add_field("ingested_at", DataType.INT64)
    client.create_collection(env["RIS_COLLECTION"], schema)
    client.close()

    root = tmp_path / "old"
    root.mkdir()
    for src in sorted(photos.iterdir())[:3]:
        shutil.copy(src, root / src.name)
    proc = run_cli("sync", str(root), "--quiet", env=env)
    assert _counts(proc.stdout) == "3 new, 0 changed, 0 unchanged, 0 gone"
    assert "3 indexed, 0 unchanged, 0 failed" in proc.stdout
    proc = run_cli("sync", str(root), "--quiet", env=env)
    # No stored stat: every file goes to the workers, which hash it and find it unchanged.
    assert _counts(proc.stdout) == "0 new, 3 changed, 0 unchanged, 0 gone"
    assert "0 indexed, 3 unchanged, 0 failed" in proc.stdout
    assert "`ris drop --yes` and ingest again" in proc.stderr
    (root / sorted(photos.iterdir())[0].name).unlink()
    proc = run_cli("sync", str(root), "--quiet", env=env)
    assert _counts(proc.stdout) == "0 new, 2 changed, 0 unchanged, 1 gone"
    assert _rows(env) == 2


def test_api_sync(tmp_path: Path, photos: Path) -> None:
    env = _collection_env() | {"RIS_ALLOWED_ROOTS": str(tmp_path)}
    root = tmp_path / "api sync"
    root.mkdir()
    for src in sorted(photos.iterdir())[:3]:
        shutil.copy(src, root / src.name)
    server = start_server("127.0.0.1", tmp_path / "api.log", env)
    try:
        dry = server.call("POST", "/api/sync", json={"roots": [str(root)], "dry_run": True})
        assert dry.status_code == 200, dry.text
        assert dry.json() | {"job": None} == {
            "new": 3, "changed": 0, "unchanged": 0, "deleted": 0, "gone": 0, "job": None,
            "note": None,
        }  # fmt: skip
        done = server.call("POST", "/api/sync", json={"roots": [str(root)]}).json()
        assert wait_job(server, done["job"]["job_id"])["indexed"] == 3
        next(root.iterdir()).unlink()
        again = server.call("POST", "/api/sync", json={"roots": [str(root)]}).json()
        assert (again["unchanged"], again["gone"], again["deleted"], again["job"]) == (
            2,
            1,
            1,
            None,
        )
        outside = server.call("POST", "/api/sync", json={"roots": [str(photos)]})
        assert outside.status_code == 403, outside.text
        missing = server.call("POST", "/api/sync", json={"roots": [str(tmp_path / "nope")]})
        assert missing.status_code == 422 and "not a folder" in missing.text
    finally:
        server.stop()
