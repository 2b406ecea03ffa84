"""The drawing page in a real headless Chromium (Debian's /usr/bin/chromium through Playwright) against a
real `qdkit serve` process: strokes drawn with pointer events (mouse and touch), guesses and the 28x28
picture read back from the DOM, the picture checked against rasterize(simplify(the strokes the page sent))."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _serving import SHARED_STROKES, running_server, shared_simplified, synthetic_drawings

from qdkit.inference.predictor import Predictor
from qdkit.strokes import rasterize, simplify

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LATENCIES_MS: list[float] = []  # stroke end -> guess on screen, from every test here


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: the browser tests of qdkit serve need it (apt install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(f"BROWSER TESTS NOT RUN: {message}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(model_path):
    with running_server(model_path) as s:
        yield s


def _open(browser, server, **context):
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("request", lambda r: None if r.url.startswith(server.url) else problems.append(f"remote: {r.url}"))
    page.goto(server.url)
    page.wait_for_selector("#facts[data-classes]")
    return ctx, page, problems


@pytest.fixture
def page(browser, server):
    ctx, page, problems = _open(browser, server, viewport={"width": 1000, "height": 800})
    yield page
    ctx.close()
    assert not problems, problems


def _fit(drawing: list, low: float = 30, high: float = 440) -> list[list[list[int]]]:
    """A drawing moved and scaled into the canvas, whole pixels, no repeated consecutive points."""
    allxy = np.concatenate([np.array(s[:2], float) for s in drawing], axis=1)
    lo, span = allxy.min(axis=1, keepdims=True), max(float(np.ptp(allxy)), 1.0)
    out = []
    for s in drawing:
        out.append(np.round(low + (np.array(s[:2], float) - lo) * (high - low) / span).astype(int))
    return _as_kept(out)


def _as_kept(drawing: list) -> list[list[list[int]]]:
    """Strokes of whole pixels as the page keeps them: consecutive repeated points dropped."""
    out = []
    for stroke in drawing:
        xy = np.array(stroke)
        keep = np.ones(xy.shape[1], bool)
        keep[1:] = np.any(np.diff(xy, axis=1) != 0, axis=0)
        out.append(xy[:, keep].tolist())
    return out


def _draw(page, drawing: list, pause_ms: float = 0) -> None:
    """Each stroke by pointer events (mouse); waits for the guess that follows each stroke's end."""
    box = page.locator("#pad").bounding_box()
    for xs, ys in drawing:
        before = page.evaluate("window.qdkit.latencies.length")
        page.mouse.move(box["x"] + xs[0], box["y"] + ys[0])
        page.mouse.down()
        for x, y in zip(xs[1:], ys[1:], strict=True):
            page.mouse.move(box["x"] + x, box["y"] + y)
            if pause_ms:
                page.wait_for_timeout(pause_ms)
        page.mouse.up()
        page.wait_for_function("n => window.qdkit.latencies.length > n", arg=before)
    LATENCIES_MS.extend(page.evaluate("window.qdkit.latencies")[-len(drawing) :])


def _shown(page) -> tuple[list, np.ndarray, list[tuple[str, float]]]:
    """(the strokes the page sent for the guess on screen, the 28x28 picture, the guesses)."""
    picture = page.locator("#picture")
    sent = json.loads(picture.get_attribute("data-drawing"))["drawing"]
    bitmap = np.array([int(v) for v in picture.get_attribute("data-bitmap").split(",")], np.uint8).reshape(28, 28)
    guesses = [
        (li.get_attribute("data-class"), float(li.get_attribute("data-probability")))
        for li in page.locator("#guesses li").all()
    ]
    return sent, bitmap, guesses


def _check_shown(page, predictor: Predictor, drawn: list) -> np.ndarray:
    sent, bitmap, guesses = _shown(page)
    # the picture is the dataset's rendering of the simplified strokes the page sent...
    np.testing.assert_array_equal(bitmap, rasterize(simplify([np.array(s, float) for s in sent])))
    # ...which are the pointer positions drawn, relative to the canvas
    assert len(sent) == len(drawn)
    for got, want in zip(sent, drawn, strict=True):
        np.testing.assert_allclose(np.array(got, float), np.array(want, float), atol=0.011)
    expected = predictor.predict(bitmap[None], top_k=5)[0]
    assert len(guesses) == min(5, len(predictor.class_names))
    assert [g[0] for g in guesses] == expected.labels
    assert all(abs(p - q) <= 1e-6 for (_, p), q in zip(guesses, expected.probabilities, strict=False))
    shown = page.evaluate("""() => Array.from(document.getElementById('picture').getContext('2d')
                              .getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 === 0))""")
    np.testing.assert_array_equal(255 - np.array(shown, np.uint8).reshape(28, 28), bitmap)  # dark ink on white
    return bitmap


def test_synthetic_drawings_guessed_with_the_exact_picture(page, predictor):
    for drawing in synthetic_drawings():
        page.click("#clear")
        fitted = _fit(drawing)
        _draw(page, fitted)
        _check_shown(page, predictor, fitted)
    facts = page.locator("#facts").inner_text()
    assert "qdnet" in facts and f"{len(predictor.class_names)} classes" in facts and "run test-run" in facts


def test_guesses_while_drawing_then_undo_and_clear(page, predictor):
    t = np.linspace(0, 2 * np.pi, 60)
    long_stroke = [
        np.round(240 + 150 * np.cos(t)).astype(int).tolist(),
        np.round(240 + 120 * np.sin(2 * t)).astype(int).tolist(),
    ]
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + long_stroke[0][0], box["y"] + long_stroke[1][0])
    page.mouse.down()
    for i, (x, y) in enumerate(zip(long_stroke[0][1:], long_stroke[1][1:], strict=True)):
        page.mouse.move(box["x"] + x, box["y"] + y)
        page.wait_for_timeout(15)
        if i == 30:  # half way, the throttled guesses of the stroke so far are on screen
            page.wait_for_selector("#guesses li")
            partial, bitmap, _ = _shown(page)
            assert len(partial) == 1 and 1 < len(partial[0][0]) <= 32
            np.testing.assert_array_equal(bitmap, rasterize(simplify([np.array(s, float) for s in partial])))
    page.mouse.up()
    page.wait_for_function("() => window.qdkit.latencies.length >= 1")
    second = [[100, 380], [420, 420]]
    _draw(page, [second])
    _check_shown(page, predictor, _as_kept([long_stroke, second]))
    page.click("#undo")
    page.wait_for_function("() => JSON.parse(document.getElementById('picture').dataset.drawing).drawing.length === 1")
    _check_shown(page, predictor, _as_kept([long_stroke]))
    page.click("#clear")
    assert page.locator("#guesses li").count() == 0 and page.locator("#picture").get_attribute("data-bitmap") == ""


def test_game_names_a_class_and_says_when_it_recognised_it(page, predictor):
    drawing = _fit(synthetic_drawings()[1])
    target = predictor.predict(rasterize(simplify([np.array(s, float) for s in drawing]))[None])[0].label
    index = predictor.class_names.index(target)
    # the page picks its word with Math.random: make it pick the class this drawing shows
    page.evaluate(f"Math.random = () => ({index} + 0.5) / {len(predictor.class_names)}")
    page.click("#play")
    assert page.locator("#game-prompt").inner_text() == f"Draw: {target}"
    assert page.locator("#game-clock").inner_text().endswith(" s")
    _draw(page, drawing)
    page.wait_for_selector("#game[data-result='won']")
    assert target in page.locator("#game-prompt").inner_text()
    # a new word, and the clock runs out (moved forward rather than waiting 20 s)
    page.click("#play")
    assert page.locator("#guesses li").count() == 0  # a new round starts on a clean canvas
    page.evaluate("window.qdkit.game.ends = performance.now() + 300")
    page.wait_for_selector("#game[data-result='lost']")
    assert page.locator("#game-prompt").inner_text().startswith("Time's up")


def test_phone_screen_with_touch(browser, server, predictor):
    ctx, page, problems = _open(
        browser, server, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=3
    )
    try:
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
        box = page.locator("#pad").bounding_box()
        assert box["width"] <= 390
        cdp = ctx.new_cdp_session(page)
        stroke = [[40, 120, 200, 280, 300], [60, 250, 80, 250, 60]]
        points = list(zip(*stroke, strict=True))

        def touch(kind: str, x: float, y: float) -> None:
            where = [] if kind == "touchEnd" else [{"x": box["x"] + x, "y": box["y"] + y}]
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": where})

        touch("touchStart", *points[0])
        for x, y in points[1:]:
            touch("touchMove", x, y)
        touch("touchEnd", 0, 0)
        page.wait_for_function("() => window.qdkit.latencies.length >= 1")
        _check_shown(page, predictor, [stroke])
    finally:
        ctx.close()
    assert not problems, problems


@pytest.mark.skipif(not SHARED_STROKES.is_dir(), reason="../shared/quickdraw/strokes not present (optional)")
def test_real_strokes_replayed(page, predictor):
    for word in ("cat", "bee", "The Eiffel Tower"):
        for line in shared_simplified(word, 2):
            page.click("#clear")
            drawing = _as_kept([np.round(30 + 1.6 * np.array(s[:2])).astype(int) for s in line["drawing"]])
            _draw(page, drawing)
            _check_shown(page, predictor, drawing)


def test_stroke_end_to_guess_latency_report(page, predictor):
    """Not a pass/fail timing (the machine is shared): the p50/p95 the earlier tests measured, printed.
    It needs the browser itself (the `page` fixture: skipped loudly without Chromium, a failure under
    CI=true, like every test here) and draws its own strokes when the others did not run (-k, -x),
    so it never depends on another test having run."""
    while len(LATENCIES_MS) < 10:
        for drawing in synthetic_drawings():
            page.click("#clear")
            fitted = _fit(drawing)
            _draw(page, fitted)
            _check_shown(page, predictor, fitted)
    p50, p95 = np.percentile(LATENCIES_MS, [50, 95])
    print(
        f"\nbrowser stroke end -> guess on screen: p50 {p50:.1f} ms, p95 {p95:.1f} ms over "
        f"{len(LATENCIES_MS)} strokes (goal p95 <= 100 ms)"
    )
