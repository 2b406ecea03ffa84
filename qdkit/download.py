"""Fetch official Quick Draw numpy-bitmap files over HTTP: whole files, or only the first N drawings.

Standard library only. A download grows `<file>.part`, which always holds a prefix of the remote
file (header first, then rows), so an interrupted run resumes with an HTTP Range request and a
`--limit` run transfers only the header and the rows it keeps. The final file appears by rename
(whole file) or through `save_bitmaps` (a --limit subset with its own header): never half-written.
"""
from __future__ import annotations

import http.client
import io
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qdkit import __version__
from qdkit.bitmaps import PIXELS, bitmap_filename, check_layout, open_bitmaps, parse_header, safe_dirname, save_bitmaps
from qdkit.errors import QdkitError

DEFAULT_BASE_URL = "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap"

_HEAD_BYTES = 1024  # one request holds the whole .npy header (128 bytes in the official files)
_CHUNK = 1 << 16
_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class _Remote:
    """One class file on the server; `name` is for error messages."""

    name: str
    url: str
    timeout: float


@dataclass(frozen=True)
class _Header:
    raw: bytes          # the first bytes of the remote file: the header and perhaps some rows
    rows: int
    offset: int         # where the rows start
    total: int | None   # the remote file's size, when the server says


def download_classes(
    classes: list[str], out_dir: str | os.PathLike, limit: int | None = None,
    base_url: str = DEFAULT_BASE_URL, timeout: float = 30,
) -> list[Path]:
    """Download `full_numpy_bitmap_<class>.npy` for each class into `out_dir`; return the paths.

    With `limit`, keep only the first `limit` drawings (fetched with HTTP Range). Files already
    holding what was asked for are skipped; `.part` files left by an interrupted run are resumed.
    """
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
    base_url = base_url.rstrip("/")
    return [
        _download_one(_Remote(name, f"{base_url}/{urllib.parse.quote(name)}.npy", timeout), out_dir, limit)
        for name in names
    ]


def _download_one(remote: _Remote, out_dir: Path, limit: int | None) -> Path:
    final = out_dir / bitmap_filename(remote.name)
    part = final.with_name(final.name + ".part")
    have = _rows_in(final)
    if limit is not None and have is not None and have >= limit:  # no need to ask the server
        return _skipped(final, have)
    head = _fetch_header(remote)
    want = head.rows if limit is None else min(limit, head.rows)
    if have is not None and have >= want:
        return _skipped(final, have)
    need = head.offset + want * PIXELS
    if head.total is not None and (head.total < need or (limit is None and head.total != need)):
        raise QdkitError(
            f"{remote.url}: size mismatch: the server reports {head.total} bytes, the .npy header promises "
            f"{head.offset + head.rows * PIXELS}"
        )
    prefix = head.raw[:need]
    _start_part(part, prefix, max_size=need if limit is None else None)
    _fill_part(remote, part, need)
    if not _holds_prefix(part, prefix):
        part.unlink()
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


def _skipped(final: Path, rows: int) -> Path:
    tqdm.write(f"{final}: already holds {rows} drawings, skipped", file=sys.stderr)
    return final


def _fetch_header(remote: _Remote) -> _Header:
    """Read and check the remote .npy header: uint8 drawings of 784 pixels each, no pickles."""
    raw, total = _read_prefix(remote, _HEAD_BYTES)
    if not raw.startswith(_NPY_MAGIC):
        what = "an HTML page" if raw.lstrip()[:1] == b"<" else "something else"
        raise QdkitError(f"{remote.url}: not a .npy file (the server sent {what})")
    # Magic, 2 version bytes, then the header length: 2 bytes in format 1.0, 4 bytes in 2.0 and 3.0.
    len_end = 10 if raw[6:7] == b"\x01" else 12
    header_end = len_end + int.from_bytes(raw[8:len_end], "little")
    if len(raw) < header_end and len(raw) == _HEAD_BYTES:  # an unusually long header: ask for all of it
        raw, total = _read_prefix(remote, header_end)
    shape, dtype, offset = parse_header(io.BytesIO(raw), remote.url)
    rows = check_layout(shape, dtype, remote.url)
    return _Header(raw, rows, offset, total)


def _read_prefix(remote: _Remote, size: int) -> tuple[bytes, int | None]:
    """The first `size` bytes of the remote file (fewer if it is shorter) and its total size."""
    response, _, total = _open(remote, 0, size)
    with response:
        return _read(remote, response, size, 0), total


def _open(remote: _Remote, start: int, end: int) -> tuple[http.client.HTTPResponse, int, int | None]:
    """GET bytes [start, end); return the response, the offset its body starts at, the total size.

    The offset is 0 when the server ignored the Range header and sends the whole file.
    """
    headers = {"Range": f"bytes={start}-{end - 1}", "User-Agent": f"qdkit/{__version__}"}
    try:
        request = urllib.request.Request(remote.url, headers=headers)  # ValueError for a malformed URL
        response = urllib.request.urlopen(request, timeout=remote.timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 404:
            raise QdkitError(f"unknown class {remote.name!r} ({remote.url}: HTTP 404)") from None
        raise QdkitError(f"{remote.url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise QdkitError(f"cannot reach {remote.url}: {_reason(e.reason)} (offline?)") from None
    except (OSError, http.client.HTTPException) as e:
        raise QdkitError(f"cannot reach {remote.url}: {_reason(e)} (offline?)") from None
    except ValueError as e:  # no scheme, bad port, ...
        raise QdkitError(f"{remote.url}: invalid URL ({e})") from None
    try:
        if response.headers.get_content_type() == "text/html":
            raise QdkitError(f"{remote.url}: not a .npy file (the server sent an HTML page)")
        if response.status == 200:
            length = response.headers.get("Content-Length", "")
            return response, 0, int(length) if length.isdigit() else None
        content_range = response.headers.get("Content-Range", "")
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range.strip())
        if response.status != 206 or not match or int(match[1]) != start:
            raise QdkitError(
                f"{remote.url}: unexpected answer to a request from byte {start}: "
                f"HTTP {response.status}, Content-Range {content_range!r}"
            )
        return response, start, None if match[3] == "*" else int(match[3])
    except BaseException:
        response.close()
        raise


def _read(remote: _Remote, response: http.client.HTTPResponse, size: int, done: int) -> bytes:
    """Up to `size` bytes of the body (fewer only at its end); `done` is for the error message."""
    try:
        return response.read(size)
    except (OSError, http.client.HTTPException) as e:
        raise QdkitError(
            f"{remote.url}: connection lost after {done} bytes ({_reason(e)}); run again to resume"
        ) from None


def _reason(error: object) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _holds_prefix(part: Path, prefix: bytes) -> bool:
    with open(part, "rb") as f:
        return f.read(len(prefix)) == prefix


def _start_part(part: Path, prefix: bytes, max_size: int | None) -> None:
    """Make `part` begin with `prefix`, keeping what an earlier run fetched if it is still a prefix."""
    try:
        if part.exists():
            with open(part, "rb") as f:
                start = f.read(len(prefix))
            if not prefix.startswith(start) or (max_size is not None and part.stat().st_size > max_size):
                part.unlink()  # not a prefix of this remote file (it changed on the server): start over
        held = part.stat().st_size if part.exists() else 0
        if held < len(prefix):
            with open(part, "ab") as f:
                f.write(prefix[held:])
    except OSError as e:
        raise QdkitError(f"{part}: cannot write ({e.strerror})") from None


def _fill_part(remote: _Remote, part: Path, need: int) -> None:
    """Append remote bytes to `part` until it holds `need` bytes, with a progress bar."""
    held = part.stat().st_size
    if held >= need:
        return
    response, start, _ = _open(remote, held, need)
    held = start  # 0 when the server ignored Range: then the file starts again from byte 0
    with response, tqdm(total=need, initial=held, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=remote.name, file=sys.stderr) as bar:
        try:
            with open(part, "ab" if held else "wb") as f:
                while held < need:
                    # Stop at `need`: with --limit the rest of the file is never read.
                    chunk = _read(remote, response, min(_CHUNK, need - held), held)
                    if not chunk:
                        raise QdkitError(
                            f"{remote.url}: the server stopped after {held} of {need} bytes; run again to resume"
                        )
                    f.write(chunk)
                    held += len(chunk)
                    bar.update(len(chunk))
        except OSError as e:
            raise QdkitError(f"{part}: cannot write ({e.strerror})") from None


def _finish_whole(part: Path, final: Path) -> None:
    try:
        open_bitmaps(part)
    except QdkitError:
        part.unlink()  # a complete but invalid file: resuming cannot fix it
        raise
    os.replace(part, final)


def _finish_subset(part: Path, final: Path, offset: int, rows: int) -> None:
    drawings = np.fromfile(part, dtype=np.uint8, count=rows * PIXELS, offset=offset).reshape(rows, PIXELS)
    save_bitmaps(final, drawings)
    if part.stat().st_size <= offset + rows * PIXELS:
        part.unlink()
    # else: it is an interrupted whole-file download's progress, kept for that download to resume
