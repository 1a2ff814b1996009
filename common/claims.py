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
A claim lapses after ``ttl_s`` (longer than a task may run), in case its holder died.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager

import redis

from ris.common.jobs import CONNECTION_ERRORS

log = logging.getLogger(__name__)

_PREFIX = "ris:claim:"

# KEYS: claim keys. ARGV: owner, ttl (s), "1" for all-or-nothing. Takes the keys that are free
# or the owner's own (a redelivered task retakes its claims); returns 1 per key now held and
# 0 per key another owner holds, or nothing at all when all-or-nothing fails.
_TAKE = """
local owner, ttl, all = ARGV[1], ARGV[2], ARGV[3] == '1'
local free = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  free[i] = (not holder) or holder == owner
  if all and not free[i] then return {} end
end
local out = {}
for i, key in ipairs(KEYS) do
  if free[i] then
    redis.call('SET', key, owner, 'EX', ttl)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: claim keys. ARGV: owner. Frees the keys this owner holds.
_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


def claim_scope(store_identity: str, collection: str) -> str:
    """The claims' namespace: one collection of one Milvus."""
    digest = hashlib.sha256(store_identity.encode()).hexdigest()[:16]
    return f"{digest}:{collection}"


class RowClaims:
    """Claims on the row ids of one scope (:func:`claim_scope`), each held by an owner (a
    task id)."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self._take = client.register_script(_TAKE)
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def _keys(scope: str, ids: Iterable[int]) -> list[str]:
        return [f"{_PREFIX}{scope}:{i}" for i in ids]

    def take(self, scope: str, ids: Collection[int], owner: str) -> set[int]:
        """Claim what is free of ``ids``; returns the ids ``owner`` now holds."""
        ids = list(ids)
        if not ids:
            return set()
        got = self._take(keys=self._keys(scope, ids), args=[owner, self.ttl_s, "0"])
        return {i for i, held in zip(ids, got, strict=True) if held}

    def take_all(self, scope: str, ids: Collection[int], owner: str, timeout_s: float) -> None:
        """Wait until ``owner`` holds every one of ``ids``, taken at once (holding none of
        them while it waits); TimeoutError after ``timeout_s``."""
        ids = list(ids)
        if not ids:
            return
        keys = self._keys(scope, ids)
        deadline = time.monotonic() + timeout_s
        pause = 0.05
        while not self._take(keys=keys, args=[owner, self.ttl_s, "1"]):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(ids)} row ids of {scope} still claimed by another task "
                    f"after {timeout_s:.0f} s"
                )
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def release(self, scope: str, ids: Collection[int], owner: str) -> None:
        """Free the claims ``owner`` holds among ``ids``."""
        if ids:
            self._release(keys=self._keys(scope, ids), args=[owner])

    @contextmanager
    def holding(self, scope: str, ids: Iterable[int], owner: str) -> Iterator[Claim]:
        """Claim what is free of ``ids`` for the block; every claim of ``owner`` on them is
        freed at its end, however it ends."""
        ids = set(ids)
        claim = Claim(self, scope, owner, self.take(scope, ids, owner))
        try:
            yield claim
        finally:
            try:
                self.release(scope, ids | claim.ids, owner)
            except CONNECTION_ERRORS as exc:  # the block's own outcome stands
                log.warning(
                    "claims of %s not released (they lapse in %d s): %s", owner, self.ttl_s, exc
                )


class Claim:
    """The ids one owner holds in a scope (:meth:`RowClaims.holding`)."""

    def __init__(self, claims: RowClaims, scope: str, owner: str, ids: set[int]) -> None:
        self._claims, self.scope, self.owner, self.ids = claims, scope, owner, ids

    def __contains__(self, row_id: object) -> bool:
        return row_id in self.ids

    def take_rest(self, ids: Collection[int]) -> None:
        """Free the ids held so far (written by now), then wait for ``ids`` all at once."""
        self._claims.release(self.scope, self.ids, self.owner)
        self.ids = set()
        self._claims.take_all(self.scope, ids, self.owner, self._claims.ttl_s)
        self.ids = set(ids)
