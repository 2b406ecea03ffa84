"""`qdkit render`: stroke files to PNGs, so a user sees what the model sees.

Each drawing is rendered by `qdkit.strokes.rasterize` — at 28×28 exactly the model's input, at a
larger size the same recipe scaled — and written as `<file stem>-<line>.png` (lines counted from 1,
binary records from 0), black ink on white like every PNG qdkit writes, beside one `sheet.png` with
the first drawings in a grid.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from qdkit.data.strokefiles import StrokeFile, display_number, iter_drawings, stroke_file
from qdkit.errors import QdkitError
from qdkit.files import atomic_path
from qdkit.strokes import rasterize

SHEET_COLUMNS = 10
SHEET_MAX = 100  # drawings on the contact sheet


def _stroke_files(paths: list[str | os.PathLike]) -> list[StrokeFile]:
    files = []
    for path in map(Path, paths):
        sf = stroke_file(path)
        if sf is None:
            raise QdkitError(f"{path}: not a stroke file (.ndjson, .bin or .csv)")
        if not path.is_file():
            raise QdkitError(f"{path}: no such file")
        files.append(sf)
    return files


def render_files(
    paths: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    size: int = 28,
    limit: int | None = None,
    overwrite: bool = False,
) -> tuple[int, Path]:
    """Render the drawings of stroke files (the first `limit` of each) to PNGs in `out_dir`;
    returns (drawings written, the contact sheet's path)."""
    files = _stroke_files(paths)
    out_dir = Path(out_dir)
    tiles: list[np.ndarray] = []
    count = 0
    with atomic_path(out_dir, overwrite) as tmp:
        tmp.mkdir()
        for sf in files:
            for i, (number, drawing) in enumerate(iter_drawings(sf)):
                if limit is not None and i >= limit:
                    break
                image = 255 - rasterize(drawing, side=size)
                name = f"{sf.path.stem}-{display_number(sf, number)}.png"
                Image.fromarray(image, mode="L").save(tmp / name, compress_level=1)
                if len(tiles) < SHEET_MAX:
                    tiles.append(image)
                count += 1
        if not tiles:
            raise QdkitError(f"{', '.join(str(f.path) for f in files)}: no drawings to render")
        _sheet(tiles).save(tmp / "sheet.png")
    return count, out_dir / "sheet.png"


def _sheet(tiles: list[np.ndarray]) -> Image.Image:
    """Tiles in a grid with a 1-pixel grey gutter."""
    side = tiles[0].shape[0]
    columns = min(SHEET_COLUMNS, len(tiles))
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * (side + 1) + 1, columns * (side + 1) + 1), 160, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[1 + r * (side + 1) : 1 + r * (side + 1) + side, 1 + c * (side + 1) : 1 + c * (side + 1) + side] = tile
    return Image.fromarray(sheet, mode="L")
