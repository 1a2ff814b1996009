"""The ``reason`` label of ``ris_images_failed_total`` (ris.common.metrics.reason_class): every
failure reason maps to one of a bounded set of classes, never to its text."""

from __future__ import annotations

import pytest

from ris.common.metrics import reason_class


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("empty file (0 bytes)", "decode"),
        ("corrupt or truncated image: image file is truncated (65 bytes not processed)", "decode"),
        ("not an image (unrecognised format)", "decode"),
        ("image too large: 20000x20000 = 400,000,000 pixels exceeds the limit", "too_large"),
        ("[Errno 2] No such file or directory: '/x.jpg'", "missing"),
        ("broken symbolic link", "missing"),
        ("not indexed: time limit of 600 s exceeded (RIS_TASK_SOFT_TIME_LIMIT_S)", "time_limit"),
        ("not indexed: the task is for Milvus http://a:19530, but this worker uses b", "refused"),
        ("not indexed: MilvusException: (code=2, message=Fail connecting)", "store"),
        ("something nobody foresaw", "other"),
    ],
)
def test_failure_reasons_map_to_a_bounded_set(reason: str, label: str) -> None:
    assert reason_class(reason) == label
