"""The one typed settings object: every host, port, name and knob, read from ``RIS_*`` variables."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Metric = Literal["IP", "COSINE", "L2"]
IndexType = Literal["FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "AUTOINDEX"]
# Milvus refuses a search limit above this.
MAX_TOP_K = 16384
LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "AUTOINDEX")
# (build, search) parameters per index type where RIS_INDEX_PARAMS / RIS_SEARCH_PARAMS are unset.
INDEX_DEFAULTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "FLAT": ({}, {}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 128}),
    "AUTOINDEX": ({}, {}),
}


# Defaults that follow RIS_DEVICE where the variable is unset: a GPU wants large batches, many
# images per task and decoding in processes (threads hold the GIL: 0.44x the processes' rate).
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"batch_size": 4, "decode_processes": 0, "worker_pool": "prefork"},
    # Decoding on three cores in four: the rest for the worker's own process, Redis and Milvus
    # (H200, 16 cores: 12 decoding processes 4,471 images/s end to end, 16 processes 3,824).
    "cuda": {
        "batch_size": 128,
        "decode_processes": max(1, (os.cpu_count() or 1) * 3 // 4),
        "worker_pool": "threads",
    },
}


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
        description="Celery broker, result backend and job-progress store.",
    )
    # Seconds before a message taken but not acknowledged (worker died) is redelivered.
    # Must exceed the longest chunk's processing time.
    visibility_timeout_s: int = 3600
    # A chunk whose vector-store writes keep failing is retried this often, with exponential
    # backoff capped at retry_backoff_max_s, then reported as failed path by path.
    task_max_retries: int = 8
    retry_backoff_max_s: int = 60
    # Seconds a lease lives unless its holder renews it (every third of it): a worker's hold on
    # the chunks it took, and a chunk's claims on its row ids. A killed, frozen or cut-off
    # worker's chunks are sent again, and its claims freed, within about two leases. Shorter:
    # faster recovery, more Redis calls; a holder's Redis must answer within it.
    lease_s: int = Field(15, ge=3)
    # Each worker checks this often, one worker at a time (a Redis lock), whether a running
    # job has chunks that no live worker holds, and sends them again.
    recovery_interval_s: float = Field(10.0, gt=0)
    # A job with no progress for this long, nothing of it held by a worker and nothing waiting
    # on its queue, lost chunks in transit (kombu's Redis transport can lose a message taken
    # by a worker just as Redis goes down): the recovery sends its unprocessed paths again.
    stall_check_s: float = 60.0
    # A Redis connection that died without a word (a partition, a host gone) is noticed
    # within about twice this many seconds (TCP keepalive, TCP_USER_TIMEOUT), and an idle one
    # is checked with a PING before use after this long (health checks).
    redis_dead_after_s: int = 5
    # Result-backend writes (task states and results) that hit a broken connection are
    # retried this often, with exponential backoff capped at 5 s, before the task fails.
    result_backend_max_retries: int = 30
    # A task running longer is interrupted (soft: its chunk's paths reported as failed) or its
    # process killed (hard); 0 disables. Keep both below visibility_timeout_s.
    task_soft_time_limit_s: float = 600.0
    task_time_limit_s: float = 660.0
    # `ris ingest` gives up waiting (exit 3, the job stays queued) after this long with no
    # progress and no worker consuming the job's queue.
    no_worker_wait_s: float = 30.0
    # Seconds to wait for Redis to answer before a command says it is unreachable.
    redis_check_timeout_s: float = 3.0
    # Results and job progress expire after this long.
    result_ttl_s: int = 7 * 24 * 3600
    # Queues a worker may consume and a producer may send to. Queues named "gpu..." are for
    # workers with RIS_DEVICE=cuda; add others (e.g. "bulk") to separate kinds of work.
    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["cpu", "gpu"])

    # --- vector store ----------------------------------------------------------------------
    milvus_uri: str = Field(
        "ris_data/milvus.db",
        description="A local file path (Milvus Lite, served to all local processes over gRPC) "
        "or http(s)://host:19530 for Milvus standalone/cluster.",
    )
    milvus_token: SecretStr | None = None
    # The address an embedded Milvus Lite server listens on: loopback by default; a private
    # address (e.g. 10.0.0.5) serves one file to workers on other machines.
    lite_bind_address: str = "127.0.0.1"
    # Seconds one Milvus call may take, pymilvus's own retries included (they would otherwise
    # go on for minutes against a dead server, without a log line). Keep it well below
    # visibility_timeout_s, or a chunk waiting on Milvus is redelivered meanwhile.
    milvus_timeout_s: int = Field(10, ge=1)
    # Where the Milvus Lite servers this user started are listed (`ris lite list`).
    lite_registry_dir: Path = Path.home() / ".cache" / "ris" / "lite-servers"
    collection: str = "images"
    metric: Metric = "IP"
    # IVF_FLAT: 1.5 ms searches at 100k vectors with recall@10 1.0, where FLAT takes 20 ms
    # (benchmarks/query.py). Milvus Lite supports FLAT, IVF_FLAT and AUTOINDEX only.
    index_type: IndexType = "IVF_FLAT"
    # JSON; unset means INDEX_DEFAULTS for the index type.
    index_params: dict[str, Any] = Field(default_factory=dict)
    search_params: dict[str, Any] = Field(default_factory=dict)
    # Consistency of searches on a Milvus server; unset, they see every acknowledged row
    # (Strong: +~200 ms, the server's time tick). Bounded answers in ms from data up to a few
    # seconds old. Milvus Lite ignores it.
    search_consistency: Literal["Strong", "Bounded", "Session", "Eventually"] | None = None

    # --- model -----------------------------------------------------------------------------
    model: str = "efficientnet-lite0"
    runtime: Literal["onnx", "torch"] = "onnx"
    device: Literal["cpu", "cuda"] = "cpu"
    # Half precision with RIS_RUNTIME=torch on CUDA; ignored elsewhere.
    fp16: bool = False
    model_cache_dir: Path = Path.home() / ".cache" / "ris"
    # 0 lets onnxruntime pick (all cores); set 1 when running several worker processes.
    inference_threads: int = 0
    # Images per model call, filled across tasks and chunks. Default 4 on CPU (cache-resident
    # activations: benchmarks/ingest.py), 128 on CUDA (benchmarks/gpu.py: steadier than 256,
    # whose windows kept a chunk's images waiting longer for the GPU).
    batch_size: int = Field(4, ge=1)
    # A model call waits this long for more images to fill its batch.
    batch_wait_ms: float = Field(2.0, ge=0)
    # Threads per pipeline that read and decode files (without decoding processes). A file is
    # held only while it is decoded: a worker holds at most this many files at once.
    decode_threads: int = Field(2, ge=1)
    # Processes that read, hash and decode files for the worker; 0 does it in the worker's own
    # threads. Default 0 on CPU, three per four cores on CUDA.
    decode_processes: int = Field(0, ge=0)
    # Celery pool of `ris worker`: prefork (one model per process; CPU default) or threads
    # (one process, one model on one thread, --concurrency tasks in flight; CUDA default).
    worker_pool: Literal["prefork", "threads"] = "prefork"

    # --- ingestion -------------------------------------------------------------------------
    # Paths per ingest task on cpu queues, and on gpu queues (a GPU worker keeps several
    # large chunks in flight so that its batches stay full).
    chunk_size: int = Field(64, ge=1)
    gpu_chunk_size: int = Field(256, ge=1)
    # Decompression-bomb guard: images above this many pixels are refused, not decoded.
    max_image_pixels: int = 100_000_000
    max_file_bytes: int = 200 * 1024 * 1024
    # Workers read only under these roots (colon-separated); empty means no restriction.
    allowed_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # URLs (http(s)://, s3://...) a worker may fetch, by prefix (comma-separated). Empty means
    # any URL while allowed_roots is empty too, and none once allowed_roots restricts paths.
    allowed_url_prefixes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    url_timeout_s: float = 30.0

    # --- monitoring ------------------------------------------------------------------------
    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    # "user:password" for Flower's basic auth (its HTTP API answers nobody without it).
    flower_basic_auth: SecretStr | None = None

    # --- queries ---------------------------------------------------------------------------
    top_k: int = Field(10, ge=1, le=MAX_TOP_K)
    max_query_bytes: int = 32 * 1024 * 1024

    # --- near duplicates (ris duplicates) -----------------------------------------------------
    # Pairs scoring this or more are near duplicates (IP/COSINE; benchmarks/duplicates.py).
    duplicates_threshold: float = Field(0.65, ge=-1.0, le=1.0)
    # Ids per worker task (a worker holds this many vectors), and queries per Milvus search.
    duplicates_slice: int = Field(2000, ge=1)
    duplicates_search_batch: int = Field(100, ge=1)

    # --- HTTP API (ris serve) ----------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Bearer token for /api/*; required (or the server refuses to start) off loopback.
    api_token: SecretStr | None = None
    # Query uploads: larger bodies are refused before they are read whole, larger images
    # before they are decoded.
    api_max_upload_bytes: int = 16 * 1024 * 1024
    api_max_upload_pixels: int = 40_000_000
    # Origins allowed to call the API from other pages (comma-separated); none = CORS off.
    api_cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Longest `POST /api/search?wait=true` waits for its answer.
    api_wait_timeout_s: float = 60.0
    api_thumbnail_px: int = 256
    # The page's link to Flower; empty: this host on RIS_FLOWER_PORT.
    api_flower_url: str = ""

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        # A colon-separated list, like PATH.
        if isinstance(value, str):
            return [Path(p) for p in value.split(":") if p]
        return value

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        # RIS_API_TOKEN= (e.g. compose's ${API_TOKEN:-}) means no token, not an empty one.
        return None if value == "" else value

    @field_validator("queues", "allowed_url_prefixes", "api_cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

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
