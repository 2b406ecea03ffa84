"""The README's picture of the drawing page: a real drawing replayed by pointer events, then a screenshot.

    python scripts/screenshot_page.py MODEL [--word cat] [--line 0] [--out docs/serve-page.png]

Starts `qdkit serve MODEL` on a free port, opens the page in headless Debian Chromium (Playwright,
no browser download), replays line LINE of `../shared/quickdraw/strokes/<word>.ndjson` stroke by
stroke with the mouse (a synthetic star where that folder is missing), waits for the guess that
follows the last stroke and saves the page. It prints the guesses the page showed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "quickdraw" / "strokes"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def drawing_for(word: str, line: int) -> list:
    path = SHARED / f"{word}.ndjson"
    if path.is_file():
        return json.loads(path.read_bytes().splitlines()[line])["drawing"]
    t = np.linspace(0, 2 * np.pi, 11)
    r = np.where(np.arange(11) % 2 == 0, 120, 50)
    return [[(128 + r * np.sin(t)).tolist(), (128 - r * np.cos(t)).tolist()]]


def on_canvas(drawing: list, low: float, high: float) -> list:
    """The drawing scaled into the canvas (whole pixels), as a hand would draw it there."""
    allxy = np.concatenate([np.array(s[:2], float) for s in drawing], axis=1)
    lo, span = allxy.min(axis=1, keepdims=True), max(float(np.ptp(allxy)), 1.0)
    return [np.round(low + (np.array(s[:2], float) - lo) * (high - low) / span).astype(int).tolist() for s in drawing]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--word", default="cat")
    parser.add_argument("--line", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "serve-page.png")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from _serving import running_server  # the same start-and-stop the tests use
    from playwright.sync_api import sync_playwright

    with running_server(args.model) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 720})
        page.goto(server.url)
        page.wait_for_selector("#facts[data-classes]")
        box = page.locator("#pad").bounding_box()
        assert box is not None
        for xs, ys in on_canvas(drawing_for(args.word, args.line), 0.1 * box["width"], 0.9 * box["width"]):
            before = page.evaluate("window.qdkit.latencies.length")
            page.mouse.move(box["x"] + xs[0], box["y"] + ys[0])
            page.mouse.down()
            for x, y in zip(xs[1:], ys[1:], strict=True):
                page.mouse.move(box["x"] + x, box["y"] + y, steps=2)
            page.mouse.up()
            page.wait_for_function("n => window.qdkit.latencies.length > n", arg=before)
        guesses = [(li.get_attribute("data-class"), li.get_attribute("data-probability"))
                   for li in page.locator("#guesses li").all()]  # fmt: skip
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}; guesses: {guesses}")


if __name__ == "__main__":
    main()
