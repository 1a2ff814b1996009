"""Row-id claims in a real Redis (ris.common.claims): one holder per id, a holder's own claims
retaken on redelivery, waiting without holding, and lapsed claims of a dead holder."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from ris.common.claims import RowClaims
from ris.common.jobs import redis_client
from ris.common.settings import get_settings


@pytest.fixture
def claims(redis_url: str) -> RowClaims:
    return RowClaims(redis_client(get_settings()), ttl_s=60)


@pytest.fixture
def scope() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:images"


def test_an_id_has_one_holder_and_its_owner_retakes_it(claims: RowClaims, scope: str) -> None:
    assert claims.take(scope, [1, 2, 3], "a") == {1, 2, 3}
    assert claims.take(scope, [3, 4], "b") == {4}
    assert claims.take(scope, [1, 2, 3, 4], "a") == {1, 2, 3}  # a redelivered task: its own
    claims.release(scope, [1, 2, 3, 4], "b")  # frees b's 4 only
    assert claims.take(scope, [1, 4], "c") == {4}


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


def test_a_dead_holders_claim_lapses(redis_url: str, scope: str) -> None:
    short = RowClaims(redis_client(get_settings()), ttl_s=1)
    short.take(scope, [7], "died")
    started = time.monotonic()
    short.take_all(scope, [7], "waiter", timeout_s=10)
    assert 0.3 < time.monotonic() - started < 5
