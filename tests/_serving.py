"""Shared by the serve tests: a real `qdkit serve` process on 127.0.0.1 (a free port), and drawings."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_STROKES = REPO.parent / "shared" / "quickdraw" / "strokes"
SHARED_BITMAPS = REPO.parent / "shared" / "quickdraw" / "animals10"
URL_LINE = re.compile(r"^qdkit serve: (http://\S+/) ")


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, lines: queue.Queue) -> None:
        self.proc, self.url, self.lines = proc, url, lines
        self.first_line = ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def output(self) -> str:
        out = []
        while not self.lines.empty():
            line = self.lines.get_nowait()
            if line is not None:
                out.append(line)
        return "".join(out)


@contextlib.contextmanager
def running_server(model: Path, *args: str, timeout: float = 60) -> Iterator[Server]:
    """`python -m qdkit serve MODEL --port 0 ARGS`; yields once its one start line names the URL."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qdkit", "serve", str(model), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )
    lines = output_lines(proc)
    try:
        first = lines.get(timeout=timeout)
        match = URL_LINE.match(first or "")
        assert match, f"no start line from qdkit serve: {first!r}"
        server = Server(proc, match.group(1), lines)
        server.first_line = first
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def synthetic_drawings() -> list[list[list[list[float]]]]:
    """Raw strokes in canvas-like pixel coordinates (a square, a circle, a triangle, a star, scribbles)."""
    t = np.linspace(0, 2 * np.pi, 40)
    circle = [[(200 + 120 * np.cos(t)).round(1).tolist(), (200 + 120 * np.sin(t)).round(1).tolist()]]
    square = [[[80, 320, 320], [80, 80, 320]], [[320, 80, 80], [320, 320, 80]]]
    triangle = [[[200, 330, 70, 200], [60, 320, 320, 60]]]
    angles = np.pi / 2 + np.arange(11) * 4 * np.pi / 5
    star = [[(200 + 150 * np.cos(angles)).round().tolist(), (200 - 150 * np.sin(angles)).round().tolist()]]
    rng = np.random.default_rng(7)
    scribble = [
        [np.cumsum(rng.integers(-9, 10, 25)).tolist(), np.cumsum(rng.integers(-9, 10, 25)).tolist()] for _ in range(3)
    ]
    dot = [[[100], [100]], [[150, 152], [150, 151]]]
    return [circle, square, triangle, star, scribble, dot]


def shared_simplified(word: str, limit: int) -> list[dict]:
    """The first `limit` drawings of ../shared/quickdraw/strokes/<word>.ndjson (simplified strokes)."""
    with open(SHARED_STROKES / f"{word}.ndjson", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(limit), f, strict=False)]


def output_lines(proc: subprocess.Popen) -> queue.Queue:
    """A queue of the lines the process prints (stdout, text mode), read in a thread; None at its end."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines
