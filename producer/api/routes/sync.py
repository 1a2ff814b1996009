"""``POST /api/sync``: bring the index in step with folders, as ``ris sync`` does."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from ris.common.errors import InvalidInput
from ris.producer.api.deps import AccessDep, ProducerDep, SettingsDep, queue_of
from ris.producer.api.routes.jobs import job_out
from ris.producer.api.schemas import SyncIn, SyncOut
from ris.producer.sync import apply_sync, plan_sync, stat_note

log = logging.getLogger("ris.api")
router = APIRouter()


@router.post("/sync", response_model=SyncOut, summary="Index new and changed files, drop gone")
def sync(body: SyncIn, settings: SettingsDep, producer: ProducerDep, access: AccessDep) -> SyncOut:
    """Plan (one walk, one scan of the stored rows), then unless ``dry_run``: delete the rows
    of files gone and ingest the new and changed files."""
    target_queue = queue_of(settings, body.queue)
    for root in body.roots:
        if "://" in root:
            raise InvalidInput(f"{root}: sync takes folders, not URLs")
        access.check(root)
    collection = body.collection or settings.collection
    store = producer.store_for(collection, create=True)
    plan = plan_sync(store, body.roots)  # SyncError: 422
    out = SyncOut(
        new=len(plan.new),
        changed=len(plan.changed),
        unchanged=plan.unchanged,
        deleted=0,
        gone=len(plan.gone),
        note=stat_note(plan),
    )
    if body.dry_run:
        return out
    done = apply_sync(producer, store, plan, target_queue, collection)
    out.deleted = done.deleted
    if done.job_id:
        out.job = job_out(producer, done.job_id, failures=False)
    log.info("sync %s: %s", body.roots, out.model_dump(exclude={"job"}))
    return out
