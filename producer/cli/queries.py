"""``ris search``, ``ris result`` and ``ris duplicates``: ask the index."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from ris.common.defaults import MAX_TOP_K
from ris.common.settings import Settings
from ris.producer import reports
from ris.producer.cli.options import (
    TOP_K,
    collection_option,
    json_option,
    pass_settings,
    print_lines,
    queue_option,
    quiet_option,
    timeout_option,
)

if TYPE_CHECKING:
    from ris.producer.client import QueryResult

show_option = click.option("--show", metavar="GRID.png", help="draw the query and matches")


def _show(results: list[QueryResult], as_json: bool, grid: str | None, settings: Settings) -> int:
    """Print the results (and draw them to ``grid``); 1 when a query failed."""
    if as_json:
        print(json.dumps(reports.results_document(results), indent=2))
    else:
        print_lines(reports.result_lines(results))
    if grid:
        from ris.producer.grid import draw_grid

        print(f"grid saved to {draw_grid([r for r in results if not r.error], grid, settings)}")
    return 1 if any(r.error for r in results) else 0


@click.command()
@click.argument("images", nargs=-1, required=True)
@click.option("-k", "--top-k", type=TOP_K, help=f"matches per query (1 to {MAX_TOP_K})")
@queue_option
@click.option("--no-wait", is_flag=True, help="print task ids; see `ris result`")
@collection_option("search this collection (default RIS_COLLECTION)")
@show_option
@json_option
@timeout_option(120.0, "seconds to wait for each answer")
@click.option("--out", metavar="RESULTS.csv", help="write query,rank,score,match rows")
@click.option("--under", metavar="DIR", help="only matches under this folder")
@click.option("--ingested-after", metavar="ISO", help="only matches indexed at/after")
@click.option("--ingested-before", metavar="ISO", help="only matches indexed before")
@click.option("--min-width", type=int, metavar="PX", help="only matches at least this wide")
@click.option("--min-height", type=int, metavar="PX", help="only matches this tall or more")
@pass_settings
def search(
    settings: Settings,
    images: tuple[str, ...],
    top_k: int | None,
    queue: str,
    no_wait: bool,
    collection: str | None,
    show: str | None,
    as_json: bool,
    timeout: float,
    out: str | None,
    under: str | None,
    ingested_after: str | None,
    ingested_before: str | None,
    min_width: int | None,
    min_height: int | None,
) -> int:
    """find the indexed images most similar to each image"""
    from tqdm import tqdm

    from ris.common.errors import QueryError
    from ris.common.filters import SearchFilter
    from ris.producer.batch import write_results_csv
    from ris.producer.client import Producer
    from ris.producer.inputs import expand_inputs

    producer = Producer(settings)
    k = top_k or settings.top_k
    filters = SearchFilter.build(under, ingested_after, ingested_before, min_width, min_height)
    paths = list(expand_inputs(images))  # a folder of queries is walked
    if no_wait:
        for path in paths:
            try:
                task = producer.submit_query(path, k, queue, collection, filters)
                print(f"{task}  {path}")
            except QueryError as exc:  # this query only: the others are still sent
                click.echo(f"error: {exc}", err=True)
        return 0
    with tqdm(total=len(paths), unit="query", disable=len(paths) < 2 or not out) as bar:
        results = producer.search(
            paths, k, queue, timeout, collection, filters, on_result=lambda _: bar.update()
        )
    if out:
        rows = write_results_csv(results, out)
        print_lines(reports.written_results_lines(results, rows, out))
        return 1 if any(r.error for r in results) else 0
    return _show(results, as_json, show, settings)


@click.command()
@click.argument("task_ids", nargs=-1, required=True)
@show_option
@json_option
@timeout_option(120.0, "seconds to wait for each answer")
@pass_settings
def result(
    settings: Settings, task_ids: tuple[str, ...], show: str | None, as_json: bool, timeout: float
) -> int:
    """fetch the results of query tasks submitted earlier"""
    from ris.producer.client import Producer

    producer = Producer(settings)
    return _show([producer.collect(t, timeout) for t in task_ids], as_json, show, settings)


@click.command()
@click.option("--threshold", type=float, help="score for a pair (RIS_DUPLICATES_THRESHOLD)")
@click.option("--under", metavar="DIR", help="only images under this folder")
@click.option("--out", metavar="GROUPS.csv|json", help="write the groups to a file")
@queue_option
@collection_option("this collection (default RIS_COLLECTION)")
@timeout_option(600.0, "seconds per slice at most")
@quiet_option
@pass_settings
def duplicates(
    settings: Settings,
    threshold: float | None,
    under: str | None,
    out: str | None,
    queue: str,
    collection: str | None,
    timeout: float,
    quiet: bool,
) -> int:
    """groups of near-duplicate images in the collection"""
    from tqdm import tqdm

    from ris.common.filters import SearchFilter
    from ris.producer.client import Producer
    from ris.producer.duplicates import find_duplicates, write_groups

    producer = Producer(settings)
    score = settings.duplicates_threshold if threshold is None else threshold
    filters = SearchFilter.build(under=under) if under else None
    with tqdm(unit="slice", disable=quiet) as bar:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        found = find_duplicates(producer, score, filters, queue, collection, timeout, update)
    print(reports.duplicates_summary(found, score))
    if out:
        write_groups(found, out)
        print(f"groups written to {out}")
    else:
        print_lines(reports.group_lines(found.groups))
    return 0
