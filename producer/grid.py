"""Draw a query image beside its matches, each captioned with its score, in one picture."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ris.common.images import ImageError, open_rgb
from ris.common.settings import Settings
from ris.common.sources import SourceError, read_source
from ris.producer.client import QueryResult

_TILE = 224
_CAPTION = 34
_PAD = 8
_MAX_PIXELS = 100_000_000


def _tile(path: str | None, settings: Settings) -> Image.Image:
    tile = Image.new("RGB", (_TILE, _TILE), (235, 235, 235))
    if path:
        try:
            # Matches may be URLs as well as local paths.
            img = open_rgb(read_source(path, settings).data, _MAX_PIXELS, target=_TILE)
            img.thumbnail((_TILE, _TILE))
            tile.paste(img, ((_TILE - img.width) // 2, (_TILE - img.height) // 2))
        except (OSError, ImageError, SourceError):
            ImageDraw.Draw(tile).text((10, _TILE // 2), "(unreadable)", fill=(120, 0, 0))
    return tile


def draw_grid(
    results: list[QueryResult], out: str | Path, settings: Settings, columns: int = 5
) -> Path:
    """One row block per query: the query first, then its ranked matches with scores (read
    as ``settings`` allow)."""
    font = ImageFont.load_default(size=13)
    rows: list[list[tuple[str | None, str]]] = []
    for res in results:
        cells: list[tuple[str | None, str]] = [(res.query, f"query: {os.path.basename(res.query)}")]
        cells += [
            (h.path, f"#{rank} {h.score:.3f}  {os.path.basename(h.path or '?')}")
            for rank, h in enumerate(res.hits, 1)
        ]
        rows += [cells[i : i + columns + 1] for i in range(0, len(cells), columns + 1)]
    width = (columns + 1) * (_TILE + _PAD) + _PAD
    height = max(1, len(rows)) * (_TILE + _CAPTION + _PAD) + _PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for r, cells in enumerate(rows):
        y = _PAD + r * (_TILE + _CAPTION + _PAD)
        for c, (path, caption) in enumerate(cells):
            x = _PAD + c * (_TILE + _PAD)
            canvas.paste(_tile(path, settings), (x, y))
            draw.text((x + 2, y + _TILE + 4), caption[:34], fill="black", font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
