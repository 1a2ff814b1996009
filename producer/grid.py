"""Draw a query image beside its matches, each captioned with its score, in one picture."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ris.common.images import ImageError, open_rgb
from ris.common.settings import Settings
from ris.common.sources import SourceError, read_source
from ris.producer.client import QueryResult

# The layout, in pixels: square tiles, a caption under each, padding around.
TILE = 224
CAPTION = 34
PAD = 8
TILE_BACKGROUND = (235, 235, 235)
_MAX_PIXELS = 100_000_000


def tile_origin(row: int, column: int) -> tuple[int, int]:
    """``(x, y)`` of the top-left corner of the tile at ``row``, ``column``."""
    return PAD + column * (TILE + PAD), PAD + row * (TILE + CAPTION + PAD)


def _tile(path: str | None, settings: Settings) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE), TILE_BACKGROUND)
    if path:
        try:
            # Matches may be URLs as well as local paths.
            img = open_rgb(read_source(path, settings).data, _MAX_PIXELS, target=TILE)
            img.thumbnail((TILE, TILE))
            tile.paste(img, ((TILE - img.width) // 2, (TILE - img.height) // 2))
        except (OSError, ImageError, SourceError):
            ImageDraw.Draw(tile).text((10, TILE // 2), "(unreadable)", fill=(120, 0, 0))
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
    width = (columns + 1) * (TILE + PAD) + PAD
    height = max(1, len(rows)) * (TILE + CAPTION + PAD) + PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for r, cells in enumerate(rows):
        for c, (path, caption) in enumerate(cells):
            x, y = tile_origin(r, c)
            canvas.paste(_tile(path, settings), (x, y))
            draw.text((x + 2, y + TILE + 4), caption[:34], fill="black", font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
