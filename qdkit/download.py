"""Fetch the official Quick Draw per-class files over HTTP: whole files, or only the first N drawings.

Four formats, as published under https://storage.googleapis.com/quickdraw_dataset/ (`FORMATS`):
28x28 numpy bitmaps, simplified and raw stroke ndjson, and the binary stroke format. Each is saved
under the name `qdkit convert` reads (`full_numpy_bitmap_<class>.npy`, `full_simplified_<class>.ndjson`,
`full_raw_<class>.ndjson`, `full_binary_<class>.bin`).

Standard library only. A download grows `<file>.part`, which always holds a prefix of the remote
file, so an interrupted run resumes with an HTTP Range request, and a `--limit` run transfers only
what its N drawings need: the .npy header and N rows; growing ranges until N whole ndjson lines;
growing ranges until N whole binary records (walked record by record). The final file appears by
rename or through an atomic write: never half-written.

A mirror may change a file between two requests. Every response's validator (ETag, Last-Modified)
and total size must match the first one's, each ranged request carries `If-Range`, and a `.part`
remembers the validator it was fetched under (`<file>.part.validator`), so bytes of two versions of
a file are never spliced together, within a run or across a resume.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qdkit import __version__
from qdkit.bitmaps import (
    PIXELS,
    bitmap_filename,
    check_layout,
    header_end,
    open_bitmaps,
    parse_header,
    safe_dirname,
    save_bitmaps,
)
from qdkit.errors import QdkitError
from qdkit.files import atomic_path

DEFAULT_BASE_URL = "https://storage.googleapis.com/quickdraw_dataset"

_HEAD_BYTES = 1024          # one request holds the whole .npy header (128 bytes in the official files)
_CHUNK = 1 << 16
_FIRST_STROKE_BYTES = 1 << 16   # the first request for a stroke file; later ones grow with the need
_MAX_RANGE = 1 << 24            # one growing range asks for at most 16 MiB
_BINARY_HEADER = 17             # key_id u64, countrycode 2 bytes, recognized u8, timestamp u32, n_strokes u16
_MAX_RECORD = 1 << 20           # a real drawing record is a few KB; a claim of more is not Quick Draw data


@dataclass(frozen=True)
class Format:
    """One published format: where it lives on the server and what it is called locally."""

    name: str
    folder: str       # under the dataset root
    suffix: str
    local_prefix: str
    what: str         # for messages

    def local_name(self, class_name: str) -> str:
        return f"{self.local_prefix}{class_name}{self.suffix}"


FORMATS = {
    "bitmap": Format("bitmap", "full/numpy_bitmap", ".npy", "full_numpy_bitmap_", "a .npy file"),
    "simplified": Format("simplified", "full/simplified", ".ndjson", "full_simplified_", "an ndjson stroke file"),
    "raw": Format("raw", "full/raw", ".ndjson", "full_raw_", "an ndjson stroke file"),
    "binary": Format("binary", "full/binary", ".bin", "full_binary_", "a binary stroke file"),
}
assert FORMATS["bitmap"].local_name("cat") == bitmap_filename("cat")


@dataclass
class _Remote:
    """One class file on the server, and what the first response said about it (to spot a change)."""

    name: str
    url: str
    timeout: float
    fmt: Format
    etag: str | None = None
    last_modified: str | None = None
    total: int | None = None
    ranged: bool = False   # the server answered a Range request with 206
    seen: bool = field(default=False)

    def validator(self) -> dict:
        return {"etag": self.etag, "last_modified": self.last_modified, "total": self.total}

    def if_range(self) -> str | None:
        """A strong ETag or else a Last-Modified date, for `If-Range` (weak ETags are not allowed there)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


class FileChanged(QdkitError):
    pass


def download_classes(
    classes: list[str], out_dir: str | os.PathLike, limit: int | None = None,
    base_url: str = DEFAULT_BASE_URL, timeout: float = 30, fmt: str = "bitmap",
) -> list[Path]:
    """Download each class's official file of format `fmt` into `out_dir`; return the paths.

    `base_url` is the dataset root (the folder holding `full/`). With `limit`, keep only the first
    `limit` drawings (fetched with HTTP Range). Files already holding what was asked for are
    skipped; `.part` files left by an interrupted run are resumed.
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
        remote = _Remote(name, f"{base_url}/{urllib.parse.quote(name)}{form.suffix}", timeout, form)
        paths.append(get(remote, out_dir / form.local_name(name), limit))
    return paths


# --- bitmaps -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Header:
    raw: bytes          # the first bytes of the remote file: the header and perhaps some rows
    rows: int
    offset: int         # where the rows start


def _download_bitmap(remote: _Remote, final: Path, limit: int | None) -> Path:
    part = _part_of(final)
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
    _start_part(remote, part, prefix, max_size=need if limit is None else None)
    _guarded(remote, part, lambda: _fill_part(remote, part, need))
    if not _holds_prefix(part, prefix):
        _drop_part(part)
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
    tqdm.write(f"{final}: already holds {what}, skipped", file=sys.stderr)
    return final


def _fetch_header(remote: _Remote) -> _Header:
    """Read and check the remote .npy header: uint8 drawings of 784 pixels each, no pickles.

    The header length is checked against a cap before the header is asked for, so a mirror that
    claims a 4 GiB header costs one small request."""
    raw = _read_prefix(remote, _HEAD_BYTES)
    if not raw.startswith(b"\x93NUMPY"):
        what = "an HTML page" if raw.lstrip()[:1] == b"<" else "something else"
        raise QdkitError(f"{remote.url}: not a .npy file (the server sent {what})")
    end = header_end(raw, remote.url)
    if len(raw) < end and len(raw) == _HEAD_BYTES:  # an unusually long header: ask for all of it
        raw = _read_prefix(remote, end)
    shape, dtype, offset = parse_header(io.BytesIO(raw), remote.url)
    rows = check_layout(shape, dtype, remote.url)
    return _Header(raw, rows, offset)


def _finish_whole(part: Path, final: Path) -> None:
    try:
        open_bitmaps(part)
    except QdkitError:
        _drop_part(part)  # a complete but invalid file: resuming cannot fix it
        raise
    os.replace(part, final)
    _validator_file(part).unlink(missing_ok=True)


def _finish_subset(part: Path, final: Path, offset: int, rows: int) -> None:
    drawings = np.fromfile(part, dtype=np.uint8, count=rows * PIXELS, offset=offset).reshape(rows, PIXELS)
    save_bitmaps(final, drawings)
    if part.stat().st_size <= offset + rows * PIXELS:
        _drop_part(part)
    # else: it is an interrupted whole-file download's progress, kept for that download to resume


# --- stroke files (ndjson, binary) ---------------------------------------------------------------

class _LineCounter:
    """Counts whole ndjson lines in a stream; `end` is the byte offset after the `want`-th line."""

    def __init__(self, want: float) -> None:
        self.want, self.count, self.pos = want, 0, 0
        self.end: int | None = None
        self._line_open = False

    def feed(self, data: bytes) -> None:
        if self.end is None:
            i = 0
            while self.count < self.want:
                j = data.find(b"\n", i)
                if j < 0:
                    break
                self.count += 1
                i = j + 1
                if self.count == self.want:
                    self.end = self.pos + i
            if data:
                self._line_open = not data.endswith(b"\n")
        self.pos += len(data)

    def at_eof(self, name: str) -> None:
        """The file ended: a last line without a newline is a line too."""
        if self.end is None and self._line_open:
            self.count += 1
            if self.count == self.want:
                self.end = self.pos
        if self.end is None:
            self.end = self.pos


class _RecordWalker:
    """Walks binary drawing records in a stream; `end` is the byte offset after the `want`-th record."""

    def __init__(self, want: float) -> None:
        self.want, self.count, self.pos = want, 0, 0
        self.end: int | None = None
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        if self.end is not None:
            return
        self._buf += data
        i = 0
        while self.count < self.want:
            size = _record_size(self._buf, i, self.count)
            if size is None:
                break
            i += size
            self.count += 1
        del self._buf[:i]
        self.pos += i
        if self.count == self.want:
            self.end = self.pos

    def at_eof(self, name: str) -> None:
        if self.end is None and self._buf:
            raise QdkitError(f"{name}: truncated binary record {self.count} ({len(self._buf)} bytes at the end "
                             "are not a whole record)")
        if self.end is None:
            self.end = self.pos


def _record_size(buf: bytearray, at: int, index: int) -> int | None:
    """The byte size of the binary record at `buf[at:]`, or None when it is not all in `buf` yet."""
    if len(buf) - at < _BINARY_HEADER:
        return None
    strokes = int.from_bytes(buf[at + 15:at + 17], "little")
    off = at + _BINARY_HEADER
    for _ in range(strokes):
        if len(buf) < off + 2:
            return None
        off += 2 + 2 * int.from_bytes(buf[off:off + 2], "little")
        if off - at > _MAX_RECORD:
            raise QdkitError(f"binary record {index} claims more than {_MAX_RECORD} bytes: not Quick Draw data")
    return off - at if off <= len(buf) else None


def _counter(fmt: Format, want: float) -> _LineCounter | _RecordWalker:
    return _RecordWalker(want) if fmt.name == "binary" else _LineCounter(want)


def _count_file(fmt: Format, path: Path, want: float, upto: int | None = None) -> _LineCounter | _RecordWalker:
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


def _download_strokes(remote: _Remote, final: Path, limit: int | None) -> Path:
    fmt = remote.fmt
    part = _part_of(final)
    if limit is not None and _drawings_in(fmt, final, limit) >= limit:  # no need to ask the server
        return _skipped(final, f"{limit} drawings")
    first = _read_prefix(remote, _FIRST_STROKE_BYTES)
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
    _start_part(remote, part, first, max_size=total)
    if part.stat().st_size < held_before:  # it was dropped (another version of the file)
        held_before = 0
    if limit is None:
        _guarded(remote, part, lambda: _fill_part(remote, part, total))
        try:
            _count_file(fmt, part, float("inf")).at_eof(remote.url)  # whole records, to the last byte
        except QdkitError:
            _drop_part(part)  # a complete but invalid file: resuming cannot fix it
            raise
        os.replace(part, final)
        _validator_file(part).unlink(missing_ok=True)
        return final
    counter = _guarded(remote, part, lambda: _grow_until(remote, part, limit, total))
    end = counter.end
    assert end is not None
    with atomic_path(final) as tmp, open(part, "rb") as src, open(tmp, "wb") as dst:
        _copy_prefix(src, dst, end)
    if held_before <= end or held_before == part.stat().st_size == total:
        _drop_part(part)
    # else: it is an interrupted whole-file download's progress, kept for that download to resume
    return final


def _grow_until(remote: _Remote, part: Path, limit: int, total: int) -> _LineCounter | _RecordWalker:
    """Append growing ranges to `part` until it holds `limit` whole drawings or the whole file."""
    counter = _count_file(remote.fmt, part, limit)
    held = part.stat().st_size
    while counter.end is None and held < total:
        per_drawing = held / max(counter.count, 1)
        ask = int(min(max((limit - counter.count) * per_drawing * 1.25 + 4096, _CHUNK), _MAX_RANGE))
        added = _append_range(remote, part, held, min(held + ask, total), counter.feed)
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


# --- HTTP, the .part file and its validator --------------------------------------------------------

def _read_prefix(remote: _Remote, size: int) -> bytes:
    """The first `size` bytes of the remote file (fewer if it is shorter)."""
    response, _ = _open(remote, 0, size)
    with response:
        return _read(remote, response, size, 0)


def _open(remote: _Remote, start: int, end: int) -> tuple[http.client.HTTPResponse, int]:
    """GET bytes [start, end); return the response and the offset its body starts at.

    The offset is 0 when the server ignored the Range header and sends the whole file. Raises
    FileChanged when the answer shows another version of the file than the first answer did.
    """
    headers = {"Range": f"bytes={start}-{end - 1}", "User-Agent": f"qdkit/{__version__}"}
    if remote.seen and remote.if_range():
        headers["If-Range"] = remote.if_range() or ""
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
            raise QdkitError(f"{remote.url}: not {remote.fmt.what} (the server sent an HTML page)")
        if response.status == 200:
            length = response.headers.get("Content-Length", "")
            _same_version(remote, response, int(length) if length.isdigit() else None, start, ranged=False)
            return response, 0
        content_range = response.headers.get("Content-Range", "")
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range.strip())
        if response.status != 206 or not match or int(match[1]) != start:
            raise QdkitError(
                f"{remote.url}: unexpected answer to a request from byte {start}: "
                f"HTTP {response.status}, Content-Range {content_range!r}"
            )
        _same_version(remote, response, None if match[3] == "*" else int(match[3]), start, ranged=True)
        return response, start
    except BaseException:
        response.close()
        raise


def _same_version(remote: _Remote, response: http.client.HTTPResponse, total: int | None, start: int,
                  ranged: bool) -> None:
    """Remember the first answer's validator and size; refuse a later answer about another version."""
    etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
    if not remote.seen:
        remote.etag, remote.last_modified, remote.total, remote.ranged = etag, modified, total, ranged
        remote.seen = True
        return
    pairs = (("ETag", remote.etag, etag), ("Last-Modified", remote.last_modified, modified),
             ("size", remote.total, total))
    changes = [what for what, was, now in pairs if was and now and was != now]
    if remote.ranged and not ranged and start > 0:
        changes.append("If-Range answered with the whole file")
    if changes:
        raise FileChanged(f"{remote.url}: the file changed on the server during the download "
                          f"({', '.join(changes)}); run again")


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


def _skip(remote: _Remote, response: http.client.HTTPResponse, size: int) -> None:
    """Read and drop `size` bytes of the body (the same version of the file: `_open` checked)."""
    done = 0
    while done < size:
        chunk = _read(remote, response, min(_CHUNK * 16, size - done), done)
        if not chunk:
            raise QdkitError(f"{remote.url}: the server stopped after {done} bytes; run again to resume")
        done += len(chunk)


def _part_of(final: Path) -> Path:
    return final.with_name(final.name + ".part")


def _validator_file(part: Path) -> Path:
    return part.with_name(part.name + ".validator")


def _drop_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _validator_file(part).unlink(missing_ok=True)


def _guarded(remote: _Remote, part: Path, work: Callable):
    """Run `work`; if the file turns out to have changed on the server, the .part is worthless."""
    try:
        return work()
    except FileChanged:
        _drop_part(part)
        raise


def _holds_prefix(part: Path, prefix: bytes) -> bool:
    with open(part, "rb") as f:
        return f.read(len(prefix)) == prefix


def _start_part(remote: _Remote, part: Path, prefix: bytes, max_size: int | None) -> None:
    """Make `part` begin with `prefix`, keeping what an earlier run fetched if it is still a prefix of
    the same version of the remote file (same validator), and record the validator beside it."""
    validator = remote.validator()
    marker = _validator_file(part)
    try:
        if part.exists():
            with open(part, "rb") as f:
                start = f.read(len(prefix))
            try:
                earlier = json.loads(marker.read_text()) if marker.exists() else None
            except (OSError, ValueError):
                earlier = {}
            # Without a validator on either side only the prefix can be compared (an older qdkit's .part).
            same = earlier == validator if (earlier is not None or remote.if_range()) else True
            if (not same or not prefix.startswith(start[:len(prefix)])
                    or (max_size is not None and part.stat().st_size > max_size)):
                _drop_part(part)  # not a prefix of this remote file (it changed on the server): start over
        held = part.stat().st_size if part.exists() else 0
        if held < len(prefix):
            with open(part, "ab") as f:
                f.write(prefix[held:])
        marker.write_text(json.dumps(validator))
    except OSError as e:
        raise QdkitError(f"{part}: cannot write ({e.strerror})") from None


def _fill_part(remote: _Remote, part: Path, need: int) -> None:
    """Append remote bytes to `part` until it holds `need` bytes."""
    held = part.stat().st_size
    if held < need:
        _append_range(remote, part, held, need)


def _append_range(remote: _Remote, part: Path, held: int, need: int,
                  on_data: Callable[[bytes], None] | None = None) -> int:
    """Append remote bytes [held, need) to `part` (which holds `held` bytes), with a progress bar;
    `on_data` sees each appended block. Returns the bytes added (counted from `held`)."""
    response, start = _open(remote, held, need)
    if start < held:  # the server ignored Range and sends the file from byte 0: skip what `part` holds
        _skip(remote, response, held - start)
    added = 0
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
                    if on_data is not None:
                        on_data(chunk)
                    held += len(chunk)
                    added += len(chunk)
                    bar.update(len(chunk))
        except OSError as e:
            raise QdkitError(f"{part}: cannot write ({e.strerror})") from None
    return added

