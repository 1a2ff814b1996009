"""docker-compose.yml, resolved by Docker Compose itself (``config``): the scale-out stack and
its refusal to start without a secret."""

from __future__ import annotations

import functools
import json
import os
import subprocess

from tests.helpers import ROOT, compose_command


def test_compose_file_describes_the_stack() -> None:
    """`docker compose config` accepts the file, and the resolved stack has what scale-out needs."""
    env = {
        **os.environ,
        "REDIS_PASSWORD": "pw",
        "FLOWER_BASIC_AUTH": "user:pass",
        "API_TOKEN": "tok",
    }
    run = functools.partial(
        subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    resolved = run([*compose_command(), "--profile", "gpu", "config", "--format", "json"], env=env)
    assert resolved.returncode == 0, resolved.stderr
    services = json.loads(resolved.stdout)["services"]

    expected = {"redis", "etcd", "minio", "milvus", "worker-cpu", "worker-gpu", "flower"}
    assert expected | {"producer"} <= set(services)
    for name in ("redis", "etcd", "minio", "milvus"):
        assert "healthcheck" in services[name], name
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image
    assert services["redis"]["command"][:3] == ["redis-server", "--requirepass", "pw"]
    assert any(v["target"] == "/data" for v in services["redis"]["volumes"])
    for worker in ("worker-cpu", "worker-gpu", "producer"):
        environment = services[worker]["environment"]
        assert environment["RIS_REDIS_URL"] == "redis://:pw@redis:6379/0", worker
        assert environment["RIS_MILVUS_URI"] == "http://milvus:19530", worker
        assert services[worker]["depends_on"]["milvus"]["condition"] == "service_healthy"
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["environment"]["RIS_DEVICE"] == "cuda"
    assert gpu["command"][:3] == ["worker", "--queue", "gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    # Decoded images reach the GPU worker through shared memory: Docker's 64 MiB is too small.
    assert int(gpu["shm_size"]) >= 512 * 2**20
    assert services["flower"]["environment"]["RIS_FLOWER_BASIC_AUTH"] == "user:pass"
    assert any(v["target"] == "/data" for v in services["flower"]["volumes"])
    api = services["api"]
    assert api["command"] == ["serve"] and api["environment"]["RIS_API_TOKEN"] == "tok"
    assert api["environment"]["RIS_ALLOWED_ROOTS"] == "/images"

    # Without any one secret the stack refuses to start, naming it. (With several missing,
    # compose names whichever it meets first: its order is not fixed, so each goes alone.)
    for secret in ("REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "API_TOKEN"):
        without = {k: v for k, v in env.items() if k != secret}
        refused = run([*compose_command(), "--profile", "gpu", "config", "-q"], env=without)
        assert refused.returncode != 0 and secret in refused.stderr, (secret, refused.stderr)
