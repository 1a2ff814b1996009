"""``ris ingest``, ``ris sync`` and ``ris status``: index images, and follow the jobs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from ris.common.settings import Settings
from ris.producer import reports
from ris.producer.cli.options import (
    collection_option,
    json_option,
    pass_settings,
    print_lines,
    queue_option,
    quiet_option,
    timeout_option,
)

if TYPE_CHECKING:
    from ris.common.jobs import JobProgress


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@queue_option
@click.option("--job-id", help="reuse a job id (resume an interrupted ingest)")
@collection_option("index into this collection (default RIS_COLLECTION)")
@click.option("--no-wait", is_flag=True, help="print the job id and return")
@timeout_option(
    None,
    "seconds to wait for the job at most (default: no limit; with no worker on the queue, "
    "ingest gives up after RIS_NO_WORKER_WAIT_S)",
)
@quiet_option
@pass_settings
def ingest(
    settings: Settings,
    inputs: tuple[str, ...],
    queue: str,
    job_id: str | None,
    collection: str | None,
    no_wait: bool,
    timeout: float | None,
    quiet: bool,
) -> int:
    """index images: folders, globs, list files (.txt/.csv)"""
    from tqdm import tqdm

    from ris.producer.client import Producer
    from ris.producer.inputs import expand_inputs
    from ris.producer.interrupts import first_interrupt_stops

    producer = Producer(settings)
    job_id = job_id or producer.job_id_for(list(inputs), queue, collection)
    if producer.tracker.is_complete(job_id):
        print(f"job {job_id}: enqueued already; waiting for it", flush=True)
    else:
        resumed = producer.tracker.resume_point(job_id)
        if resumed:
            print(f"job {job_id}: resuming after {resumed[1]} paths already enqueued", flush=True)
        print(f"job {job_id}: enqueueing to queue {queue!r}", flush=True)
    with first_interrupt_stops() as interrupted:
        producer.ingest(
            expand_inputs(inputs),
            queue=queue,
            job_id=job_id,
            collection=collection,
            should_stop=interrupted,
        )
    if interrupted():
        total = producer.progress(job_id).total
        print(
            f"interrupted: job {job_id}: {total} paths enqueued; run the same command again "
            "to enqueue the rest",
            flush=True,
        )
        return 130
    progress = producer.progress(job_id)
    print(f"job {job_id}: {progress.total} paths enqueued", flush=True)
    if no_wait or progress.total == 0:
        return 0
    if not producer.workers_online():
        click.echo(reports.no_worker_warning(queue), err=True)
    with tqdm(total=progress.total, unit="img", disable=quiet) as bar:
        resent = [progress.resent]

        def update(p: JobProgress) -> None:
            bar.total = p.total
            bar.set_postfix(failed=p.failed, unchanged=p.unchanged, refresh=False)
            bar.update(p.processed - bar.n)
            if p.resent > resent[0]:  # the cluster's recovery (ris.workers.recovery)
                resent[0] = p.resent
                bar.write(f"job {job_id}: {p.resent} paths of lost chunks sent again so far")

        # No worker on the queue: NoWorkerError, reported once the bar is closed.
        progress = producer.wait(job_id, timeout_s=timeout, on_progress=update, queue=queue)
    print(reports.progress_line(progress))
    print_lines(reports.failure_lines(producer.failures(job_id)))
    return 0


@click.command()
@click.argument("roots", nargs=-1, required=True, metavar="ROOT...")
@click.option("--dry-run", is_flag=True, help="only report what would change")
@queue_option
@collection_option("sync this collection (default RIS_COLLECTION)")
@timeout_option(None, "seconds to wait at most")
@quiet_option
@pass_settings
def sync(
    settings: Settings,
    roots: tuple[str, ...],
    dry_run: bool,
    queue: str,
    collection: str | None,
    timeout: float | None,
    quiet: bool,
) -> int:
    """index new and changed files under folders, drop rows gone"""
    from tqdm import tqdm

    from ris.producer.client import Producer
    from ris.producer.sync import apply_sync, describe, plan_sync, stat_note

    producer = Producer(settings)
    store = producer.store_for(collection, create=True)
    plan = plan_sync(store, list(roots))
    print(f"sync: {describe(plan)}", flush=True)
    if note := stat_note(plan):
        click.echo(f"note: {note}", err=True)
    if dry_run:
        print_lines(reports.sync_preview_lines(plan))
        return 0
    done = apply_sync(producer, store, plan, queue, collection)
    print(f"deleted {done.deleted} row(s) of files gone", flush=True)
    if done.job_id is None:
        return 0
    print(f"job {done.job_id}: {len(plan.to_index)} paths enqueued", flush=True)
    with tqdm(total=len(plan.to_index), unit="img", disable=quiet) as bar:
        progress = producer.wait(
            done.job_id, timeout_s=timeout, on_progress=lambda p: bar.update(p.processed - bar.n)
        )
    print(reports.progress_line(progress))
    print_lines(reports.failure_lines(producer.failures(done.job_id)))
    return 0


@click.command()
@click.argument("job")
@click.option("--failures", "every_failure", is_flag=True, help="list every failure")
@json_option
@pass_settings
def status(settings: Settings, job: str, every_failure: bool, as_json: bool) -> int:
    """progress and failures of an ingest job"""
    # Redis only: no Celery app, no Milvus client (pymilvus imports pandas), so it answers fast.
    from ris.common.jobs import JobTracker, redis_client

    tracker = JobTracker(redis_client(settings), settings.result_ttl_s)
    try:
        progress = tracker.progress(job)
    except KeyError as exc:
        click.echo(exc.args[0], err=True)
        return 2
    failures = tracker.failures(job)
    if as_json:
        print(json.dumps(reports.status_document(progress, failures), indent=2))
        return 0
    print(reports.progress_line(progress))
    print_lines(reports.failure_lines(failures, limit=None if every_failure else 20))
    return 0
