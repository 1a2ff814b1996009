"""The API's request and response bodies (they make the OpenAPI document)."""

from __future__ import annotations

from pydantic import BaseModel, Field

# Milvus collection names: a letter or underscore, then letters, digits, underscores.
COLLECTION_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"


class HitOut(BaseModel):
    rank: int
    id: str = Field(description="the row id (a 63-bit integer, as a string for JavaScript)")
    score: float
    path: str | None
    width: int | None
    height: int | None
    ingested_at: int | None


class TaskOut(BaseModel):
    task_id: str
    state: str = Field(description="Celery state: PENDING, STARTED, RETRY, SUCCESS, FAILURE")
    query: str | None = None
    hits: list[HitOut] | None = None
    error: str | None = None
    timing_ms: dict[str, float] = Field(default_factory=dict)


class IngestIn(BaseModel):
    inputs: list[str] = Field(
        min_length=1, description="folders, globs, .txt/.csv lists, paths or URLs"
    )
    queue: str | None = None
    collection: str | None = Field(None, pattern=COLLECTION_PATTERN)


class JobOut(BaseModel):
    job_id: str
    queue: str
    total: int
    processed: int
    indexed: int
    unchanged: int
    failed: int
    pending: int
    enqueue_finished: bool
    finished: bool
    resent: int = Field(0, description="paths of lost chunks the cluster sent again")
    failures: dict[str, str] = Field(default_factory=dict)


class HealthOut(BaseModel):
    ok: bool
    redis: bool
    milvus: bool
    workers: int
    errors: dict[str, str] = Field(default_factory=dict)


class PageConfig(BaseModel):
    token_required: bool
    top_k: int
    queues: list[str]
    max_upload_bytes: int
    flower_url: str = Field(description="empty: this host on flower_port")
    flower_port: int


class SyncIn(BaseModel):
    roots: list[str] = Field(min_length=1, description="folders to bring the index in step with")
    dry_run: bool = False
    queue: str | None = None
    collection: str | None = Field(None, pattern=COLLECTION_PATTERN)


class SyncOut(BaseModel):
    new: int
    changed: int
    unchanged: int
    deleted: int = Field(description="rows of files gone (0 in a dry run: see gone)")
    gone: int
    job: JobOut | None = Field(None, description="the ingest of new and changed files")
    note: str | None = None
