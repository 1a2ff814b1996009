"""A worker keeps fetching after an acknowledgement that Redis could not take.

kombu's Redis transport counts a message as unacknowledged until its ack reaches Redis: when
the ack fails (Redis unreachable for longer than the one retry, e.g. a partition that starts
as a chunk ends), the message stays counted, and a worker at its prefetch limit (one message
per process) never fetches again while it lives. Here a failed ack or reject still frees its
prefetch slot. The message itself stays in Redis's unacknowledged index: the broker restores it
after ``RIS_VISIBILITY_TIMEOUT_S`` (or at this worker's shutdown), and the chunk, recorded as
done in its job's ledger, is skipped.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base

log = logging.getLogger(__name__)


def _freeing_the_slot(method: Any) -> Any:
    def wrapper(self: kombu_redis.QoS, delivery_tag: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, delivery_tag, *args, **kwargs)
        except Exception:
            base.QoS.ack(self, delivery_tag)  # what kombu does once Redis took it
            log.warning(
                "a message's %s did not reach Redis; its prefetch slot is freed, and the "
                "message comes back after the visibility timeout, to be skipped if done",
                method.__name__,
            )
            raise  # kombu logs the failed ack itself

    wrapper.ris_frees_slot = True  # type: ignore[attr-defined]
    return wrapper


def install() -> None:
    """Patch kombu's Redis QoS in this process (idempotent): call before the worker starts."""
    for name in ("ack", "reject"):
        method = getattr(kombu_redis.QoS, name)
        if not getattr(method, "ris_frees_slot", False):
            setattr(kombu_redis.QoS, name, _freeing_the_slot(method))
