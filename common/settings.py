"""The one typed settings object: every host, port, name and knob, read from ``RIS_*`` variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Metric = Literal["IP", "COSINE", "L2"]
IndexType = Literal["FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "AUTOINDEX"]
LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "AUTOINDEX")
# (build, search) parameters per index type where RIS_INDEX_PARAMS / RIS_SEARCH_PARAMS are unset.
INDEX_DEFAULTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "FLAT": ({}, {}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 128}),
    "AUTOINDEX": ({}, {}),
}


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
    # `ris ingest` waiting this long without progress checks whether the job's remaining chunks
    # still exist (queued, or held by a worker) and sends again those that do not: kombu's Redis
    # transport can lose a message taken by a worker just as Redis goes down.
    stall_check_s: float = 60.0
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
    # Images per model call. Small batches are fastest on CPU (cache-resident activations:
    # benchmarks/ingest.py); a GPU wants 64-256.
    batch_size: int = 4
    decode_threads: int = 2

    # --- ingestion -------------------------------------------------------------------------
    chunk_size: int = 64
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
    top_k: int = 10
    max_query_bytes: int = 32 * 1024 * 1024

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        # A colon-separated list, like PATH.
        if isinstance(value, str):
            return [Path(p) for p in value.split(":") if p]
        return value

    @field_validator("queues", "allowed_url_prefixes", mode="before")
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

    @model_validator(mode="after")
    def _check_index_for_lite(self) -> Settings:
        if self.milvus_is_lite and self.index_type not in LITE_INDEX_TYPES:
            raise ValueError(
                f"index type {self.index_type} needs a Milvus server; Milvus Lite supports "
                f"{', '.join(LITE_INDEX_TYPES)}"
            )
        return self

    @property
    def milvus_is_lite(self) -> bool:
        """True when ``milvus_uri`` names a local Milvus Lite file rather than a server."""
        return not self.milvus_uri.startswith(("http://", "https://", "tcp://", "unix:"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
