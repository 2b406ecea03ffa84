"""`qdkit render`: stroke files to PNGs, so a user sees what the model sees.

Each drawing is rendered by `qdkit.strokes.rasterize` — at 28×28 exactly the model's input, at a
larger size the same recipe scaled — and written as `<file stem>-<line>.png` (lines counted from 1,
binary records from 0), black ink on white like every PNG qdkit writes, beside one `sheet.png` with
the first drawings in a grid.

The output folder is the user's: render writes only its own files into it, each under a temporary
name renamed into place (qdkit.outputs' rule: a PNG qdkit wrote — its Software text — is refreshed,
anything else of the same name needs --overwrite, a folder is never replaced, and nothing else in
the folder is touched). Two inputs with the same stem get distinct names (`cat~2-1.png`). Every
drawing is read and checked before the first PNG is written, so a bad drawing (without
--skip-invalid) leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from qdkit.data.strokefiles import RecordReader, StrokeFile, display_number, index_records, stroke_file
from qdkit.errors import QdkitError
from qdkit.files import atomic_path
from qdkit.outputs import PNG_SOFTWARE, is_qdkit_png, output_file, output_folder
from qdkit.strokes import Drawing, StrokeError, rasterize

SHEET_COLUMNS = 10
SHEET_MAX = 100  # drawings on the contact sheet
SHEET_NAME = "sheet.png"


def _stroke_files(paths: list[str | os.PathLike]) -> list[StrokeFile]:
    files, seen = [], set()
    for path in map(Path, paths):
        sf = stroke_file(path)
        if sf is None:
            raise QdkitError(f"{path}: not a stroke file (.ndjson, .bin or .csv)")
        if not path.exists():
            raise QdkitError(f"{path}: no such file" + (" (a dangling link)" if path.is_symlink() else ""))
        if path.is_dir():
            raise QdkitError(f"{path}: is a folder, not a stroke file")
        real = os.path.realpath(path)
        if real not in seen:  # the same file named twice is rendered once
            seen.add(real)
            files.append(sf)
    return files


def _prefixes(files: list[StrokeFile]) -> list[str]:
    """Each file's name prefix: its stem, made distinct where two stems are the same."""
    used: set[str] = set()
    out = []
    for sf in files:
        name, k = sf.path.stem, 1
        while name in used:
            k += 1
            name = f"{sf.path.stem}~{k}"
        used.add(name)
        out.append(name)
    return out


def _drawings(
    sf: StrokeFile, limit: int | None, skip_invalid: bool, on_skip: Callable[[int, str], None]
) -> list[tuple[int, Drawing]]:
    """The file's first `limit` good drawings, read and simplified (each failure a StrokeError)."""
    index = index_records(sf)
    reader = RecordReader(sf)
    out: list[tuple[int, Drawing]] = []
    skipped, first = 0, ""
    for start, end, number in zip(index.starts.tolist(), index.ends.tolist(), index.numbers.tolist(), strict=True):
        if limit is not None and len(out) >= limit:
            break
        try:
            out.append((number, reader.ready(start, end)))
        except StrokeError as err:
            where = f"{sf.path}: {sf.unit} {display_number(sf, number)}: {err}"
            if not skip_invalid:
                raise QdkitError(f"{where} (--skip-invalid skips bad drawings)") from None
            skipped, first = skipped + 1, first or where
    if skipped:
        on_skip(skipped, first)
    return out


def _png_info() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", PNG_SOFTWARE)  # how a later render knows the file is its own
    return info


def _write(image: Image.Image, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", compress_level=1, pnginfo=_png_info())
    except OSError as e:
        raise QdkitError(f"{path}: cannot write ({e.strerror or e})") from None


def _check_names(out_dir: Path, names: list[str], overwrite: bool) -> None:
    """Before any work: every name fits the filesystem, and nothing of the user's is in the way."""
    try:
        name_max = os.pathconf(out_dir if out_dir.is_dir() else out_dir.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for name in names:
        # the temporary name (.NAME.tmp-PID) is the longest written
        if len(os.fsencode(f".{name}.tmp-{os.getpid()}")) > name_max:
            raise QdkitError(
                f"{out_dir / name}: cannot write ({os.strerror(errno.ENAMETOOLONG)}: "
                f"names here are at most {name_max} bytes; rename the input file)"
            )
        output_file(out_dir / name, "PNG", overwrite=overwrite, ours=is_qdkit_png)


def render_files(
    paths: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    size: int = 28,
    limit: int | None = None,
    overwrite: bool = False,
    skip_invalid: bool = False,
    warn: Callable[[str], None] | None = None,
) -> tuple[int, Path]:
    """Render the drawings of stroke files (the first `limit` of each) to PNGs in `out_dir`;
    returns (drawings written, the contact sheet's path). `skip_invalid`: bad drawings are skipped
    and counted (`warn`ed about) instead of failing."""
    files = _stroke_files(paths)
    out_dir = output_folder(out_dir)

    def skipped(count: int, first: str) -> None:
        if warn is not None:
            warn(f"skipped {count} invalid drawing(s); first: {first}")

    work = [
        (prefix, sf, _drawings(sf, limit, skip_invalid, skipped))
        for prefix, sf in zip(_prefixes(files), files, strict=True)
    ]
    names = [f"{prefix}-{display_number(sf, number)}.png" for prefix, sf, drawings in work for number, _ in drawings]
    if not names:
        raise QdkitError(f"{', '.join(str(f.path) for f in files)}: no drawings to render")
    _check_names(out_dir, [*names, SHEET_NAME], overwrite)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QdkitError(f"{out_dir}: cannot create folder ({e.strerror})") from None
    tiles: list[np.ndarray] = []
    count = 0
    for _, _, drawings in work:
        for _, drawing in drawings:
            image = 255 - rasterize(drawing, side=size)
            _write(Image.fromarray(image, mode="L"), out_dir / names[count])
            if len(tiles) < SHEET_MAX:
                tiles.append(image)
            count += 1
    _write(_sheet(tiles), out_dir / SHEET_NAME)
    return count, out_dir / SHEET_NAME


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
