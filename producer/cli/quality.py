"""``ris eval``: retrieval quality on a labelled dataset, or on near duplicates."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from ris.common.defaults import MAX_TOP_K
from ris.common.settings import Settings
from ris.producer import reports
from ris.producer.cli.options import TOP_K, json_option, pass_settings, print_lines, queue_option


@click.command("eval")
@click.argument("dataset")
@click.option("-k", "--top-k", type=TOP_K, default=10, help=f"1 to {MAX_TOP_K}")
@queue_option
@click.option(
    "--near-duplicates",
    is_flag=True,
    help="query with transformed copies of each image; top-1 per transform",
)
@click.option(
    "--distractors",
    multiple=True,
    help="more images to index (near-duplicate mode); repeat for several",
)
@json_option
@pass_settings
def evaluate(
    settings: Settings,
    dataset: str,
    top_k: int,
    queue: str,
    near_duplicates: bool,
    distractors: tuple[str, ...],
    as_json: bool,
) -> int:
    """retrieval quality on a labelled dataset (or near duplicates)

    DATASET: train/ + test/ folders, a CSV (path,label[,split]), or with --near-duplicates a
    folder of originals.
    """
    from ris.producer.client import Producer
    from ris.producer.evaluation import evaluate as evaluate_dataset
    from ris.producer.evaluation import evaluate_near_duplicates, load_dataset

    producer = Producer(settings)
    if not producer.workers_online():
        click.echo(reports.no_worker_warning(queue), err=True)
    if near_duplicates:
        import tempfile
        from pathlib import Path

        from ris.producer.inputs import expand_inputs

        extra = list(expand_inputs(distractors))
        with tempfile.TemporaryDirectory(prefix="ris-neardup-") as tmp:
            nd = evaluate_near_duplicates(producer, dataset, Path(tmp), extra, queue)
        if as_json:
            print(json.dumps({**asdict(nd), "overall": nd.overall}, indent=2))
        else:
            print_lines(reports.near_duplicate_lines(nd))
        return 0
    report = evaluate_dataset(producer, load_dataset(dataset), dataset, top_k, queue)
    if as_json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_lines(reports.evaluation_lines(report))
    return 0
