"""An acknowledgement Redis could not take leaves the worker able to fetch: the failure that
left a worker idle for good after a Redis partition (test_multihost's Redis cut, when the
partition began as a chunk ended). The real Celery app's broker connection against a Redis of
the test's own, stopped between a message's delivery and its ack."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from ris.common.celery_app import make_app
from ris.producer.local_redis import start_redis
from ris.workers import broker_acks
from tests.helpers import settings_for

QUEUE = "cpu"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    url, proc = start_redis(workdir=tmp_path)
    yield url, proc
    proc.kill()
    proc.wait(10)


def test_a_failed_ack_frees_the_prefetch_slot(redis: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = redis
    broker_acks.install()  # as ris worker does
    app = make_app(settings_for({"RIS_REDIS_URL": url}))
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.queue_declare(QUEUE)
        channel.basic_publish(channel.prepare_message("chunk"), "", QUEUE)
        channel.basic_qos(0, 1, False)  # a prefork process's one message in flight
        message = channel.basic_get(QUEUE)
        assert message is not None and not channel.qos.can_consume()

        proc.kill()  # Redis gone between the task's end and its ack
        proc.wait(10)
        with pytest.raises(RedisConnectionError):
            message.ack()
        assert channel.qos.can_consume(), "the failed ack kept the prefetch slot taken"
