"""What the settings are built from: value types read from one variable, the constants they
are checked against, and the defaults that follow another setting (the index type, the device)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, SecretStr
from pydantic_settings import NoDecode


def _split(separator: str, value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(separator) if v.strip()]
    return value


# A comma-separated list (RIS_QUEUES=cpu,bulk), and folders separated by colons, like PATH.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(lambda v: _split(",", v))]
ColonPaths = Annotated[list[Path], NoDecode, BeforeValidator(lambda v: _split(":", v))]
# An empty variable (e.g. compose's ${API_TOKEN:-}) means no secret, not an empty one.
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(lambda v: None if v == "" else v)]

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
