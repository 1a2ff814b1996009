"""``ris serve``, ``ris flower``, ``ris metrics`` and ``ris demo``: what runs until it is
stopped, or shows."""

from __future__ import annotations

from pathlib import Path

import click

from ris.common.settings import Settings
from ris.producer.cli.options import pass_settings


@click.command()
@click.option("--host", help="listen address (default RIS_API_HOST, 127.0.0.1)")
@click.option("--port", type=int, help="port (default RIS_API_PORT, 8000)")
@pass_settings
def serve(settings: Settings, host: str | None, port: int | None) -> int:
    """HTTP API and web page (port 8000; RIS_API_*)"""
    from ris.producer.api.serve import run_api

    overrides = {k: v for k, v in (("api_host", host), ("api_port", port)) if v}
    run_api(settings.model_copy(update=overrides))
    return 0


@click.command()
@click.option("--db", default="ris_data/flower.db", help="Flower's persistent state")
@pass_settings
def flower(settings: Settings, db: str) -> int:
    """watch workers, queues and tasks in Flower (web UI)"""
    from ris.producer.flower import run_flower

    run_flower(settings, Path(db))
    return 0


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="listen address")
@pass_settings
def metrics(settings: Settings, host: str) -> int:
    """serve queue and job gauges for Prometheus (port 9809)

    Messages waiting per queue, running jobs and their pending paths, read from Redis at each
    scrape (RIS_METRICS_EXPORTER_PORT): what an autoscaler reads while no worker runs.
    """
    from ris.common.metrics import serve_queue_gauges

    click.echo(f"queue gauges on {host}:{settings.metrics_exporter_port}/metrics")
    serve_queue_gauges(settings, host)
    return 0


@click.command()
@click.argument("folder", required=False)
@click.option("--out", default="ris_data/demo_grid.png", help="result grid picture")
@pass_settings
def demo(settings: Settings, folder: str | None, out: str) -> int:
    """index sample photos and answer a query, all local

    FOLDER: images to index (default: bundled sample photos).
    """
    from ris.producer.demo import run_demo

    return run_demo(settings, folder, out)
