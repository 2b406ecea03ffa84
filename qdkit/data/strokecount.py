"""Counting whole drawings in a growing stroke file (qdkit.data.download): ndjson lines, or binary
records walked one by one, fed a block at a time as the bytes arrive; `end` is the byte offset just
after the drawing asked for."""

from __future__ import annotations

from qdkit.data.strokefiles import MAX_RECORD_BYTES
from qdkit.errors import QdkitError

BINARY_HEADER = 17  # key_id u64, countrycode 2 bytes, recognized u8, timestamp u32, n_strokes u16
MAX_RECORD = 1 << 20  # a real drawing record is a few KB; a claim of more is not Quick Draw data


class TooLong(QdkitError):
    """A line or record longer than any drawing: the file is not Quick Draw data."""


class LineCounter:
    """Counts whole ndjson lines in a stream; `end` is the byte offset after the `want`-th line.
    A line longer than MAX_RECORD_BYTES is refused as it arrives (a first line that never ends
    would otherwise be read to the end of a 300 MB file)."""

    def __init__(self, want: float) -> None:
        self.want, self.count, self.pos = want, 0, 0
        self.end: int | None = None
        self._line_open = False
        self._open_len = 0  # bytes of the line not yet ended

    def feed(self, data: bytes) -> None:
        if self.end is None:
            i = 0
            while self.count < self.want:
                j = data.find(b"\n", i)
                if j < 0:
                    break
                self._check(self._open_len + j - i)
                self._open_len = 0
                self.count += 1
                i = j + 1
                if self.count == self.want:
                    self.end = self.pos + i
            if self.end is None:
                self._open_len += len(data) - i
                self._check(self._open_len)
            if data:
                self._line_open = not data.endswith(b"\n")
        self.pos += len(data)

    def _check(self, length: int) -> None:
        if length > MAX_RECORD_BYTES:
            raise TooLong(f"line {self.count + 1} is longer than {MAX_RECORD_BYTES:,} bytes: not a Quick Draw drawing")

    def at_eof(self, name: str) -> None:
        """The file ended: a last line without a newline is a line too."""
        if self.end is None and self._line_open:
            self.count += 1
            if self.count == self.want:
                self.end = self.pos
        if self.end is None:
            self.end = self.pos


class RecordWalker:
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
            size = record_size(self._buf, i, self.count)
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
            raise QdkitError(
                f"{name}: truncated binary record {self.count} ({len(self._buf)} bytes at the end "
                "are not a whole record)"
            )
        if self.end is None:
            self.end = self.pos


def record_size(buf: bytearray, at: int, index: int) -> int | None:
    """The byte size of the binary record at `buf[at:]`, or None when it is not all in `buf` yet."""
    if len(buf) - at < BINARY_HEADER:
        return None
    strokes = int.from_bytes(buf[at + 15 : at + 17], "little")
    off = at + BINARY_HEADER
    for _ in range(strokes):
        if len(buf) < off + 2:
            return None
        off += 2 + 2 * int.from_bytes(buf[off : off + 2], "little")
        if off - at > MAX_RECORD:
            raise TooLong(f"binary record {index} claims more than {MAX_RECORD} bytes: not Quick Draw data")
    return off - at if off <= len(buf) else None
