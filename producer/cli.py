"""The ``ris`` command line: every subcommand and its arguments."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from dataclasses import asdict
from typing import Any

from ris.common.settings import MAX_TOP_K, Settings, get_settings

log = logging.getLogger("ris")


def _top_k(text: str) -> int:
    """``--top-k``: an integer Milvus accepts as a search limit."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_TOP_K:
        raise argparse.ArgumentTypeError(f"{value} is out of range: 1 to {MAX_TOP_K}")
    return value


def _producer(settings: Settings) -> Any:
    from ris.producer.client import Producer

    return Producer(settings)


def _print_progress_line(p: Any) -> None:
    state = "finished" if p.finished else ("enqueueing" if not p.enqueue_finished else "running")
    print(
        f"job {p.job_id}: {state}: {p.processed}/{p.total} processed "
        f"({p.indexed} indexed, {p.unchanged} unchanged, {p.failed} failed, "
        f"{p.pending} pending)"
    )


def _print_failures(failures: dict[str, str], limit: int | None = 20) -> None:
    items = list(failures.items())
    for path, reason in items[:limit] if limit else items:
        print(f"  FAILED {path}: {reason}")
    if limit and len(items) > limit:
        print(f"  ... and {len(items) - limit} more (ris status JOB --failures)")


def _enqueue(producer: Any, args: argparse.Namespace, paths: Any, job_id: str) -> bool:
    """Enqueue the job; a first Ctrl-C stops between two chunks (so the record of what was
    sent stays exact) and says what was enqueued; returns False when it was interrupted."""
    stop: list[bool] = []

    def on_sigint(signum: int, frame: Any) -> None:
        if stop:  # a second Ctrl-C: at once
            raise KeyboardInterrupt
        stop.append(True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        producer.ingest(
            paths,
            queue=args.queue,
            job_id=job_id,
            collection=args.collection,
            should_stop=lambda: bool(stop),
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    if stop:
        total = producer.progress(job_id).total
        print(
            f"interrupted: job {job_id}: {total} paths enqueued; run the same command again "
            "to enqueue the rest",
            flush=True,
        )
    return not stop


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from ris.producer.client import NoWorkerError
    from ris.producer.inputs import expand_inputs

    producer = _producer(settings)
    job_id = args.job_id or producer.job_id_for(args.inputs, args.queue, args.collection)
    if producer.tracker.is_complete(job_id):
        print(f"job {job_id}: enqueued already; waiting for it", flush=True)
    else:
        resumed = producer.tracker.resume_point(job_id)
        if resumed:
            print(f"job {job_id}: resuming after {resumed[1]} paths already enqueued", flush=True)
        print(f"job {job_id}: enqueueing to queue {args.queue!r}", flush=True)
    if not _enqueue(producer, args, expand_inputs(args.inputs), job_id):
        return 130
    progress = producer.progress(job_id)
    print(f"job {job_id}: {progress.total} paths enqueued", flush=True)
    if args.no_wait or progress.total == 0:
        return 0
    if not producer.workers_online():
        print(
            f"warning: no worker answers; start one with `ris worker --queue {args.queue}`",
            file=sys.stderr,
        )
    with tqdm(total=progress.total, unit="img", disable=args.quiet) as bar:
        resent = [progress.resent]

        def update(p: Any) -> None:
            bar.total = p.total
            bar.set_postfix(failed=p.failed, unchanged=p.unchanged, refresh=False)
            bar.update(p.processed - bar.n)
            if p.resent > resent[0]:  # the cluster's recovery (ris.workers.recovery)
                resent[0] = p.resent
                bar.write(f"job {job_id}: {p.resent} paths of lost chunks sent again so far")

        try:
            progress = producer.wait(
                job_id, timeout_s=args.timeout, on_progress=update, queue=args.queue
            )
        except NoWorkerError as exc:
            bar.close()
            print(f"error: {exc}", file=sys.stderr)
            return 3
    _print_progress_line(progress)
    _print_failures(producer.failures(job_id))
    return 0


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from ris.producer.sync import describe, plan_sync, stat_note

    producer = _producer(settings)
    store = producer.store_for(args.collection, create=True)
    plan = plan_sync(store, args.roots)
    print(f"sync: {describe(plan)}", flush=True)
    if note := stat_note(plan):
        print(f"note: {note}", file=sys.stderr)
    if args.dry_run:
        for label, paths in (("new", plan.new), ("changed", plan.changed)):
            for path in paths[:20]:
                print(f"  {label} {path}")
        for path in list(plan.gone.values())[:20]:
            print(f"  gone {path}")
        return 0
    deleted = store.delete_ids(plan.gone) if plan.gone else 0
    print(f"deleted {deleted} row(s) of files gone", flush=True)
    if not plan.to_index:
        return 0
    job_id = producer.ingest(plan.to_index, queue=args.queue, collection=args.collection)
    print(f"job {job_id}: {len(plan.to_index)} paths enqueued", flush=True)
    with tqdm(total=len(plan.to_index), unit="img", disable=args.quiet) as bar:
        progress = producer.wait(
            job_id,
            timeout_s=args.timeout,
            on_progress=lambda p: bar.update(p.processed - bar.n),
        )
    _print_progress_line(progress)
    _print_failures(producer.failures(job_id))
    return 0


def cmd_duplicates(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from ris.common.filters import SearchFilter
    from ris.producer.duplicates import find_duplicates, write_groups

    producer = _producer(settings)
    threshold = settings.duplicates_threshold if args.threshold is None else args.threshold
    filters = SearchFilter.build(under=args.under) if args.under else None
    with tqdm(unit="slice", disable=args.quiet) as bar:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        found = find_duplicates(
            producer, threshold, filters, args.queue, args.collection, args.timeout, update
        )
    print(
        f"{len(found.groups)} groups ({sum(map(len, found.groups))} images) among "
        f"{found.images} images at score >= {threshold:g}"
    )
    if args.out:
        write_groups(found, args.out)
        print(f"groups written to {args.out}")
    else:
        for n, group in enumerate(found.groups, 1):
            print(f"group {n}:")
            for path in group:
                print(f"  {path}")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    # Redis only: no Celery app, no Milvus client (pymilvus imports pandas), so it answers fast.
    from ris.common.jobs import JobTracker, redis_client

    tracker = JobTracker(redis_client(settings), settings.result_ttl_s)
    try:
        progress = tracker.progress(args.job)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    failures = tracker.failures(args.job)
    if args.json:
        print(
            json.dumps(
                {
                    **asdict(progress),
                    "finished": progress.finished,
                    "pending": progress.pending,
                    "failures": failures,
                },
                indent=2,
            )
        )
        return 0
    _print_progress_line(progress)
    _print_failures(failures, limit=None if args.failures else 20)
    return 0


def _show_results(results: list[Any], args: argparse.Namespace, settings: Settings) -> int:
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        for res in results:
            print(f"query: {res.query}")
            if res.error:
                print(f"  error: {res.error}")
                continue
            for rank, hit in enumerate(res.hits, 1):
                print(f"  {rank:>3}  score={hit.score:.4f}  id={hit.id}  {hit.path}")
    if getattr(args, "show", None):
        from ris.producer.grid import draw_grid

        print(
            f"grid saved to {draw_grid([r for r in results if not r.error], args.show, settings)}"
        )
    return 1 if any(r.error for r in results) else 0


def _search_filter(args: argparse.Namespace) -> Any:
    from ris.common.filters import SearchFilter

    return SearchFilter.build(
        args.under, args.ingested_after, args.ingested_before, args.min_width, args.min_height
    )


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from ris.producer.batch import write_results_csv
    from ris.producer.client import QueryError, QueryResult
    from ris.producer.inputs import expand_inputs

    producer = _producer(settings)
    top_k = args.top_k or settings.top_k
    filters = _search_filter(args)
    images = list(expand_inputs(args.images))  # a folder of queries is walked
    if args.no_wait:
        for path in images:
            try:
                task = producer.submit_query(path, top_k, args.queue, args.collection, filters)
                print(f"{task}  {path}")
            except QueryError as exc:
                print(f"error: {exc}", file=sys.stderr)
        return 0
    with tqdm(total=len(images), unit="query", disable=len(images) < 2 or not args.out) as bar:
        results: list[QueryResult] = producer.search(
            images,
            top_k,
            args.queue,
            args.timeout,
            args.collection,
            filters,
            on_result=lambda _: bar.update(),
        )
    if args.out:
        rows = write_results_csv(results, args.out)
        failed = [r for r in results if r.error]
        print(f"{len(results)} queries, {rows} matches written to {args.out}")
        for r in failed[:20]:
            print(f"  FAILED {r.query}: {r.error}")
        return 1 if failed else 0
    return _show_results(results, args, settings)


def cmd_result(args: argparse.Namespace, settings: Settings) -> int:
    producer = _producer(settings)
    return _show_results([producer.collect(t, args.timeout) for t in args.task_ids], args, settings)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from ris.workers.main import run_worker

    run_worker(settings, args.queue, args.concurrency, args.loglevel, args.hostname)
    return 0


def cmd_flower(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from ris.producer.flower import run_flower

    run_flower(settings, Path(args.db))
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from ris.producer.api.serve import run_api

    overrides = {k: v for k, v in (("api_host", args.host), ("api_port", args.port)) if v}
    run_api(settings.model_copy(update=overrides))
    return 0


def cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    from ris.common.store import path_id
    from ris.producer.inputs import expand_inputs

    store = _producer(settings).store
    if args.prefix:
        # A trailing slash survives: "dir/" means the folder only.
        prefixes = [
            p if "://" in p else os.path.abspath(p) + ("/" if p.endswith("/") else "")
            for p in args.paths
        ]
        deleted = sum(store.delete_prefix(p) for p in prefixes)
    else:
        deleted = store.delete_ids(path_id(p) for p in expand_inputs(args.paths))
    print(f"deleted {deleted} row(s); {store.count()} remain")
    return 0


def cmd_info(args: argparse.Namespace, settings: Settings) -> int:
    producer = _producer(settings)
    store = producer.store
    print(
        json.dumps(
            {
                "collection": store.name,
                "model": store.model,
                "dim": store.dim,
                "metric": settings.metric,
                "index": store.index(),
                "rows": store.count(),
                "milvus": settings.milvus_uri,
                "workers": producer.workers_online(),
                "lite_servers": _lite_servers(settings),
            },
            indent=2,
        )
    )
    return 0


def _lite_servers(settings: Settings) -> list[dict[str, Any]]:
    from ris.common.store.lite_server import list_lite_servers

    return [asdict(s) for s in list_lite_servers(settings.lite_registry_dir)]


def cmd_lite(args: argparse.Namespace, settings: Settings) -> int:
    from ris.common.store.lite_server import list_lite_servers, stop_lite_server

    if args.action == "list":
        for server in list_lite_servers(settings.lite_registry_dir):
            print(f"{server.db}  {server.address}  pid {server.pid}")
        return 0
    if args.all:
        dbs = [s.db for s in list_lite_servers(settings.lite_registry_dir)]
    else:
        dbs = args.uris or [settings.milvus_uri]
    for db in dbs:
        stopped = stop_lite_server(db)
        print(f"{'stopped' if stopped else 'no server running for'} {os.path.abspath(db)}")
    return 0


def cmd_drop(args: argparse.Namespace, settings: Settings) -> int:
    if not args.yes:
        print("refusing to drop without --yes", file=sys.stderr)
        return 2
    from ris.common.store import drop_collection

    drop_collection(settings)
    print(f"dropped collection {settings.collection!r}")
    return 0


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from ris.producer.evaluation import evaluate, evaluate_near_duplicates, load_dataset

    producer = _producer(settings)
    if not producer.workers_online():
        print(
            f"warning: no worker answers; start one with `ris worker --queue {args.queue}`",
            file=sys.stderr,
        )
    if args.near_duplicates:
        import tempfile
        from pathlib import Path

        from ris.producer.inputs import expand_inputs

        distractors = list(expand_inputs(args.distractors)) if args.distractors else []
        with tempfile.TemporaryDirectory(prefix="ris-neardup-") as tmp:
            nd = evaluate_near_duplicates(
                producer, args.dataset, Path(tmp), distractors, args.queue
            )
        if args.json:
            print(json.dumps({**asdict(nd), "overall": nd.overall}, indent=2))
            return 0
        print(
            f"near duplicates: {nd.originals} originals among {nd.distractors} distractors, "
            f"model {nd.model}"
        )
        for name, acc in nd.top1.items():
            print(f"  {name:<14} top-1 {acc:.3f}")
        print(f"  {'mean':<14} top-1 {nd.overall:.3f}")
        return 0
    report = evaluate(producer, load_dataset(args.dataset), args.dataset, args.top_k, args.queue)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
        return 0
    print(
        f"model {report.model}: {report.candidates} indexed, {report.queries} queries, "
        f"top-{report.top_k}"
    )
    for n, value in report.precision.items():
        print(f"  precision@{n:<3} {value:.3f}")
    print(f"  mHR@{report.top_k:<7} {report.mean_hit_ratio:.3f}")
    print(f"  mAP@{report.top_k:<7} {report.mean_average_precision:.3f}")
    print(f"  ingest {report.ingest_per_s:.1f} images/s, queries {report.queries_per_s:.1f}/s")
    _print_failures(report.failed)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from ris.producer.demo import run_demo

    return run_demo(settings, args.folder, args.out)


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    queues = settings.queues
    parser = argparse.ArgumentParser(prog="ris", description="Distributed reverse image search.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="index images: folders, globs, list files (.txt/.csv)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--queue", default=queues[0], choices=queues)
    p.add_argument("--job-id", help="reuse a job id (resume an interrupted ingest)")
    p.add_argument("--collection", help="index into this collection (default RIS_COLLECTION)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for the job at most (default: no limit; with no worker on the "
        "queue, ingest gives up after RIS_NO_WORKER_WAIT_S)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("sync", help="index new and changed files under folders, drop rows gone")
    p.add_argument("roots", nargs="+", metavar="ROOT")
    p.add_argument("--dry-run", action="store_true", help="only report what would change")
    p.add_argument("--queue", default=queues[0], choices=queues)
    p.add_argument("--collection", help="sync this collection (default RIS_COLLECTION)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("duplicates", help="groups of near-duplicate images in the collection")
    p.add_argument("--threshold", type=float, help="score for a pair (RIS_DUPLICATES_THRESHOLD)")
    p.add_argument("--under", metavar="DIR", help="only images under this folder")
    p.add_argument("--out", metavar="GROUPS.csv|json", help="write the groups to a file")
    p.add_argument("--queue", default=queues[0], choices=queues)
    p.add_argument("--collection", help="this collection (default RIS_COLLECTION)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per slice at most")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_duplicates)

    p = sub.add_parser("status", help="progress and failures of an ingest job")
    p.add_argument("job")
    p.add_argument("--failures", action="store_true", help="list every failure")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("search", help="find the indexed images most similar to each image")
    p.add_argument("images", nargs="+")
    p.add_argument(
        "-k", "--top-k", type=_top_k, default=None, help=f"matches per query (1 to {MAX_TOP_K})"
    )
    p.add_argument("--queue", default=queues[0], choices=queues)
    p.add_argument("--no-wait", action="store_true", help="print task ids; see `ris result`")
    p.add_argument("--collection", help="search this collection (default RIS_COLLECTION)")
    p.add_argument("--show", metavar="GRID.png", help="draw the query and matches to a picture")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--out", metavar="RESULTS.csv", help="write query,rank,score,match rows")
    p.add_argument("--under", metavar="DIR", help="only matches under this folder")
    p.add_argument("--ingested-after", metavar="ISO", help="only matches indexed at/after")
    p.add_argument("--ingested-before", metavar="ISO", help="only matches indexed before")
    p.add_argument("--min-width", type=int, metavar="PX", help="only matches at least this wide")
    p.add_argument("--min-height", type=int, metavar="PX", help="only matches this tall or more")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("result", help="fetch the results of query tasks submitted earlier")
    p.add_argument("task_ids", nargs="+")
    p.add_argument("--show", metavar="GRID.png")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(func=cmd_result)

    p = sub.add_parser("worker", help="run a Celery worker")
    p.add_argument(
        "--queue",
        action="append",
        choices=queues,
        help=f"queue(s) to consume (default {queues[0]})",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        help="worker processes (prefork pool, default 1), or tasks in flight (threads pool, "
        "the default with RIS_DEVICE=cuda: 8)",
    )
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--hostname", help="worker name, e.g. cpu1@%%h")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("flower", help="watch workers, queues and tasks in Flower (web UI)")
    p.add_argument("--db", default="ris_data/flower.db", help="Flower's persistent state")
    p.set_defaults(func=cmd_flower)

    p = sub.add_parser("serve", help="HTTP API and web page (port 8000; RIS_API_*)")
    p.add_argument("--host", help="listen address (default RIS_API_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default RIS_API_PORT, 8000)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("delete", help="remove images from the index")
    p.add_argument("paths", nargs="+")
    p.add_argument("--prefix", action="store_true", help="delete every path under each prefix")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("info", help="collection, model and row count")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("lite", help="list or stop the background Milvus Lite servers")
    p.add_argument("action", choices=("list", "stop"))
    p.add_argument("uris", nargs="*", help="the .db files to stop (default RIS_MILVUS_URI)")
    p.add_argument("--all", action="store_true", help="stop every server listed")
    p.set_defaults(func=cmd_lite)

    p = sub.add_parser("drop", help="drop the collection (all indexed images)")
    p.add_argument("--yes", action="store_true")
    p.set_defaults(func=cmd_drop)

    p = sub.add_parser("eval", help="retrieval quality on a labelled dataset (or near duplicates)")
    p.add_argument(
        "dataset",
        help="train/ + test/ folders, a CSV (path,label[,split]), or with "
        "--near-duplicates a folder of originals",
    )
    p.add_argument("-k", "--top-k", type=_top_k, default=10, help=f"1 to {MAX_TOP_K}")
    p.add_argument("--queue", default=queues[0], choices=queues)
    p.add_argument(
        "--near-duplicates",
        action="store_true",
        help="query with transformed copies of each image; top-1 per transform",
    )
    p.add_argument("--distractors", nargs="*", help="more images to index (near-duplicate mode)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="index sample photos and answer a query, all local")
    p.add_argument("folder", nargs="?", help="images to index (default: bundled sample photos)")
    p.add_argument("--out", default="ris_data/demo_grid.png", help="result grid picture")
    p.set_defaults(func=cmd_demo)
    return parser


# Commands that fail fast, in one line, when Redis does not answer.
_NEEDS_REDIS = frozenset({"ingest", "status", "search", "result"})
# What a command needs beyond the base install, and the extra that brings it.
_EXTRAS = {
    "serve": ("api", ("fastapi", "uvicorn")),
    "flower": ("flower", ("flower",)),
    "demo": ("demo", ("towhee", "onnxruntime", "skimage")),
}


def _missing_extra(command: str, settings: Settings) -> str | None:
    """One line naming the extra to install, if ``command`` needs modules that are missing."""
    from importlib.util import find_spec

    extra, modules = _EXTRAS.get(command, ("", ()))
    if command == "worker":
        runtime = "onnxruntime" if settings.runtime == "onnx" else "torch"
        extra = "gpu" if settings.device == "cuda" else "worker"
        modules = ("towhee", runtime)
    missing = [m for m in modules if find_spec(m) is None]
    if not missing:
        return None
    return (
        f"error: `ris {command}` needs the {extra} extra: pip install 'ris[{extra}]' "
        f"(missing: {', '.join(missing)})"
    )


def _settings() -> Settings:
    """The settings from the environment; an invalid one exits with one line naming it."""
    from pydantic import ValidationError

    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"RIS_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise SystemExit(f"error: invalid setting: {problems}") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ris`` console script."""
    settings = _settings()  # read once here, passed to the command
    args = build_parser(settings).parse_args(argv)
    if args.command == "worker" and not args.queue:
        args.queue = settings.queues[:1]
    if missing := _missing_extra(args.command, settings):
        print(missing, file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO
        if args.verbose or args.command in ("worker", "serve")
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command in _NEEDS_REDIS:
            from ris.producer.local_redis import check_redis

            check_redis(settings.redis_url.get_secret_value(), settings.redis_check_timeout_s)
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from ris.common.errors import StoreError
        from ris.common.filters import FilterError
        from ris.common.store.lite_server import LiteServerError
        from ris.producer.evaluation import DatasetError
        from ris.producer.sync import SyncError

        if isinstance(
            exc,
            (
                StoreError,
                LiteServerError,
                TimeoutError,
                ConnectionError,
                DatasetError,
                FilterError,
                SyncError,
            ),
        ):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
