"""The one typed settings object: every host, port, name and knob, read from ``RIS_*`` variables."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ris.common.defaults import (
    DEVICE_DEFAULTS,
    INDEX_DEFAULTS,
    LITE_INDEX_TYPES,
    MAX_TOP_K,
    ColonPaths,
    CommaList,
    IndexType,
    Metric,
    OptionalSecret,
)


def is_gpu_queue(queue: str) -> bool:
    """Queues named ``gpu...`` are consumed only by workers that run the model on CUDA."""
    return queue.startswith("gpu")


class Settings(BaseSettings):
    """Configuration shared by the producer (CLI) and the workers.

    Defaults run everything on one machine: a local Redis and a Milvus Lite file.
    """

    model_config = SettingsConfigDict(env_prefix="RIS_", env_file=".env", extra="ignore")

    # --- queue -----------------------------------------------------------------------------
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Celery broker, result backend and job-progress store; a password goes in "
        "the URL (`redis://:PASSWORD@host:6379/0`) and is never printed.",
    )
    visibility_timeout_s: int = Field(
        3600,
        description="Seconds before the broker redelivers a message taken but not acknowledged. "
        "A dead worker's chunks are sent again when their lease lapses (`RIS_LEASE_S`), so "
        "this is only a backstop; keep it above the longest chunk's processing time, or a "
        "chunk still being worked on is delivered again (wasted work, no duplicate).",
    )
    task_max_retries: int = Field(
        8,
        description="Retries of a chunk whose vector-store or Redis calls keep failing, with "
        "exponential backoff capped at `RIS_RETRY_BACKOFF_MAX_S`; then each of its paths is "
        "reported as failed with the error.",
    )
    retry_backoff_max_s: int = Field(
        60, description="Longest pause, in seconds, between two retries of a failing chunk."
    )
    lease_s: int = Field(
        15,
        ge=3,
        description="Seconds a lease lives unless its holder renews it (every third of it): a "
        "worker's hold on the chunks it took, and a chunk's claims on its row ids. A killed, "
        "frozen or cut-off worker's chunks are sent again, and its claims freed, within about "
        "two leases. Shorter: faster recovery, more Redis calls; a holder's Redis must answer "
        "within it.",
    )
    recovery_interval_s: float = Field(
        10.0,
        gt=0,
        description="How often each worker checks, one worker at a time (a Redis lock), whether "
        "a running job has chunks whose holder's lease lapsed, or has stalled "
        "(`RIS_STALL_CHECK_S`), and sends their unprocessed paths again.",
    )
    # Kombu's Redis transport can lose a message taken by a worker just as Redis goes down:
    # nothing holds it then, so only the stall check finds it.
    stall_check_s: float = Field(
        60.0,
        description="A job with no progress for this many seconds, nothing of it held by a "
        "worker and nothing waiting on its queue lost chunks in transit: the recovery sends its "
        "unprocessed paths again. A queue kept busy by other jobs delays this check.",
    )
    redis_dead_after_s: int = Field(
        5,
        description="A Redis connection that died without a word (a partition, a host gone) is "
        "noticed within about twice this many seconds (TCP keepalive, `TCP_USER_TIMEOUT`); an "
        "idle one is checked with a PING before use after this long.",
    )
    result_backend_max_retries: int = Field(
        30,
        description="Task state and result writes that meet a broken Redis connection are "
        "retried this often, with backoff capped at 5 s, before the task fails.",
    )
    task_soft_time_limit_s: float = Field(
        600.0,
        description="A task running longer is interrupted and its chunk's paths are reported "
        "as failed; 0 disables. Also bounds a wait for other chunks' row claims and, in the "
        "threads pool (a GPU worker's, where Celery enforces no limit), each wait on the model "
        "and on the decoding processes. Keep it below `RIS_VISIBILITY_TIMEOUT_S`.",
    )
    task_time_limit_s: float = Field(
        660.0,
        description="A task running longer has its process killed and its chunk's paths "
        "reported as failed (prefork pool only); 0 disables. Keep it below "
        "`RIS_VISIBILITY_TIMEOUT_S`.",
    )
    no_worker_wait_s: float = Field(
        30.0,
        description="`ris ingest` gives up waiting (exit 3; the job stays queued) after this "
        "many seconds with no progress and no worker consuming the job's queue.",
    )
    redis_check_timeout_s: float = Field(
        3.0,
        description="Seconds `ris ingest`, `status`, `search` and `result` wait for Redis to "
        "answer before they say it is unreachable.",
    )
    result_ttl_s: int = Field(
        7 * 24 * 3600,
        description="Seconds task results, job progress and job ledgers are kept in Redis.",
    )
    queues: CommaList = Field(
        default_factory=lambda: ["cpu", "gpu"],
        description="Queues a worker may consume and a producer may send to (comma-separated). "
        "Queues named `gpu...` are for workers with `RIS_DEVICE=cuda`; add others (e.g. "
        "`bulk`) to keep kinds of work apart.",
    )

    # --- vector store ----------------------------------------------------------------------
    milvus_uri: str = Field(
        "ris_data/milvus.db",
        description="A local file path (Milvus Lite, served to all local processes over gRPC) "
        "or http(s)://host:19530 for Milvus standalone/cluster.",
    )
    milvus_token: SecretStr | None = Field(
        None,
        description="`user:password` or an API token for a Milvus server with authorization on.",
    )
    lite_bind_address: str = Field(
        "127.0.0.1",
        description="The address an embedded Milvus Lite server listens on: loopback, or a "
        "private address (e.g. 10.0.0.5) to serve one file to workers on other machines.",
    )
    # Without a deadline pymilvus's own retries go on for minutes against a dead server, and
    # without a log line.
    milvus_timeout_s: int = Field(
        10,
        ge=1,
        description="Seconds one Milvus call may take, pymilvus's own retries included; a "
        "failed call is logged. Writes get this times (1 + rows / 100); index builds, loads, "
        "flushes and deletes ten times this.",
    )
    lite_registry_dir: Path = Field(
        Path.home() / ".cache" / "ris" / "lite-servers",
        description="Where the Milvus Lite servers this user started are listed (`ris lite "
        "list`, `ris info`).",
    )
    collection: str = Field(
        "images", description="The Milvus collection; `--collection` overrides it per command."
    )
    metric: Metric = Field(
        "IP",
        description="Similarity of two vectors: `IP` (cosine, the vectors being unit length), "
        "`COSINE` or `L2`.",
    )
    # IVF_FLAT: 1.5 ms searches at 100k vectors with recall@10 1.0, where FLAT takes 20 ms
    # (benchmarks/query.py).
    index_type: IndexType = Field(
        "IVF_FLAT",
        description="The Milvus vector index. Milvus Lite supports FLAT, IVF_FLAT and "
        "AUTOINDEX only; HNSW and IVF_SQ8 need a Milvus server. An index the server refuses "
        "is an error naming its reason.",
    )
    index_params: dict[str, Any] = Field(
        default_factory=dict,
        description="The index's build parameters, as JSON; unset, they follow `RIS_INDEX_TYPE`.",
    )
    search_params: dict[str, Any] = Field(
        default_factory=dict,
        description="The index's search parameters, as JSON; unset, they follow "
        "`RIS_INDEX_TYPE`. Raise `nprobe` or `ef` for recall, lower it for speed.",
    )
    search_consistency: Literal["Strong", "Bounded", "Session", "Eventually"] | None = Field(
        None,
        description="Consistency of searches on a Milvus server; unset, they see every "
        "acknowledged row (Strong: about 200 ms more, the server's time tick). Bounded answers "
        "in ms from data up to a few seconds old. Reads that decide what to skip, count or "
        "delete are Strong on a server whatever this says; Milvus Lite ignores it.",
    )

    # --- model -----------------------------------------------------------------------------
    model: str = Field(
        "efficientnet-lite0",
        description="The embedding model (`common/models.py`): `efficientnet-lite0`, `-lite1`, "
        "`-lite2`, `efficientnet-lite0-gem` (384 px, GeM pooling), the int8 models "
        "`efficientnet-lite0-int8` and `efficientnet-lite0-gem-int8` (CPU workers: "
        "`RIS_RUNTIME=onnx`, `RIS_DEVICE=cpu`), `resnet50` or `raw-pixels`. A collection made "
        "with another model is refused.",
    )
    runtime: Literal["onnx", "torch"] = Field(
        "onnx",
        description="Inference engine: onnxruntime on the cached ONNX export (no torch "
        "import), or torch.",
    )
    device: Literal["cpu", "cuda"] = Field(
        "cpu",
        description="Where the model runs. `cuda` also changes the defaults of "
        "`RIS_BATCH_SIZE`, `RIS_DECODE_PROCESSES` and `RIS_WORKER_POOL`.",
    )
    fp16: bool = Field(
        False,
        description="Half precision with `RIS_RUNTIME=torch` on CUDA; ignored elsewhere.",
    )
    model_cache_dir: Path = Field(
        Path.home() / ".cache" / "ris",
        description="Where ONNX exports are cached (the worker image bakes the default "
        "model's in).",
    )
    inference_threads: int = Field(
        0,
        description="onnxruntime or torch threads per worker process; 0 lets the runtime pick "
        "(all cores). Set 1 when running several worker processes on one machine.",
    )
    # Default 4 on CPU (cache-resident activations: benchmarks/ingest.py), 128 on CUDA
    # (benchmarks/gpu.py: steadier than 256, whose windows kept a chunk's images waiting longer
    # for the GPU).
    batch_size: int = Field(
        4,
        ge=1,
        description="Images per model call, filled across the tasks and chunks in flight.",
    )
    batch_wait_ms: float = Field(
        2.0,
        ge=0,
        description="How long, in ms, a model call waits for more images to fill its batch.",
    )
    decode_threads: int = Field(
        2,
        ge=1,
        description="Threads per pipeline that read and decode files when there are no "
        "decoding processes. A file is held only while it is decoded: a worker holds at most "
        "this many files at once.",
    )
    decode_processes: int = Field(
        0,
        ge=0,
        description="Processes that stat, read, hash and decode files for the worker, handing "
        "pixels back through shared memory; 0 does it in the worker's own threads.",
    )
    worker_pool: Literal["prefork", "threads"] = Field(
        "prefork",
        description="Celery pool of `ris worker`: `prefork` (one model per process) or "
        "`threads` (one process, one model on one thread, `--concurrency` chunks in flight, "
        "default 8).",
    )

    # --- ingestion -------------------------------------------------------------------------
    chunk_size: int = Field(64, ge=1, description="Paths per ingest task on cpu queues.")
    # A GPU worker keeps several large chunks in flight so that its batches stay full.
    gpu_chunk_size: int = Field(256, ge=1, description="Paths per ingest task on `gpu...` queues.")
    max_image_pixels: int = Field(
        100_000_000,
        description="Images above this many pixels are refused, not decoded (decompression bombs).",
    )
    max_file_bytes: int = Field(
        200 * 1024 * 1024,
        description="Files larger than this are refused, counted while they are read.",
    )
    allowed_roots: ColonPaths = Field(
        default_factory=list,
        description="Folders workers (and the HTTP API) may read under, colon-separated; empty "
        "means no restriction. Symlinks and `..` are resolved before the check.",
    )
    allowed_url_prefixes: CommaList = Field(
        default_factory=list,
        description="URL prefixes (http(s)://, s3://...) a worker may fetch, comma-separated. "
        "Empty means any URL while `RIS_ALLOWED_ROOTS` is empty too, and none once it "
        "restricts paths.",
    )
    url_timeout_s: float = Field(
        30.0, description="Seconds an HTTP(S) image fetch may take in all."
    )

    # --- monitoring ------------------------------------------------------------------------
    flower_address: str = Field("127.0.0.1", description="Address `ris flower` listens on.")
    flower_port: int = Field(5555, description="Port `ris flower` listens on.")
    flower_basic_auth: SecretStr | None = Field(
        None,
        description="`user:password` for Flower's basic auth (its HTTP API answers nobody "
        "without it); required off loopback.",
    )
    metrics_port: int = Field(
        9808,
        ge=0,
        le=65535,
        description="Port of each `ris worker`'s Prometheus `/metrics` (every pool process "
        "summed); 0 turns it off. A port taken already (several workers on one host) is "
        "logged and skipped.",
    )
    metrics_exporter_port: int = Field(
        9809,
        ge=1,
        le=65535,
        description="Port of `ris metrics`, the exporter of queue and job gauges read from "
        "Redis (what an autoscaler reads while no worker runs).",
    )
    api_metrics_public: bool = Field(
        False,
        description="Serve the API's `/metrics` without the bearer token (`RIS_API_TOKEN`), "
        "for a scraper inside a trusted network.",
    )

    # --- queries ---------------------------------------------------------------------------
    top_k: int = Field(
        10,
        ge=1,
        le=MAX_TOP_K,
        description="Matches per query unless `--top-k` or `top_k` says otherwise (Milvus "
        "refuses more than 16384).",
    )
    max_query_bytes: int = Field(
        32 * 1024 * 1024,
        description="Largest query image the producer sends in a task.",
    )

    # --- near duplicates (ris duplicates) -----------------------------------------------------
    duplicates_threshold: float = Field(
        0.65,
        ge=-1.0,
        le=1.0,
        description="`ris duplicates`: pairs scoring this or more are near duplicates (IP or "
        "COSINE; benchmarks/duplicates.py).",
    )
    duplicates_slice: int = Field(
        2000,
        ge=1,
        description="Ids per `ris duplicates` worker task (the vectors one worker holds).",
    )
    duplicates_search_batch: int = Field(
        100, ge=1, description="Query vectors per Milvus search in `ris duplicates`."
    )

    # --- HTTP API (ris serve) ----------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address `ris serve` listens on (`--host`).")
    api_port: int = Field(8000, description="Port `ris serve` listens on (`--port`).")
    api_token: OptionalSecret = Field(
        None,
        description="Bearer token for `/api/*` (all but `health` and `config`); off loopback "
        "the server refuses to start without one. Empty means none.",
    )
    api_max_upload_bytes: int = Field(
        16 * 1024 * 1024,
        description="Query uploads with a larger body are refused (413) before they are read "
        "whole.",
    )
    api_max_upload_pixels: int = Field(
        40_000_000,
        description="Query uploads with more pixels are refused (413) before they are decoded.",
    )
    api_cors_origins: CommaList = Field(
        default_factory=list,
        description="Origins allowed to call the API from their pages (comma-separated); none "
        "means CORS is off.",
    )
    api_wait_timeout_s: float = Field(
        60.0,
        description="Longest `POST /api/search?wait=true` waits for its answer, in seconds.",
    )
    api_thumbnail_px: int = Field(256, description="Longest side of the thumbnails the API serves.")
    api_flower_url: str = Field(
        "",
        description="The web page's link to Flower; empty: this host on `RIS_FLOWER_PORT`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _index_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            index_type = data.get("index_type", cls.model_fields["index_type"].default)
            build, search = INDEX_DEFAULTS.get(str(index_type), ({}, {}))
            data = {**data}
            data.setdefault("index_params", build)
            data.setdefault("search_params", search)
        return data

    @model_validator(mode="before")
    @classmethod
    def _device_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            device = str(data.get("device", cls.model_fields["device"].default))
            data = {**DEVICE_DEFAULTS.get(device, {}), **data}
        return data

    @model_validator(mode="after")
    def _check_index_for_lite(self) -> Settings:
        if self.milvus_is_lite and self.index_type not in LITE_INDEX_TYPES:
            raise ValueError(
                f"index type {self.index_type} needs a Milvus server; Milvus Lite supports "
                f"{', '.join(LITE_INDEX_TYPES)}"
            )
        return self

    @model_validator(mode="after")
    def _check_int8_on_cpu_onnx(self) -> Settings:
        from ris.common.models import MODELS

        spec = MODELS.get(self.model)
        if spec and spec.precision == "int8" and (self.runtime, self.device) != ("onnx", "cpu"):
            raise ValueError(
                f"{self.model} is an int8 model for CPU workers: it runs on onnxruntime's CPU "
                f"provider only (RIS_RUNTIME=onnx, RIS_DEVICE=cpu)"
            )
        return self

    def chunk_size_for(self, queue: str) -> int:
        """Paths per ingest task sent to ``queue``."""
        return self.gpu_chunk_size if is_gpu_queue(queue) else self.chunk_size

    def to_env(self) -> dict[str, str]:
        """The ``RIS_*`` variables that give a child process (``ris worker``, ``ris serve``)
        these settings; a setting that is None is left out."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, list):  # as the validators above split them
                text = (":" if name == "allowed_roots" else ",").join(map(str, value))
            elif isinstance(value, dict):
                text = json.dumps(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"RIS_{name.upper()}"] = text
        return env

    @property
    def milvus_is_lite(self) -> bool:
        """True when ``milvus_uri`` names a local Milvus Lite file rather than a server."""
        return not self.milvus_uri.startswith(("http://", "https://", "tcp://", "unix:"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
