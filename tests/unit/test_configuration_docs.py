"""The documentation against the code: docs/configuration.md is what ``Settings`` renders,
every setting is described, and every relative link of README.md and docs/ reaches a file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ris.common.settings import Settings
from ris.common.settings_doc import COMMAND, render, sections
from tests.helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target up to a space (a title) or the parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def test_every_setting_has_a_description() -> None:
    missing = [
        name for name, f in Settings.model_fields.items() if not (f.description or "").strip()
    ]
    assert not missing, f"Settings fields without Field(description=...): {missing}"


def test_every_setting_is_in_a_section() -> None:
    listed = [name for _, names in sections() for name in names]
    assert sorted(listed) == sorted(Settings.model_fields)
    assert "other" not in [title for title, _ in sections()], "a field above the first section"


def test_configuration_doc_is_generated_from_the_settings() -> None:
    page = ROOT / "docs" / "configuration.md"
    assert page.exists(), f"docs/configuration.md is missing: run `{COMMAND}`"
    assert page.read_text() == render(), (
        f"docs/configuration.md differs from common/settings.py: run `{COMMAND}`"
    )


def _links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return LINK.findall(text)


def test_the_link_check_sees_links() -> None:
    assert "docs/architecture.md" in _links(ROOT / "README.md")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_files(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (http:, mailto:) or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"
