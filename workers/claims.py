"""Claims on row ids in Redis, so that a new image's row is inserted by one writer only.

A chunk inserts the rows its look-up found absent, because a Milvus upsert is a delete plus an
insert that makes a server re-index (:meth:`ImageStore.upsert`). Two chunks holding the same
new path at once (one folder ingested twice at the same time) would both find it absent and
both insert it: two rows. So a chunk claims its ids before it looks them up and holds each
claim until that row is written. A row may be inserted only under a claim taken before the
look-up that found it absent; rows whose ids another chunk holds are upserted later, once
their claims are free, under claims of their own (an upsert sent before the holder's insert
would be applied first and leave two rows).

A chunk never waits while it holds claims (it writes and releases what it got first, then
takes the rest all at once or not at all): two chunks with overlapping ids cannot deadlock.

Claims are leases (:mod:`ris.workers.leases`): each lives ``RIS_LEASE_S`` unless its holder's
process renews it, so a killed, frozen or cut-off holder frees its ids within one lease. Each
execution of a chunk claims under an owner token of its own, so a lapsed claim can never be
renewed or retaken as if it had been held all along.

Fencing. Milvus has no conditional write, so a stale holder cannot be refused by the store;
instead a holder checks its lease in Redis (one round trip that renews every claim and fails
if any was lost) right before it writes and again right after (:meth:`Claim.write`):

- lost before: it writes nothing under it; its rows are upserted once it holds their
  claims again;
- lost during (it froze, or was cut off, mid-write; its rows may have joined a row another
  holder inserted meanwhile): it takes the claims again, which waits until that holder has
  written, and upserts its rows once more. An upsert deletes every row of its id first, so
  whatever two writers left becomes one row.

The after-check is what makes this safe whatever the timing: a holder that still holds every
claim after its write held them throughout (a lapsed claim is never renewed), so no other
writer can have inserted those ids meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import redis

from ris.common.contracts import ImageRow
from ris.common.jobs import CONNECTION_ERRORS
from ris.workers.leases import Periodic

log = logging.getLogger(__name__)

_PREFIX = "ris:claim:"

# KEYS: claim keys. ARGV: owner, lease (ms), "1" for all-or-nothing. Takes the keys that are
# free or the owner's own; returns 1 per key now held and 0 per key another owner holds, or
# nothing at all when all-or-nothing fails.
_TAKE = """
local owner, lease, all = ARGV[1], ARGV[2], ARGV[3] == '1'
local free = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  free[i] = (not holder) or holder == owner
  if all and not free[i] then return {} end
end
local out = {}
for i, key in ipairs(KEYS) do
  if free[i] then
    redis.call('SET', key, owner, 'PX', lease)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: claim keys. ARGV: owner, lease (ms). Renews the keys this owner holds; returns how many
# it no longer holds (lapsed, or taken by another owner since). Never takes a key back.
_RENEW = """
local lost = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    lost = lost + 1
  end
end
return lost
"""

# KEYS: claim keys. ARGV: owner. Frees the keys this owner holds.
_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


class RowWriter(Protocol):
    """What :meth:`Claim.write` writes through (:class:`ris.common.store.ImageStore`)."""

    def upsert(self, rows: Sequence[ImageRow], new_ids: Collection[int] = ()) -> None: ...


def claim_scope(store_identity: str, collection: str) -> str:
    """The claims' namespace: one collection of one Milvus."""
    digest = hashlib.sha256(store_identity.encode()).hexdigest()[:16]
    return f"{digest}:{collection}"


def new_owner(task_id: str | None) -> str:
    """An owner token for one execution of a task: a retry or redelivery of the same task
    claims afresh, never under the token of a run that may still be alive (frozen)."""
    return f"{task_id or 'task'}:{uuid.uuid4().hex[:12]}"


class RowClaims:
    """Claims on the row ids of one scope (:func:`claim_scope`), each held by an owner, as
    leases of ``lease_s`` renewed by this process while it holds them."""

    def __init__(self, client: redis.Redis, lease_s: float, wait_s: float) -> None:
        self.lease_s, self.wait_s = lease_s, wait_s
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._held: set[Claim] = set()
        self._held_lock = threading.Lock()
        self.renewer = Periodic("row-claim-leases", lease_s / 3, self._renew_held)

    @property
    def _lease_ms(self) -> int:
        return int(self.lease_s * 1000)

    @staticmethod
    def keys(scope: str, ids: Iterable[int]) -> list[str]:
        """The Redis keys of the claims on ``ids``."""
        return [f"{_PREFIX}{scope}:{i}" for i in ids]

    def take(self, scope: str, ids: Collection[int], owner: str) -> set[int]:
        """Claim what is free of ``ids``; returns the ids ``owner`` now holds."""
        ids = list(ids)
        if not ids:
            return set()
        got = self._take(keys=self.keys(scope, ids), args=[owner, self._lease_ms, "0"])
        return {i for i, held in zip(ids, got, strict=True) if held}

    def take_all(self, scope: str, ids: Collection[int], owner: str, timeout_s: float) -> None:
        """Wait until ``owner`` holds every one of ``ids``, taken at once (holding none of
        them while it waits); TimeoutError after ``timeout_s``."""
        ids = list(ids)
        if not ids:
            return
        keys = self.keys(scope, ids)
        deadline = time.monotonic() + timeout_s
        pause = 0.05
        while not self._take(keys=keys, args=[owner, self._lease_ms, "1"]):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(ids)} row ids of {scope} still claimed by another task "
                    f"after {timeout_s:.0f} s"
                )
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def renew(self, scope: str, ids: Collection[int], owner: str) -> bool:
        """Renew ``owner``'s claims on ``ids``; False if it no longer holds every one."""
        if not ids:
            return True
        return not self._renew(keys=self.keys(scope, ids), args=[owner, self._lease_ms])

    def release(self, scope: str, ids: Collection[int], owner: str) -> None:
        """Free the claims ``owner`` holds among ``ids``."""
        if ids:
            self._release(keys=self.keys(scope, ids), args=[owner])

    @contextmanager
    def holding(self, scope: str, ids: Iterable[int], owner: str) -> Iterator[Claim]:
        """Claim what is free of ``ids`` for the block, renewed while it runs; every claim of
        ``owner`` on them is freed at its end, however it ends."""
        ids = set(ids)
        claim = Claim(self, scope, owner, self.take(scope, ids, owner))
        with self._held_lock:
            self._held.add(claim)
        self.renewer.start()
        try:
            yield claim
        finally:
            with self._held_lock:
                self._held.discard(claim)
            try:
                self.release(scope, ids | claim.ids, owner)
            except CONNECTION_ERRORS as exc:  # the block's own outcome stands
                log.warning(
                    "claims of %s not released (they lapse in %g s): %s", owner, self.lease_s, exc
                )

    def _renew_held(self) -> None:
        with self._held_lock:
            held = list(self._held)
        for claim in held:
            claim.renew()


class Claim:
    """The ids one owner holds in a scope (:meth:`RowClaims.holding`), and whether it lost
    any of them since it took them (``lost``: lapsed or taken over; sticky until
    :meth:`take_rest` takes claims again)."""

    def __init__(self, claims: RowClaims, scope: str, owner: str, ids: set[int]) -> None:
        self._claims, self.scope, self.owner, self.ids = claims, scope, owner, ids
        self.lost = False
        self.fenced = 0  # writes made again because the lease was lost around them

    def __contains__(self, row_id: object) -> bool:
        return row_id in self.ids

    def renew(self) -> None:
        """Renew the lease (the renewing thread calls this); a loss is remembered."""
        if self.lost or not self.ids:
            return
        try:
            if not self._claims.renew(self.scope, self.ids, self.owner):
                self.lost = True
                log.warning("%s: lease of %d row claims lost", self.owner, len(self.ids))
        except CONNECTION_ERRORS as exc:  # confirm() before and after each write decides
            log.warning("%s: row claims not renewed: %s", self.owner, exc)

    def confirm(self) -> bool:
        """True if every claim is still held, renewed now (one Redis round trip); False once
        any was lost. A Redis error propagates: the write cannot be fenced, so it waits."""
        if not self.lost and not self._claims.renew(self.scope, self.ids, self.owner):
            self.lost = True
        return not self.lost

    def take_rest(self, ids: Collection[int]) -> None:
        """Free the ids held so far (written by now), then wait for ``ids`` all at once."""
        self._claims.release(self.scope, self.ids, self.owner)
        self.ids = set()
        self._claims.take_all(self.scope, ids, self.owner, self._claims.wait_s)
        self.ids, self.lost = set(ids), False

    def write(self, store: RowWriter, rows: Sequence[ImageRow], new_ids: Collection[int]) -> None:
        """Write ``rows``: those claimed now first (``new_ids`` among them inserted), then the
        rest upserted under claims of their own once their holders are done. Fenced (module
        docstring): nothing is inserted under a lost lease, and rows written while it was
        lost are written again by upsert under claims taken again."""
        mine = [r for r in rows if r.id in self.ids]
        later = [r for r in rows if r.id not in self.ids]
        if mine:
            if self.confirm():
                store.upsert(mine, set(new_ids) & self.ids)
                if not self.confirm():
                    self._fence(len(mine), "while writing")
                    later = list(rows)
            else:
                self._fence(len(mine), "before writing")
                later = list(rows)
        while later:
            self.take_rest({r.id for r in later})
            store.upsert(later)
            if self.confirm():
                return
            self._fence(len(later), "while writing")

    def _fence(self, n: int, when: str) -> None:
        self.fenced += 1
        log.warning(
            "%s: lease of its row claims lost %s: %d rows written again by upsert under "
            "claims taken again",
            self.owner,
            when,
            n,
        )
