"""Row-id claims in a real Redis (ris.workers.claims): one holder per id, waiting without
holding, leases renewed by a live holder and lapsed for a dead or frozen one, and the fence:
a writer whose lease lapsed before or during its write leaves one row per id in a real
Milvus (Lite) collection."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Collection, Sequence

import numpy as np
import pytest

from ris.common.contracts import ImageRow
from ris.common.jobs import redis_client
from ris.common.settings import get_settings
from ris.common.store import ImageStore, open_store
from ris.workers.claims import Claim, RowClaims, new_owner
from tests.helpers import ROOT

# The mechanism's tests use a short lease; the fault tests (test_faults.py, test_multihost.py)
# run at the shipped RIS_LEASE_S.
LEASE_S = 2.0


@pytest.fixture
def claims(redis_url: str) -> RowClaims:
    return RowClaims(redis_client(get_settings()), lease_s=LEASE_S, wait_s=30)


@pytest.fixture
def scope() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:images"


def test_an_id_has_one_holder(claims: RowClaims, scope: str) -> None:
    assert claims.take(scope, [1, 2, 3], "a") == {1, 2, 3}
    assert claims.take(scope, [3, 4], "b") == {4}
    claims.release(scope, [1, 2, 3, 4], "b")  # frees b's 4 only
    assert claims.take(scope, [1, 4], "c") == {4}


def test_each_execution_claims_under_an_owner_of_its_own() -> None:
    """A retried or redelivered task never renews the claims of a run that may still be
    alive (frozen): each execution's owner token differs."""
    assert new_owner("job-000001") != new_owner("job-000001")
    assert new_owner("job-000001").startswith("job-000001:")


def test_holding_frees_every_claim_of_the_block_however_it_ends(
    claims: RowClaims, scope: str
) -> None:
    with pytest.raises(RuntimeError), claims.holding(scope, [1, 2], "a") as held:
        assert held.ids == {1, 2} and 1 in held
        raise RuntimeError("the chunk failed")
    assert claims.take(scope, [1, 2], "b") == {1, 2}


def test_take_rest_waits_holding_nothing_so_overlapping_chunks_cannot_deadlock(
    claims: RowClaims, scope: str
) -> None:
    """Chunk a holds 1 and wants 2; chunk b holds 2 and wants 1. Each frees what it holds
    before it waits, so both finish."""
    done: list[str] = []

    def chunk(owner: str, mine: int, other: int) -> None:
        with claims.holding(scope, [mine, other], owner) as held:
            time.sleep(0.3)  # both have taken their first claim
            held.take_rest({other})
            assert held.ids == {other}
            time.sleep(0.1)  # writes it
        done.append(owner)

    assert claims.take(scope, [1], "a") == {1} and claims.take(scope, [2], "b") == {2}
    threads = [
        threading.Thread(target=chunk, args=("a", 1, 2)),
        threading.Thread(target=chunk, args=("b", 2, 1)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(done) == ["a", "b"]


def test_take_all_is_all_or_nothing_and_times_out(claims: RowClaims, scope: str) -> None:
    claims.take(scope, [2], "holder")
    with pytest.raises(TimeoutError, match="still claimed by another task"):
        claims.take_all(scope, [1, 2], "waiter", timeout_s=0.5)
    assert claims.take(scope, [1], "third") == {1}  # the waiter held none of them meanwhile


def test_a_live_holder_keeps_its_claims_past_many_leases(claims: RowClaims, scope: str) -> None:
    with claims.holding(scope, [1, 2], "alive") as held:
        time.sleep(3 * LEASE_S)  # renewed by this process's thread meanwhile
        assert claims.take(scope, [1, 2], "other") == set()
        assert held.confirm()


# A holder in a process of its own: takes claims on 1 and 2, says so, then holds them.
_HOLDER = """
import sys, time
from ris.workers.claims import RowClaims
from ris.common.jobs import redis_client
from ris.common.settings import get_settings
claims = RowClaims(redis_client(get_settings()), lease_s=float(sys.argv[2]), wait_s=30)
with claims.holding(sys.argv[1], [1, 2], "holder"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGSTOP"])
def test_a_killed_or_frozen_holders_claims_free_within_a_lease(
    claims: RowClaims, scope: str, stop: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, scope, str(LEASE_S)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        time.sleep(2 * LEASE_S)  # alive: renewed
        assert claims.take(scope, [1, 2], "waiter") == set()
        os.kill(proc.pid, getattr(signal, stop))
        stopped = time.monotonic()
        claims.take_all(scope, [1, 2], "waiter", timeout_s=10 * LEASE_S)
        assert time.monotonic() - stopped <= 1.5 * LEASE_S
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


# --- the fence, against a real Milvus Lite collection -----------------------------------------
X = 4242  # the row id both writers write


def _row(value: float) -> ImageRow:
    vector = np.full(1280, value, dtype=np.float32)
    vector /= np.linalg.norm(vector)
    return ImageRow(
        id=X, vector=vector, path=f"/fence/{value}", sha256="0" * 64, width=1, height=1,
        ingested_at=0,
    )  # fmt: skip


@pytest.fixture
def store(redis_url: str) -> ImageStore:
    settings = get_settings().model_copy(update={"collection": f"fence_{uuid.uuid4().hex[:6]}"})
    return open_store(settings)


def _rows_of_x(store: ImageStore) -> int:
    """Rows stored under id X (a query by id returns one of several rows of an id)."""
    found = store.client.query(store.name, filter=f"id in [{X}]", output_fields=["count(*)"])
    return int(found[0]["count(*)"])


def _other_writer_inserts(claims: RowClaims, scope: str, store: ImageStore) -> None:
    """Another chunk, once ``X``'s claim lapsed: it claims X, looks it up, and as it is
    absent, inserts it."""
    with claims.holding(scope, [X], new_owner("other")) as other:
        assert X in other
        if not store.known_stats([X]):
            store.upsert([_row(2.0)], new_ids={X})


def _lapse(claims: RowClaims, scope: str) -> None:
    """Expire the claim on X now, as a lease that was not renewed in time would."""
    redis_client(get_settings()).delete(*claims.keys(scope, [X]))


def test_a_writer_whose_lease_lapsed_before_it_wrote_inserts_nothing(
    claims: RowClaims, scope: str, store: ImageStore
) -> None:
    with claims.holding(scope, [X], new_owner("late")) as late:
        assert not store.known_stats([X])  # the late writer's look-up: absent
        _lapse(claims, scope)  # frozen past its lease meanwhile
        _other_writer_inserts(claims, scope, store)
        late.write(store, [_row(1.0)], new_ids={X})
        assert late.fenced == 1
    assert _rows_of_x(store) == 1
    assert store.resolve([X])[X]["path"] == "/fence/1.0"  # written again, by upsert


class _FrozenMidWrite:
    """A real store whose next write, before it reaches Milvus, is overtaken: the writer's
    lease lapses and another chunk inserts the same id (a writer frozen or cut off with its
    write in flight)."""

    def __init__(self, store: ImageStore, overtake: threading.Event, then: object) -> None:
        self.store, self.overtake, self.then = store, overtake, then

    def upsert(self, rows: Sequence[ImageRow], new_ids: Collection[int] = ()) -> None:
        if not self.overtake.is_set():
            self.overtake.set()
            self.then()  # type: ignore[operator]
        self.store.upsert(rows, new_ids)


def test_a_writer_whose_lease_lapsed_during_its_write_leaves_one_row(
    claims: RowClaims, scope: str, store: ImageStore
) -> None:
    """Without the check after the write, X would be stored twice: the late insert lands
    after the other chunk's."""
    with claims.holding(scope, [X], new_owner("late")) as late:
        assert not store.known_stats([X])

        def overtaken() -> None:
            _lapse(claims, scope)
            _other_writer_inserts(claims, scope, store)

        late.write(_FrozenMidWrite(store, threading.Event(), overtaken), [_row(1.0)], {X})
        assert late.fenced == 1
    assert _rows_of_x(store) == 1


def test_an_unfenced_late_insert_would_store_the_row_twice(
    claims: RowClaims, scope: str, store: ImageStore
) -> None:
    """The same interleaving written without the fence (a plain insert): two rows. This is
    what the two tests above prevent, shown on the same store."""
    with claims.holding(scope, [X], new_owner("late")):
        _lapse(claims, scope)
        _other_writer_inserts(claims, scope, store)
        store.upsert([_row(1.0)], new_ids={X})
    assert _rows_of_x(store) == 2


def test_confirm_reports_a_claim_taken_over(claims: RowClaims, scope: str) -> None:
    with claims.holding(scope, [1, 2], "a") as held:
        assert isinstance(held, Claim) and held.confirm()
        redis_client(get_settings()).set(claims.keys(scope, [2])[0], "b")
        assert not held.confirm()
        assert not held.confirm()  # lost stays lost: a lapsed claim is never renewed
