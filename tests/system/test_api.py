"""``ris serve`` for real: a uvicorn process on a free port, the session's worker, Milvus Lite.

The API reads only under its own RIS_ALLOWED_ROOTS (a copy of the photos); the worker reads
anywhere, so ids whose paths lie outside the API's root exist in the collection and must
still never be served.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from ris.common.store import path_id
from tests.api_server import Server, launch, start_server, wait_job, wait_task
from tests.helpers import free_port

pytestmark = pytest.mark.usefixtures("worker")

UPLOAD_LIMIT = 2_000_000
PIXEL_LIMIT = 20_000_000
TOKEN = "s3cret-token-for-tests"
API_COLLECTION = f"api_{uuid.uuid4().hex[:8]}"


def non_loopback_address() -> tuple[str, str]:
    """(address to bind, address to connect): a local non-loopback IPv4 address where the
    machine has one (no packet is sent), else all interfaces reached through loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            address = s.getsockname()[0]
        except OSError:
            address = ""
    if address and not address.startswith("127."):
        return address, address
    return "0.0.0.0", "127.0.0.1"


def altered_copy(src: Path, dest: Path) -> Path:
    """A 60 % resized, JPEG re-encoded copy: what users search with."""
    with Image.open(src) as img:
        rgb = img.convert("RGB")
        rgb.resize((rgb.width * 3 // 5, rgb.height * 3 // 5)).save(dest, "JPEG", quality=75)
    return dest


@pytest.fixture(scope="module")
def api_root(tmp_root: Path, photos: Path) -> Path:
    """The only folder the API may read: a copy of the photos."""
    root = tmp_root / "api-root"
    shutil.copytree(photos, root / "photos", dirs_exist_ok=True)
    return root


@pytest.fixture(scope="module")
def server(tmp_root: Path, api_root: Path) -> Iterator[Server]:
    env = {
        # A collection of its own: other test modules count the rows of the session's one.
        "RIS_COLLECTION": API_COLLECTION,
        "RIS_ALLOWED_ROOTS": str(api_root),
        "RIS_API_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "RIS_API_MAX_UPLOAD_PIXELS": str(PIXEL_LIMIT),
    }
    server = start_server("127.0.0.1", tmp_root / "api.log", env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def indexed(server: Server, api_root: Path) -> dict[str, Any]:
    """The photos under the API's root, indexed through POST /api/ingest."""
    response = server.call("POST", "/api/ingest", json={"inputs": [str(api_root / "photos")]})
    assert response.status_code == 202, response.text
    return wait_job(server, response.json()["job_id"])


def test_ingest_job_and_its_progress_stream(
    server: Server, indexed: dict[str, Any], api_root: Path, tmp_path: Path
) -> None:
    n_photos = len(list((api_root / "photos").iterdir()))
    assert indexed["total"] == n_photos and indexed["failed"] == 0
    assert indexed["indexed"] + indexed["unchanged"] == n_photos

    # A new folder with a broken file: follow it on the event stream until it finishes.
    folder = api_root / "more"
    folder.mkdir(exist_ok=True)
    for src in sorted((api_root / "photos").iterdir())[:3]:
        altered_copy(src, folder / f"{src.stem}_small.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    job = server.call("POST", "/api/ingest", json={"inputs": [str(folder)]}).json()
    assert job["total"] == 4
    events = []
    with server.call("GET", f"/api/jobs/{job['job_id']}/events", stream=True) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    assert events and events[-1]["finished"], events  # the stream ends when the job does
    processed = [e["processed"] for e in events]
    assert processed == sorted(processed) and processed[-1] == 4
    final = server.call("GET", f"/api/jobs/{job['job_id']}").json()
    assert final["indexed"] + final["unchanged"] == 3 and final["failed"] == 1
    assert list(final["failures"]) == [str(folder / "broken.jpg")]
    assert server.call("GET", "/api/jobs/no-such-job").status_code == 404
    bad_list = api_root / "bad.txt"
    bad_list.write_bytes(b"\xff\xfe\x00 not text")
    response = server.call("POST", "/api/ingest", json={"inputs": [str(bad_list)]})
    assert response.status_code == 422 and "cannot read the inputs" in response.text


def test_upload_finds_the_original_first(
    server: Server, indexed: dict[str, Any], api_root: Path, tmp_path: Path
) -> None:
    for name in ("chelsea.png", "rocket.jpg"):
        original = api_root / "photos" / name
        query = altered_copy(original, tmp_path / f"{original.stem}_q.jpg")
        with open(query, "rb") as fh:
            response = server.call(
                "POST", "/api/search?top_k=5", files={"file": (query.name, fh, "image/jpeg")}
            )
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        assert response.headers["location"] == f"/api/tasks/{task_id}"
        task = wait_task(server, task_id)
        assert task["state"] == "SUCCESS", task
        assert len(task["hits"]) == 5 and task["hits"][0]["path"] == str(original), task
        assert task["hits"][0]["score"] > 0.9 and task["hits"][0]["rank"] == 1
        assert int(task["hits"][0]["id"]) == path_id(str(original))

    # wait=true answers with the hits at once.
    with open(query, "rb") as fh:
        response = server.call(
            "POST", "/api/search?wait=true", files={"file": ("q.jpg", fh, "image/jpeg")}
        )
    assert response.status_code == 200, response.text
    assert response.json()["hits"][0]["path"] == str(original)

    # By path, under the root: the same answer.
    response = server.call(
        "POST", "/api/search?wait=true&top_k=3", data={"source": str(api_root / "photos" / name)}
    )
    assert response.status_code == 200, response.text
    assert response.json()["hits"][0]["path"] == str(original)


def test_concurrent_searches_each_get_their_own_answer(
    server: Server, indexed: dict[str, Any], api_root: Path, tmp_path: Path
) -> None:
    """wait=true requests run in the server's thread pool at once; Celery's result backend is
    per thread, so no answer may reach the wrong request."""
    from concurrent.futures import ThreadPoolExecutor

    # Not the first three: the ingest test indexes resized copies of those.
    originals = sorted((api_root / "photos").iterdir())[3:11]
    queries = [altered_copy(o, tmp_path / f"{o.stem}_q.jpg") for o in originals]

    def ask(query: Path) -> str:
        response = requests.post(
            f"{server.url}/api/search?wait=true&top_k=3",
            files={"file": (query.name, query.read_bytes(), "image/jpeg")},
            timeout=300,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["hits"][0]["path"])

    with ThreadPoolExecutor(len(queries)) as pool:
        firsts = list(pool.map(ask, queries))
    assert firsts == [str(o) for o in originals]


def test_thumbnail_and_full_size_of_an_indexed_id(
    server: Server, indexed: dict[str, Any], api_root: Path
) -> None:
    original = api_root / "photos" / "astronaut.png"
    image_id = path_id(str(original))
    response = server.call("GET", f"/api/images/{image_id}/thumbnail")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == 256
    full = server.call("GET", f"/api/images/{image_id}")
    assert full.status_code == 200 and full.headers["content-type"] == "image/png"
    assert full.content == original.read_bytes()
    assert server.call("GET", "/api/images/12345/thumbnail").status_code == 404
    assert server.call("GET", "/api/images/x/thumbnail").status_code == 422
    missing = server.call("GET", f"/api/images/{image_id}/thumbnail?collection=nope_nothing")
    assert missing.status_code == 404


def test_a_path_outside_the_allowed_roots_is_never_served(
    server: Server, indexed: dict[str, Any], api_root: Path, photos: Path, producer, tmp_path: Path
) -> None:
    # An id in the collection whose path lies outside the API's root (the worker may read it).
    outside = tmp_path / "coffee.png"
    shutil.copy(photos / "coffee.png", outside)
    producer.wait(producer.ingest([str(outside)], collection=API_COLLECTION), timeout_s=300)
    stored = producer.store_for(API_COLLECTION).resolve([path_id(str(outside))])
    assert path_id(str(outside)) in stored
    refused = server.call("GET", f"/api/images/{path_id(str(outside))}/thumbnail")
    assert refused.status_code == 403 and "outside the allowed roots" in refused.text
    assert server.call("GET", f"/api/images/{path_id(str(outside))}").status_code == 403

    # A file indexed under the root, then swapped for a symlink that escapes it.
    secret = tmp_path / "secret.png"
    shutil.copy(photos / "horse.png", secret)
    swapped = api_root / "swapped.png"
    shutil.copy(photos / "coins.png", swapped)
    job = server.call("POST", "/api/ingest", json={"inputs": [str(swapped)]}).json()
    assert wait_job(server, job["job_id"])["failed"] == 0
    assert server.call("GET", f"/api/images/{path_id(str(swapped))}/thumbnail").ok
    swapped.unlink()
    swapped.symlink_to(secret)
    assert server.call("GET", f"/api/images/{path_id(str(swapped))}/thumbnail").status_code == 403

    # Paths from requests: query images, ingest inputs ('..' and globs included).
    for source in (str(outside), "/etc/passwd", f"{api_root}/../photos/coffee.png"):
        response = server.call("POST", "/api/search", data={"source": source})
        assert response.status_code == 403, (source, response.text)
    for inputs in ([str(photos)], [f"{api_root}/../photos"], [f"{photos}/*.png"], ["/etc"]):
        response = server.call("POST", "/api/ingest", json={"inputs": inputs})
        assert response.status_code == 403, (inputs, response.text)
    # A URL is refused while no prefix allows it (RIS_ALLOWED_ROOTS restricts the API).
    response = server.call("POST", "/api/search", data={"source": "http://127.0.0.1:1/x.jpg"})
    assert response.status_code == 403


def test_oversize_and_non_image_uploads_are_refused(server: Server, tmp_path: Path) -> None:
    big = os.urandom(UPLOAD_LIMIT + 200_000)
    response = server.call("POST", "/api/search", files={"file": ("big.jpg", big, "image/jpeg")})
    assert response.status_code == 413 and "limit" in response.text

    # Chunked, with no Content-Length to trust: refused once the count passes the limit.
    boundary = "ris-test-boundary"
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=file; filename=big.jpg\r\n"
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def chunks() -> Iterator[bytes]:
        yield head
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        response = server.call(
            "POST",
            "/api/search",
            data=chunks(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert response.status_code == 413, response.text
    except requests.ConnectionError:
        pass  # the server may close the connection while the client is still sending

    # A decompression bomb: a small file, too many pixels.
    bomb = io.BytesIO()
    Image.new("L", (6000, 6000)).save(bomb, "PNG")
    assert len(bomb.getvalue()) < UPLOAD_LIMIT
    response = server.call(
        "POST", "/api/search", files={"file": ("bomb.png", bomb.getvalue(), "image/png")}
    )
    assert response.status_code == 413 and "pixels" in response.text

    # The content type is checked by decoding, not taken from the header.
    fake = b"#!/bin/sh\necho this is not an image\n" * 10
    response = server.call("POST", "/api/search", files={"file": ("x.jpg", fake, "image/jpeg")})
    assert response.status_code == 415 and "not an image" in response.text
    assert server.call("GET", "/api/config").status_code == 200  # still serving


def test_health_docs_and_page(server: Server) -> None:
    health = server.call("GET", "/api/health")
    assert health.status_code == 200, health.text
    assert health.json()["redis"] and health.json()["milvus"] and health.json()["workers"] >= 1
    paths = server.call("GET", "/openapi.json").json()["paths"]
    for path in ("/api/search", "/api/tasks/{task_id}", "/api/ingest", "/api/jobs/{job_id}"):
        assert path in paths, path
    assert "/api/images/{image_id}/thumbnail" in paths and "/api/health" in paths
    page = server.call("GET", "/")
    assert page.status_code == 200 and "<title>ris" in page.text
    assert server.call("GET", "/static/app.js").status_code == 200
    # CORS is off by default: no header invites another origin's page.
    cors = server.call("GET", "/api/config", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in cors.headers


def test_off_loopback_needs_a_token(tmp_root: Path) -> None:
    bind, connect = non_loopback_address()
    # Without RIS_API_TOKEN the server refuses to start, saying what to set.
    proc, port = launch(bind, tmp_root / "api-refused.log", {"RIS_API_TOKEN": ""})
    assert proc.wait(60) != 0
    message = (tmp_root / "api-refused.log").read_text()
    assert "refusing to serve the API" in message and "RIS_API_TOKEN" in message
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{connect}:{port}/api/config", timeout=5)

    server = start_server(
        bind, tmp_root / "api-token.log", {"RIS_API_TOKEN": TOKEN}, connect_host=connect
    )
    try:
        for path in ("/api/jobs/some-job", "/api/tasks/q-00000000-00000000", "/api/images/1"):
            response = server.call("GET", path, auth=False)
            assert response.status_code == 401, (path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            wrong = server.call("GET", path, auth=False, headers={"Authorization": "Bearer no"})
            assert wrong.status_code == 401
        upload = server.call(
            "POST", "/api/search", auth=False, files={"file": ("x.png", b"x", "image/png")}
        )
        assert upload.status_code == 401
        # Refused before the body is read: headers announcing 1 MB, no body sent.
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(
                b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
            )
            assert raw.recv(100).startswith(b"HTTP/1.1 401"), "the server waited for the body"
        assert server.call("GET", "/api/jobs/some-job").status_code == 404  # token: let in
        task = server.call("GET", "/api/tasks/q-00000000-00000000")
        assert task.status_code == 200 and task.json()["state"] == "PENDING"
        assert server.call("GET", "/api/config", auth=False).json()["token_required"] is True
        assert server.call("GET", "/", auth=False).status_code == 200  # the page itself
    finally:
        server.stop()


def test_web_page_indexes_a_folder_and_finds_the_original(
    server: Server, api_root: Path, photos: Path, tmp_root: Path, tmp_path: Path
) -> None:
    """Debian's chromium, headless, driven by Playwright: index a folder on the page, watch
    the bar fill, drop a query image, see the original first, open it full size."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no chromium (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    folder = api_root / "web"
    folder.mkdir(exist_ok=True)
    for name in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "horse.png"):
        shutil.copy(photos / name, folder / name)
    original = folder / "chelsea.png"
    query = altered_copy(original, tmp_path / "chelsea_query.jpg")

    with sync_api.sync_playwright() as pw:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # root: no user namespaces
        browser = pw.chromium.launch(executable_path=chromium, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url + "/")
            page.wait_for_selector("body[data-ready=yes]")
            page.fill("#ingest-path", str(folder))
            page.click("#ingest-form button")
            page.wait_for_selector("#ingest-status[data-finished=yes]", timeout=300_000)
            bar = page.eval_on_selector("#ingest-progress", "b => [b.value, b.max]")
            assert bar == [5, 5], bar
            assert "5/5 processed" in page.inner_text("#ingest-status")

            page.set_input_files("#file", str(query))
            page.wait_for_selector(".hit[data-rank='1']", timeout=120_000)
            page.wait_for_function(
                "[...document.querySelectorAll('.hit')].every(c => c.dataset.loaded)"
            )
            first = page.get_attribute(".hit[data-rank='1']", "data-path")
            # The photos exist at several paths in this session; any of them is the original.
            assert first and Path(first).read_bytes() == original.read_bytes(), first
            assert page.eval_on_selector(".hit[data-rank='1'] img", "i => i.naturalWidth") > 0
            assert "score" in page.inner_text(".hit[data-rank='1']")
            page.screenshot(path=str(tmp_root / "web_page.png"), full_page=True)

            page.click(".hit[data-rank='1']")
            page.wait_for_function("document.getElementById('viewer-img').naturalWidth > 0")
            assert page.eval_on_selector("#viewer", "d => d.open")
            width = page.eval_on_selector("#viewer-img", "i => i.naturalWidth")
            with Image.open(first) as img:
                assert width == img.width  # full size, not the thumbnail
        finally:
            browser.close()


def test_health_reports_an_unreachable_redis(tmp_root: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    server = start_server("127.0.0.1", tmp_root / "api-dead.log", {"RIS_REDIS_URL": dead})
    try:
        started = time.monotonic()
        health = server.call("GET", "/api/health")
        assert health.status_code == 503, health.text
        body = health.json()
        assert body["ok"] is False and body["redis"] is False and body["milvus"] is True
        assert "redis" in body["errors"] and body["workers"] == 0
        assert time.monotonic() - started < 30  # answers, does not wait on the dead broker
    finally:
        server.stop()
