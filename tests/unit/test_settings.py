"""Bad settings through the real ``ris`` process (``python -m ris.producer.cli``, a fresh
interpreter, its real stderr): an out-of-range ``--top-k`` and an invalid RIS_* variable are
each one line, no traceback. unit/test_cli.py checks the same errors in-process (CliRunner)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_cli


@pytest.mark.parametrize("top_k", ["0", "-1", "16385"])
def test_top_k_out_of_range_is_refused_at_the_cli(tmp_path: Path, top_k: str) -> None:
    query = tmp_path / "q.jpg"
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(query)
    proc = run_cli("search", str(query), "--top-k", top_k, check=False, timeout=60)
    assert proc.returncode == 2, proc.stdout
    assert "--top-k" in proc.stderr and "out of range: 1 to 16384" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("name", "value"), [("RIS_TOP_K", "0"), ("RIS_CHUNK_SIZE", "many")])
def test_invalid_setting_in_the_environment_is_one_line(name: str, value: str) -> None:
    proc = run_cli("status", "some-job", check=False, timeout=60, env={name: value})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: invalid setting: {name}: "), line
