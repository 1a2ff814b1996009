"""``ris duplicates``: near-duplicate groups of a collection, from worker tasks over slices."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from celery.result import AsyncResult

from ris.common.contracts import DUPLICATES_TASK, DuplicatesAnswer, DuplicatesSlice
from ris.common.duplicates import DUPLICATES_TOP_K, group_pairs
from ris.common.errors import DuplicatesError
from ris.common.filters import SearchFilter
from ris.producer.client import Producer, poll_result


@dataclass
class DuplicateGroups:
    """Groups of near-duplicate paths (largest first) and what was searched."""

    groups: list[list[str]] = field(default_factory=list)
    images: int = 0
    pairs: int = 0


def find_duplicates(
    producer: Producer,
    threshold: float,
    filters: SearchFilter | None = None,
    queue: str = "cpu",
    collection: str | None = None,
    timeout_s: float | None = 600.0,
    on_slice: Callable[[int, int], None] | None = None,
) -> DuplicateGroups:
    """Send one task per slice of the ids matching ``filters``, merge the pairs found into
    groups; ``on_slice(done, total)`` after each slice."""
    settings = producer.settings
    store = producer.store_for(collection)
    expression = filters.expression() if filters else ""
    ids = store.ids(expression)
    size = settings.duplicates_slice
    slices = [ids[i : i + size] for i in range(0, len(ids), size)]
    target = producer.target(collection)
    task_filters = filters.to_task() if filters else None
    tasks = [
        producer.app.send_task(
            DUPLICATES_TASK,
            args=(
                DuplicatesSlice(
                    ids=part,
                    threshold=threshold,
                    top_k=DUPLICATES_TOP_K,
                    filters=task_filters,
                    **target,
                ).model_dump(mode="json"),
            ),
            queue=queue,
            argsrepr=f"(slice {n + 1}/{len(slices)}: {len(part)} ids)",
        )
        for n, part in enumerate(slices)
    ]
    pairs: list[tuple[int, int, float]] = []
    for done, task in enumerate(tasks, 1):
        result = AsyncResult(task.id, app=producer.app)
        answer = DuplicatesAnswer.model_validate(poll_result(result, timeout_s))
        result.forget()
        if answer.error:
            raise DuplicatesError(answer.error)
        pairs.extend(answer.pairs)
        if on_slice:
            on_slice(done, len(tasks))
    id_groups = group_pairs(pairs)
    paths = store.resolve([i for g in id_groups for i in g])
    groups = [sorted(str(paths[i]["path"]) for i in g if i in paths) for g in id_groups]
    unique = len({(a, b) for a, b, _ in pairs})  # a pair is found from both of its ends
    return DuplicateGroups([g for g in groups if len(g) > 1], len(ids), unique)


def write_groups(found: DuplicateGroups, out: str) -> None:
    """``.json``: a list of groups (lists of paths); otherwise CSV rows ``group,path``."""
    tmp = f"{out}.part"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        if out.lower().endswith(".json"):
            json.dump(found.groups, fh, indent=1)
        else:
            writer = csv.writer(fh)
            writer.writerow(("group", "path"))
            for n, group in enumerate(found.groups, 1):
                writer.writerows((n, path) for path in group)
    os.replace(tmp, out)
