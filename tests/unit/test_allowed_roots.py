"""RIS_ALLOWED_ROOTS (ris.common.sources.check_allowed): a path outside the roots, through
``..`` or a symbolic link, is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from ris.common.sources import SourceError, check_allowed


def test_paths_outside_allowed_roots_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    inside = root / "sub" / "a.jpg"
    inside.write_bytes(b"x")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"x")
    (root / "escape.jpg").symlink_to(outside)
    assert check_allowed(str(inside), [root]) == inside
    for path in (outside, root / "sub" / ".." / ".." / "secret.jpg", root / "escape.jpg"):
        with pytest.raises(SourceError, match="outside the allowed roots"):
            check_allowed(str(path), [root])
