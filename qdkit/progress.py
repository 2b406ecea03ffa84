"""Progress that suits where it goes: a tqdm bar on a terminal, a few plain lines anywhere else.

A bar redraws itself with carriage returns; written to a log file (demo.log, CI, `2> file`) every
frame stays in the file and the log becomes mostly bars. So when the stream is not a terminal,
`progress()` returns `PlainProgress`: one line at each quarter of the work (`lines=0`: none at all),
each with the elapsed time and the time left, and never a carriage return. Set QDKIT_PROGRESS=bar
(or =plain) to choose regardless of the stream.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any


def is_terminal(stream: IO[str] | None = None) -> bool:
    """True where a redrawn bar is right for `stream` (stderr by default): a terminal, or QDKIT_PROGRESS=bar."""
    choice = os.environ.get("QDKIT_PROGRESS", "").strip().lower()
    if choice in ("bar", "plain"):
        return choice == "bar"
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


def format_seconds(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min: a duration as a person reads it."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def plural(count: int, word: str) -> str:
    """'1 epoch', '4 epochs'."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def write_line(message: str, file: IO[str] | None = None) -> None:
    """A line on stderr (or `file`) that does not break a tqdm bar drawn there."""
    from tqdm import tqdm

    tqdm.write(message, file=file if file is not None else sys.stderr)


class PlainProgress:
    """The part of tqdm's interface qdkit uses, written as at most `lines` + 1 plain lines."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: float | None = None,
        initial: float = 0,
        desc: str = "",
        unit: str = "it",
        file: IO[str] | None = None,
        lines: int = 4,
        final: bool = True,
        disable: bool = False,
        **_: Any,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.start_n = total, initial, initial
        self.desc, self.unit, self.file = desc, unit, file
        self.lines = 0 if disable else max(0, lines)
        self.postfix = ""
        self.final = final
        self._t0 = time.monotonic()
        self._next = 1  # the next quarter (of `lines`) to report
        self._closed = False
        self._said: float | None = None  # the count of the last line written

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()  # as tqdm does at the end of its iterable

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def update(self, n: float = 1) -> None:
        self.n += n
        if not self.lines or not self.total:
            return
        while self._next < self.lines and self.n >= self.total * self._next / self.lines:
            self._next += 1
            self._say()

    def _say(self) -> None:
        elapsed = time.monotonic() - self._t0
        done = self.n - self.start_n
        line = f"{self.desc}: {self.n:,.0f}/{self.total:,.0f} {self.unit}"
        if self.total:
            line += f" ({self.n / self.total:.0%})"
        line += f", {format_seconds(elapsed)}"
        if self.total and done > 0 and self.n < self.total:
            line += f", about {format_seconds(elapsed * (self.total - self.n) / done)} left"
        if self.postfix:
            line += f" [{self.postfix}]"
        self._said = self.n
        write_line(line, self.file)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.lines and self.final and self.n > self.start_n and self._said != self.n:
            self._say()


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    file: IO[str] | None = None,
    lines: int = 4,
    final: bool = True,
    **kwargs: Any,
) -> Any:
    """A tqdm bar where `file` (stderr by default) is a terminal, else `PlainProgress` (`lines` plain
    lines through the work, and one at the end unless `final=False`; `lines=0`: silent). Other
    arguments are tqdm's."""
    if is_terminal(file):
        from tqdm import tqdm

        return tqdm(iterable, file=file if file is not None else sys.stderr, **kwargs)
    return PlainProgress(iterable, file=file, lines=lines, final=final, **kwargs)
