"""``ris worker``: start a Celery worker. The ``ris`` group loads this command only when it runs,
and the command imports the worker stack only then, so no other command pays for it."""

from __future__ import annotations

import click

from ris.common.settings import Settings
from ris.producer.cli.options import QUEUE, pass_settings


@click.command()
@click.option(
    "--queue",
    "queues",
    type=QUEUE,
    multiple=True,
    help="queue to consume, repeat for several (default: first of RIS_QUEUES)",
)
@click.option(
    "--concurrency",
    type=int,
    help="worker processes (prefork pool, default 1), or tasks in flight (threads pool, the "
    "default with RIS_DEVICE=cuda: 8)",
)
@click.option("--loglevel", default="INFO", help="Celery's log level")
@click.option("--hostname", help="worker name, e.g. cpu1@%h")
@pass_settings
def worker(
    settings: Settings,
    queues: tuple[str, ...],
    concurrency: int | None,
    loglevel: str,
    hostname: str | None,
) -> int:
    """run a Celery worker"""
    from ris.workers.main import run_worker

    run_worker(settings, list(queues) or settings.queues[:1], concurrency, loglevel, hostname)
    return 0
