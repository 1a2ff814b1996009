"""What the ``ris`` commands print: each report's lines or JSON document, built apart from the
printing so that it can be tested alone.

Nothing heavy is imported at run time (``ris status`` must stay fast): the types below are for
annotations only.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ris.common.jobs import JobProgress
    from ris.common.settings import Settings
    from ris.producer.client import Producer, QueryResult
    from ris.producer.duplicates import DuplicateGroups
    from ris.producer.evaluation import NearDuplicateReport, Report
    from ris.producer.sync import SyncPlan

# Failures and previews listed before "... and N more".
LIST_LIMIT = 20


def no_worker_warning(queue: str) -> str:
    """What to say when no worker answers a ping."""
    return f"warning: no worker answers; start one with `ris worker --queue {queue}`"


def progress_line(p: JobProgress) -> str:
    """One line of a job's state and counts."""
    state = "finished" if p.finished else ("enqueueing" if not p.enqueue_finished else "running")
    return (
        f"job {p.job_id}: {state}: {p.processed}/{p.total} processed "
        f"({p.indexed} indexed, {p.unchanged} unchanged, {p.failed} failed, "
        f"{p.pending} pending)"
    )


def failure_lines(failures: dict[str, str], limit: int | None = LIST_LIMIT) -> list[str]:
    """A line per failed path (the first ``limit``; None: all), then how many were left out."""
    items = list(failures.items())
    lines = [f"  FAILED {path}: {reason}" for path, reason in (items[:limit] if limit else items)]
    if limit and len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more (ris status JOB --failures)")
    return lines


def status_document(progress: JobProgress, failures: dict[str, str]) -> dict[str, Any]:
    """``ris status --json``: the progress, its derived fields and every failure."""
    return {
        **asdict(progress),
        "finished": progress.finished,
        "pending": progress.pending,
        "failures": failures,
    }


def sync_preview_lines(plan: SyncPlan, limit: int = LIST_LIMIT) -> list[str]:
    """``ris sync --dry-run``: the first ``limit`` paths of each kind of change."""
    lines = [
        f"  {label} {path}"
        for label, paths in (("new", plan.new), ("changed", plan.changed))
        for path in paths[:limit]
    ]
    lines += [f"  gone {path}" for path in list(plan.gone.values())[:limit]]
    return lines


def result_lines(results: list[QueryResult]) -> list[str]:
    """Each query, then its error or its ranked matches."""
    lines = []
    for res in results:
        lines.append(f"query: {res.query}")
        if res.error:
            lines.append(f"  error: {res.error}")
            continue
        for rank, hit in enumerate(res.hits, 1):
            lines.append(f"  {rank:>3}  score={hit.score:.4f}  id={hit.id}  {hit.path}")
    return lines


def results_document(results: list[QueryResult]) -> list[dict[str, Any]]:
    """``ris search --json`` and ``ris result --json``."""
    return [asdict(r) for r in results]


def written_results_lines(results: list[QueryResult], rows: int, out: str) -> list[str]:
    """``ris search --out``: the count written, then the first failed queries."""
    lines = [f"{len(results)} queries, {rows} matches written to {out}"]
    failed = [r for r in results if r.error]
    lines += [f"  FAILED {r.query}: {r.error}" for r in failed[:LIST_LIMIT]]
    return lines


def duplicates_summary(found: DuplicateGroups, threshold: float) -> str:
    """One line: how many groups, among how many images."""
    return (
        f"{len(found.groups)} groups ({sum(map(len, found.groups))} images) among "
        f"{found.images} images at score >= {threshold:g}"
    )


def group_lines(groups: list[list[str]]) -> list[str]:
    """Each group's number, then its paths."""
    lines = []
    for n, group in enumerate(groups, 1):
        lines.append(f"group {n}:")
        lines += [f"  {path}" for path in group]
    return lines


def info_document(producer: Producer, settings: Settings) -> dict[str, Any]:
    """``ris info``: the collection, its model and index, the workers and the Lite servers."""
    from ris.common.store.lite_server import list_lite_servers

    store = producer.store
    return {
        "collection": store.name,
        "model": store.model,
        "dim": store.dim,
        "metric": settings.metric,
        "index": store.index(),
        "rows": store.count(),
        "milvus": settings.milvus_uri,
        "workers": producer.workers_online(),
        "lite_servers": [asdict(s) for s in list_lite_servers(settings.lite_registry_dir)],
    }


def evaluation_lines(report: Report) -> list[str]:
    """``ris eval``: precision at each rank, mHR, mAP, speeds and failures."""
    return [
        f"model {report.model}: {report.candidates} indexed, {report.queries} queries, "
        f"top-{report.top_k}",
        *(f"  precision@{n:<3} {value:.3f}" for n, value in report.precision.items()),
        f"  mHR@{report.top_k:<7} {report.mean_hit_ratio:.3f}",
        f"  mAP@{report.top_k:<7} {report.mean_average_precision:.3f}",
        f"  ingest {report.ingest_per_s:.1f} images/s, queries {report.queries_per_s:.1f}/s",
        *failure_lines(report.failed),
    ]


def near_duplicate_lines(nd: NearDuplicateReport) -> list[str]:
    """``ris eval --near-duplicates``: top-1 accuracy per transform, then the mean."""
    return [
        f"near duplicates: {nd.originals} originals among {nd.distractors} distractors, "
        f"model {nd.model}",
        *(f"  {name:<14} top-1 {acc:.3f}" for name, acc in nd.top1.items()),
        f"  {'mean':<14} top-1 {nd.overall:.3f}",
    ]
