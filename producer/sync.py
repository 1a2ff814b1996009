"""``ris sync``: bring the index in step with folders on disk.

One walk (a ``stat`` per file) and one scan of the rows stored under each root (paths, sizes
and mtimes) decide everything: a file not stored is new, one whose size or mtime differs is
changed (the worker hashes it: same content only refreshes the stored stat), a row whose file
is gone is deleted. Unchanged files are neither read nor hashed nor sent to a worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ris.common.errors import SyncError
from ris.common.store import ImageStore, path_id
from ris.producer.inputs import walk_folder

if TYPE_CHECKING:
    from ris.producer.client import Producer


@dataclass
class SyncPlan:
    """What a sync does: files to index, rows to delete, and how many files are unchanged."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    gone: dict[int, str] = field(default_factory=dict)  # id -> path of rows to delete
    unchanged: int = 0
    # Rows stored without size/mtime (a collection created before them): their files are
    # sent to the workers, which hash them, until the collection is re-created.
    without_stat: int = 0

    @property
    def to_index(self) -> list[str]:
        return self.new + self.changed


def walk_stat(root: str) -> Iterator[tuple[str, int, int]]:
    """``(absolute path, size, mtime_ns)`` of every image file under ``root``: the files that
    ``ris ingest ROOT`` indexes, found by the same walk (links to folders followed, each
    folder once)."""
    for path in walk_folder(root):
        try:
            st = os.stat(path)  # follows a symlinked file, as the worker's read does
        except OSError:
            continue  # a broken link: not a file to index
        yield path, st.st_size, st.st_mtime_ns


def plan_sync(store: ImageStore, roots: list[str]) -> SyncPlan:
    """Compare the files under ``roots`` with the rows stored under them."""
    plan = SyncPlan()
    seen: set[int] = set()
    for raw in roots:
        root = os.path.abspath(os.path.expanduser(raw))
        if not os.path.isdir(root):
            # Never read a missing root as "every file deleted" (an unmounted disk).
            raise SyncError(f"{raw}: not a folder (nothing synced)")
        stored = store.rows_under(root)
        for path, size, mtime in walk_stat(root):
            pid = path_id(path)
            if pid in seen:
                continue
            seen.add(pid)
            row = stored.pop(pid, None)
            if row is None:
                plan.new.append(path)
            elif row[1:] == (size, mtime):
                plan.unchanged += 1
            else:
                plan.changed.append(path)
                plan.without_stat += row[1] < 0
        for pid, (path, _, _) in stored.items():
            # Only rows whose file is really gone: not one skipped by the walk (a folder that
            # could not be read, a file named without an image extension).
            if pid not in seen and not os.path.lexists(path):
                plan.gone[pid] = path
    plan.new.sort()
    plan.changed.sort()
    return plan


def describe(plan: SyncPlan) -> str:
    """One line of counts."""
    return (
        f"{len(plan.new)} new, {len(plan.changed)} changed, {plan.unchanged} unchanged, "
        f"{len(plan.gone)} gone"
    )


def stat_note(plan: SyncPlan) -> str | None:
    """What to do when the collection predates the size/mtime fields."""
    if not plan.without_stat:
        return None
    return (
        f"{plan.without_stat} rows have no stored size/mtime (collection created before them): "
        "their files are hashed on every sync; `ris drop --yes` and ingest again to store them"
    )


@dataclass
class SyncResult:
    """What :func:`apply_sync` did: rows deleted, and the ingest job of the files to index
    (None when there were none)."""

    deleted: int
    job_id: str | None


def apply_sync(
    producer: Producer, store: ImageStore, plan: SyncPlan, queue: str, collection: str | None
) -> SyncResult:
    """Carry out ``plan``: delete the rows of files gone, enqueue the new and changed files
    (the CLI and the API both sync through here)."""
    deleted = store.delete_ids(plan.gone) if plan.gone else 0
    job_id = (
        producer.ingest(plan.to_index, queue=queue, collection=collection)
        if plan.to_index
        else None
    )
    return SyncResult(deleted, job_id)
