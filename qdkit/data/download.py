"""Fetch the official Quick Draw per-class files over HTTP: whole files, or only the first N drawings.

Four formats, as published under https://storage.googleapis.com/quickdraw_dataset/ (`FORMATS`):
28x28 numpy bitmaps, simplified and raw stroke ndjson, and the binary stroke format. Each is saved
under the name `qdkit convert` reads (`full_numpy_bitmap_<class>.npy`, `full_simplified_<class>.ndjson`,
`full_raw_<class>.ndjson`, `full_binary_<class>.bin`).

A download grows `<file>.part`, which always holds a prefix of the remote
file, so an interrupted run resumes with an HTTP Range request, and a `--limit` run transfers only
what its N drawings need: the .npy header and N rows; growing ranges until N whole ndjson lines;
growing ranges until N whole binary records (walked record by record). The final file appears by
rename or through an atomic write: never half-written.

The HTTP side — ranges, resume, and never splicing two versions of a file that changes on the
mirror — is `qdkit.data.httprange`; this module knows the formats and how many bytes N drawings take.
"""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdkit.constants import NPY_MAGIC
from qdkit.data.bitmaps import (
    PIXELS,
    bitmap_filename,
    check_layout,
    header_end,
    open_bitmaps,
    parse_header,
    safe_dirname,
    save_bitmaps,
)
from qdkit.data.httprange import (
    CHUNK,
    MIN_RATE,
    RATE_WINDOW,
    RemoteFile,
    append_range,
    drop_part,
    fill_part,
    guarded,
    holds_prefix,
    part_of,
    read_prefix,
    start_part,
    validator_file,
)
from qdkit.data.strokecount import LineCounter, RecordWalker, TooLong
from qdkit.errors import QdkitError
from qdkit.files import atomic_path
from qdkit.progress import write_line

DEFAULT_BASE_URL = "https://storage.googleapis.com/quickdraw_dataset"

_HEAD_BYTES = 1024  # one request holds the whole .npy header (128 bytes in the official files)
_FIRST_STROKE_BYTES = 1 << 16  # the first request for a stroke file; later ones grow with the need
_MAX_RANGE = 1 << 24  # one growing range asks for at most 16 MiB


@dataclass(frozen=True)
class Format:
    """One published format: where it lives on the server and what it is called locally."""

    name: str
    folder: str  # under the dataset root
    suffix: str
    local_prefix: str
    what: str  # for messages

    def local_name(self, class_name: str) -> str:
        return f"{self.local_prefix}{class_name}{self.suffix}"


FORMATS = {
    "bitmap": Format("bitmap", "full/numpy_bitmap", ".npy", "full_numpy_bitmap_", "a .npy file"),
    "simplified": Format("simplified", "full/simplified", ".ndjson", "full_simplified_", "an ndjson stroke file"),
    "raw": Format("raw", "full/raw", ".ndjson", "full_raw_", "an ndjson stroke file"),
    "binary": Format("binary", "full/binary", ".bin", "full_binary_", "a binary stroke file"),
}
assert FORMATS["bitmap"].local_name("cat") == bitmap_filename("cat")


def download_classes(
    classes: list[str],
    out_dir: str | os.PathLike,
    limit: int | None = None,
    base_url: str = DEFAULT_BASE_URL,
    timeout: float = 30,
    fmt: str = "bitmap",
    min_rate: float = MIN_RATE,
    rate_window: float = RATE_WINDOW,
) -> list[Path]:
    """Download each class's official file of format `fmt` into `out_dir`; return the paths.

    `base_url` is the dataset root (the folder holding `full/`). With `limit`, keep only the first
    `limit` drawings (fetched with HTTP Range). Files already holding what was asked for are
    skipped; `.part` files left by an interrupted run are resumed. A server sending fewer than
    `min_rate` bytes/s over `rate_window` seconds is given up on (one line; the .part resumes).
    """
    if fmt not in FORMATS:
        raise QdkitError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    names = list(dict.fromkeys(classes or []))
    if not names:
        raise QdkitError("no class names given (e.g. --classes cat,dog)")
    for name in names:
        if safe_dirname(name) != name:
            raise QdkitError(f"invalid class name {name!r}")
    if limit is not None and limit < 1:
        raise QdkitError(f"--limit must be at least 1, got {limit}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QdkitError(f"{out_dir}: cannot create folder ({e.strerror})") from None
    parsed = urllib.parse.urlsplit(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise QdkitError(f"base URL {base_url!r}: expected an http:// or https:// address")
    form = FORMATS[fmt]
    base_url = f"{base_url.rstrip('/')}/{form.folder}"
    get = _download_bitmap if fmt == "bitmap" else _download_strokes
    paths = []
    for name in names:
        final = out_dir / form.local_name(name)
        if final.is_dir():
            raise QdkitError(f"{final}: is a folder; qdkit will not replace it with the downloaded file")
        remote = RemoteFile(name, f"{base_url}/{urllib.parse.quote(name)}{form.suffix}", timeout, form.what)
        remote.min_rate, remote.rate_window = min_rate, rate_window
        paths.append(get(remote, final, limit, form))
    return paths


# --- bitmaps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    raw: bytes  # the first bytes of the remote file: the header and perhaps some rows
    rows: int
    offset: int  # where the rows start


def _download_bitmap(remote: RemoteFile, final: Path, limit: int | None, fmt: Format) -> Path:
    part = part_of(final)
    have = _rows_in(final)
    if limit is not None and have is not None and have >= limit:  # no need to ask the server
        return _skipped(final, f"{have} drawings")
    head = _fetch_header(remote)
    want = head.rows if limit is None else min(limit, head.rows)
    if have is not None and have >= want:
        return _skipped(final, f"{have} drawings")
    need = head.offset + want * PIXELS
    total = remote.total
    if total is not None and (total < need or (limit is None and total != need)):
        raise QdkitError(
            f"{remote.url}: size mismatch: the server reports {total} bytes, the .npy header promises "
            f"{head.offset + head.rows * PIXELS}"
        )
    prefix = head.raw[:need]
    start_part(remote, part, prefix, max_size=need if limit is None else None)
    guarded(remote, part, lambda: fill_part(remote, part, need))
    if not holds_prefix(part, prefix):
        drop_part(part)
        raise QdkitError(f"{remote.url}: the file changed on the server during the download; run again")
    if limit is None:
        _finish_whole(part, final)
    else:
        _finish_subset(part, final, head.offset, want)
    return final


def _rows_in(path: Path) -> int | None:
    """Drawings in an existing valid bitmap file; None when absent or invalid (it gets replaced)."""
    if not path.exists():
        return None
    try:
        return len(open_bitmaps(path))
    except QdkitError:
        return None


def _skipped(final: Path, what: str) -> Path:
    write_line(f"{final}: already holds {what}, skipped")
    return final


def _fetch_header(remote: RemoteFile) -> _Header:
    """Read and check the remote .npy header: uint8 drawings of 784 pixels each, no pickles.

    The header length is checked against a cap before the header is asked for, so a mirror that
    claims a 4 GiB header costs one small request."""
    raw = read_prefix(remote, _HEAD_BYTES)
    if not raw.startswith(NPY_MAGIC):
        what = "an HTML page" if raw.lstrip()[:1] == b"<" else "something else"
        raise QdkitError(f"{remote.url}: not a .npy file (the server sent {what})")
    end = header_end(raw, remote.url)
    if len(raw) < end and len(raw) == _HEAD_BYTES:  # an unusually long header: ask for all of it
        raw = read_prefix(remote, end)
    shape, dtype, offset = parse_header(io.BytesIO(raw), remote.url)
    rows = check_layout(shape, dtype, remote.url)
    return _Header(raw, rows, offset)


def _finish_whole(part: Path, final: Path) -> None:
    try:
        open_bitmaps(part)
    except QdkitError:
        drop_part(part)  # a complete but invalid file: resuming cannot fix it
        raise
    os.replace(part, final)
    validator_file(part).unlink(missing_ok=True)


def _finish_subset(part: Path, final: Path, offset: int, rows: int) -> None:
    drawings = np.fromfile(part, dtype=np.uint8, count=rows * PIXELS, offset=offset).reshape(rows, PIXELS)
    save_bitmaps(final, drawings)
    if part.stat().st_size <= offset + rows * PIXELS:
        drop_part(part)
    # else: it is an interrupted whole-file download's progress, kept for that download to resume


# --- stroke files (ndjson, binary) ---------------------------------------------------------------


def _counter(fmt: Format, want: float) -> LineCounter | RecordWalker:
    return RecordWalker(want) if fmt.name == "binary" else LineCounter(want)


def _count_file(fmt: Format, path: Path, want: float, upto: int | None = None) -> LineCounter | RecordWalker:
    """Feed the first `upto` bytes of `path` (all by default) to a fresh counter; it stops at `want`."""
    counter = _counter(fmt, want)
    left = path.stat().st_size if upto is None else upto
    with open(path, "rb") as f:
        while left > 0 and counter.end is None:
            block = f.read(min(1 << 22, left))
            if not block:
                break
            counter.feed(block)
            left -= len(block)
    return counter


def _drawings_in(fmt: Format, path: Path, want: int) -> int:
    """Drawings (up to `want`) in an existing stroke file; 0 when absent or not valid."""
    if not path.is_file():
        return 0
    try:
        counter = _count_file(fmt, path, want)
        if counter.end is None:
            counter.at_eof(str(path))
    except (QdkitError, OSError):
        return 0
    return counter.count


def _download_strokes(remote: RemoteFile, final: Path, limit: int | None, fmt: Format) -> Path:
    part = part_of(final)
    if limit is not None and _drawings_in(fmt, final, limit) >= limit:  # no need to ask the server
        return _skipped(final, f"{limit} drawings")
    first = read_prefix(remote, _FIRST_STROKE_BYTES)
    if first[:1] == b"<":
        raise QdkitError(f"{remote.url}: not {fmt.what} (the server sent an HTML page)")
    if first[:2] == b"\x1f\x8b":
        raise QdkitError(f"{remote.url}: not {fmt.what} (the server sent gzip-compressed data)")
    if fmt.suffix == ".ndjson" and first and first[:1] != b"{":
        raise QdkitError(f"{remote.url}: not {fmt.what} (it does not start with a JSON object)")
    total = remote.total
    if total is None:
        raise QdkitError(f"{remote.url}: the server does not say the file's size; cannot download it safely")
    if limit is None and final.is_file() and final.stat().st_size == total:
        return _skipped(final, "the whole file")
    held_before = part.stat().st_size if part.exists() else 0  # an earlier run's progress, if any
    start_part(remote, part, first, max_size=total)
    if part.stat().st_size < held_before:  # it was dropped (another version of the file)
        held_before = 0
    if limit is None:
        guarded(remote, part, lambda: fill_part(remote, part, total))
        try:
            _count_file(fmt, part, float("inf")).at_eof(remote.url)  # whole records, to the last byte
        except QdkitError:
            drop_part(part)  # a complete but invalid file: resuming cannot fix it
            raise
        os.replace(part, final)
        validator_file(part).unlink(missing_ok=True)
        return final
    try:
        counter = guarded(remote, part, lambda: _grow_until(remote, fmt, part, limit, total))
    except TooLong as e:
        drop_part(part)
        raise QdkitError(f"{remote.url}: {e}") from None
    end = counter.end
    assert end is not None
    with atomic_path(final) as tmp, open(part, "rb") as src, open(tmp, "wb") as dst:
        _copy_prefix(src, dst, end)
    if held_before <= end or held_before == part.stat().st_size == total:
        drop_part(part)
    # else: it is an interrupted whole-file download's progress, kept for that download to resume
    return final


def _grow_until(remote: RemoteFile, fmt: Format, part: Path, limit: int, total: int) -> LineCounter | RecordWalker:
    """Append growing ranges to `part` until it holds `limit` whole drawings or the whole file."""
    counter = _count_file(fmt, part, limit)
    held = part.stat().st_size
    while counter.end is None and held < total:
        per_drawing = held / max(counter.count, 1)
        ask = int(min(max((limit - counter.count) * per_drawing * 1.25 + 4096, CHUNK), _MAX_RANGE))
        added = append_range(remote, part, held, min(held + ask, total), counter.feed)
        held += added
    if counter.end is None:  # the whole file holds fewer drawings than asked for
        counter.at_eof(remote.url)
    return counter


def _copy_prefix(src, dst, size: int) -> None:
    while size > 0:
        block = src.read(min(1 << 22, size))
        if not block:
            raise QdkitError(f"{src.name}: shorter than expected")
        dst.write(block)
        size -= len(block)
