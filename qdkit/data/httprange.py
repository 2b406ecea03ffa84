"""One remote file over HTTP Range requests, never spliced from two versions of it.

`RemoteFile` remembers what the first answer said (ETag, Last-Modified, total size, whether Range was
honoured); every later answer must agree, and every ranged request carries `If-Range`, so a file
that changes on the server between two requests raises `FileChanged` instead of yielding a file
made of two versions. A download grows `<file>.part`, which always holds a prefix of the remote
file, beside `<file>.part.validator` recording the version it was fetched under, so a resume
against another version starts over. Standard library only (and qdkit.progress for the progress bar).
"""

from __future__ import annotations

import http.client
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qdkit.constants import QDKIT_VERSION
from qdkit.errors import QdkitError
from qdkit.progress import progress

CHUNK = 1 << 16
MIN_RATE = 1024  # bytes/s: a server slower than this over RATE_WINDOW seconds is given up on
RATE_WINDOW = 60.0  # (the socket timeout is per read: a server dripping 1 byte/s never trips it)


@dataclass
class RemoteFile:
    """One file on the server, and what the first answer said about it (to spot a change)."""

    name: str  # the class, for messages and the progress bar
    url: str
    timeout: float
    what: str  # "a .npy file", ...: what the file should be, for messages
    etag: str | None = None
    last_modified: str | None = None
    total: int | None = None
    ranged: bool = False  # the server answered a Range request with 206
    seen: bool = field(default=False)
    min_rate: float = MIN_RATE
    rate_window: float = RATE_WINDOW
    _window: list = field(default_factory=list)  # [start time, bytes since]

    def paced(self, n: int) -> None:
        """Count `n` body bytes just read; one line if the server has been slower than `min_rate`
        over the last `rate_window` seconds."""
        now = time.monotonic()
        if not self._window:
            self._window[:] = [now, 0]
        self._window[1] += n
        elapsed = now - self._window[0]
        if elapsed >= self.rate_window:
            rate = self._window[1] / elapsed
            if rate < self.min_rate:
                raise QdkitError(
                    f"{self.url}: the server sent {rate:,.0f} bytes/s over {elapsed:.0f} s "
                    f"(at least {self.min_rate:,.0f} bytes/s expected); giving up, run again to resume"
                )
            self._window[:] = [now, 0]

    def validator(self) -> dict:
        return {"etag": self.etag, "last_modified": self.last_modified, "total": self.total}

    def if_range(self) -> str | None:
        """A strong ETag or else a Last-Modified date, for `If-Range` (weak ETags are not allowed there)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


class FileChanged(QdkitError):
    """The server now answers with another version of the file than it did at first."""


def read_prefix(remote: RemoteFile, size: int) -> bytes:
    """The first `size` bytes of the remote file (fewer if it is shorter)."""
    response, _ = _open(remote, 0, size)
    with response:
        return _read(remote, response, size, 0)


def _open(remote: RemoteFile, start: int, end: int) -> tuple[http.client.HTTPResponse, int]:
    """GET bytes [start, end); return the response and the offset its body starts at.

    The offset is 0 when the server ignored the Range header and sends the whole file. Raises
    FileChanged when the answer shows another version of the file than the first answer did.
    """
    headers = {"Range": f"bytes={start}-{end - 1}", "User-Agent": f"qdkit/{QDKIT_VERSION}"}
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
            raise QdkitError(f"{remote.url}: not {remote.what} (the server sent an HTML page)")
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


def _same_version(
    remote: RemoteFile, response: http.client.HTTPResponse, total: int | None, start: int, ranged: bool
) -> None:
    """Remember the first answer's validator and size; refuse a later answer about another version."""
    etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
    if not remote.seen:
        remote.etag, remote.last_modified, remote.total, remote.ranged = etag, modified, total, ranged
        remote.seen = True
        return
    pairs = (
        ("ETag", remote.etag, etag),
        ("Last-Modified", remote.last_modified, modified),
        ("size", remote.total, total),
    )
    changes = [what for what, was, now in pairs if was and now and was != now]
    if remote.ranged and not ranged and start > 0:
        changes.append("If-Range answered with the whole file")
    if changes:
        raise FileChanged(
            f"{remote.url}: the file changed on the server during the download ({', '.join(changes)}); run again"
        )


def _read(remote: RemoteFile, response: http.client.HTTPResponse, size: int, done: int) -> bytes:
    """Up to `size` bytes of the body (fewer only at its end); `done` is for the error message.
    Read as it arrives (read1), so the pace is checked however slowly the server sends."""
    out = bytearray()
    try:
        while len(out) < size:
            chunk = response.read1(size - len(out))
            if not chunk:
                break
            out += chunk
            remote.paced(len(chunk))
        return bytes(out)
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


def _skip(remote: RemoteFile, response: http.client.HTTPResponse, size: int) -> None:
    """Read and drop `size` bytes of the body (the same version of the file: `_open` checked)."""
    done = 0
    while done < size:
        chunk = _read(remote, response, min(CHUNK * 16, size - done), done)
        if not chunk:
            raise QdkitError(f"{remote.url}: the server stopped after {done} bytes; run again to resume")
        done += len(chunk)


def part_of(final: Path) -> Path:
    return final.with_name(final.name + ".part")


def validator_file(part: Path) -> Path:
    return part.with_name(part.name + ".validator")


def drop_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    validator_file(part).unlink(missing_ok=True)


def guarded(remote: RemoteFile, part: Path, work: Callable):
    """Run `work`; if the file turns out to have changed on the server, the .part is worthless."""
    try:
        return work()
    except FileChanged:
        drop_part(part)
        raise


def holds_prefix(part: Path, prefix: bytes) -> bool:
    with open(part, "rb") as f:
        return f.read(len(prefix)) == prefix


def start_part(remote: RemoteFile, part: Path, prefix: bytes, max_size: int | None) -> None:
    """Make `part` begin with `prefix`, keeping what an earlier run fetched if it is still a prefix of
    the same version of the remote file (same validator), and record the validator beside it."""
    validator = remote.validator()
    marker = validator_file(part)
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
            if (
                not same
                or not prefix.startswith(start[: len(prefix)])
                or (max_size is not None and part.stat().st_size > max_size)
            ):
                drop_part(part)  # not a prefix of this remote file (it changed on the server): start over
        held = part.stat().st_size if part.exists() else 0
        if held < len(prefix):
            with open(part, "ab") as f:
                f.write(prefix[held:])
        marker.write_text(json.dumps(validator))
    except OSError as e:
        raise QdkitError(f"{part}: cannot write ({e.strerror})") from None


def fill_part(remote: RemoteFile, part: Path, need: int) -> None:
    """Append remote bytes to `part` until it holds `need` bytes."""
    held = part.stat().st_size
    if held < need:
        append_range(remote, part, held, need)


def append_range(
    remote: RemoteFile, part: Path, held: int, need: int, on_data: Callable[[bytes], None] | None = None
) -> int:
    """Append remote bytes [held, need) to `part` (which holds `held` bytes), with a progress bar;
    `on_data` sees each appended block. Returns the bytes added (counted from `held`)."""
    response, start = _open(remote, held, need)
    if start < held:  # the server ignored Range and sends the file from byte 0: skip what `part` holds
        _skip(remote, response, held - start)
    added = 0
    with (
        response,
        progress(
            total=need, initial=held, unit="B", unit_scale=True, unit_divisor=1024, desc=remote.name, file=sys.stderr
        ) as bar,
    ):
        try:
            with open(part, "ab" if held else "wb") as f:
                while held < need:
                    # Stop at `need`: with --limit the rest of the file is never read.
                    chunk = _read(remote, response, min(CHUNK, need - held), held)
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
