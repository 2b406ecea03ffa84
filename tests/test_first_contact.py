"""A newcomer's first hour: the README's tour runs as written (its lines are read from the README, so
they cannot drift), after a tiny version of scripts/demo.sh; the pictures a run and a sweep leave;
predict's accuracy on class-named folders; progress off a terminal is plain lines; /docs offline."""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from qdkit.cli import main
from qdkit.inference.labels import folder_accuracy, label_of
from qdkit.inference.predictor import Prediction
from qdkit.progress import PlainProgress, format_seconds, progress

REPO = Path(__file__).resolve().parents[1]


def tour_lines() -> list[str]:
    """The commands of the README's tour: the first ```bash block after '## A tour', comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text.split("## A tour", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README: the tour has no bash block"
    lines = []
    for raw in block.group(1).splitlines():
        command = raw.split("  #", 1)[0].strip()  # comments follow two spaces
        if command and not command.startswith("#"):
            lines.append(command)
    return lines


def _qdkit(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    out = result.output  # stdout and stderr together
    assert result.exit_code == 0, f"qdkit {shlex.join(args)} -> {result.exit_code}\n{out}"
    return out


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """What scripts/demo.sh leaves, in miniature: demo/raw, demo/data (PNG + store), demo/artifacts/demo."""
    root = tmp_path_factory.mktemp("clone")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        _qdkit(["synth", "demo/raw", "--classes", "10", "--per-class", "24", "--format", "ndjson"])
        _qdkit(
            ["convert", "--in", "demo/raw", "--out", "demo/data", "--h5"]
            + ["--train", "16", "--validation", "4", "--test", "4", "--workers", "1"]
        )
        _qdkit(
            ["train", "--data", "demo/data/quickdraw.h5", "--epochs", "1", "--run-name", "demo"]
            + ["--runs-dir", "demo/runs", "--artifacts-dir", "demo/artifacts", "--batch-size", "32"]
        )
        _qdkit(["export", "demo/artifacts/demo/best.pt"])
        stars = Path("demo/raw/full_simplified_star.ndjson").read_text().splitlines(keepends=True)
        Path("demo/stars.ndjson").write_text("".join(stars[:3]))  # demo.sh: head -n 3 of the stars
    finally:
        os.chdir(cwd)
    return root


def test_the_readme_tour_runs_as_written(demo_root):
    lines = tour_lines()
    assert len(lines) >= 6 and all(line.startswith("qdkit ") for line in lines), lines
    env = dict(os.environ, BROWSER="false", QDKIT_PROGRESS="plain")  # --open: no browser here, and it says so
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    for line in lines:
        args = shlex.split(line)[1:]
        if args[0] == "serve":  # runs until stopped: wait for its start line, then SIGTERM it
            proc = subprocess.Popen(
                [sys.executable, "-m", "qdkit", *args, "--port", "0"],
                cwd=demo_root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                assert proc.stdout is not None
                seen = ""
                deadline = time.monotonic() + 60
                while "qdkit serve: http" not in seen and time.monotonic() < deadline:
                    seen += proc.stdout.readline() or ""
                    if proc.poll() is not None:
                        break
                assert "qdkit serve: http" in seen, f"{line}\n{seen}"
                while "--open" in args and "no web browser" not in seen and time.monotonic() < deadline:
                    seen += proc.stdout.readline() or ""  # the browser is tried beside the server
            finally:
                proc.send_signal(signal.SIGTERM)
                rest, _ = proc.communicate(timeout=30)
            if "--open" in args:
                assert "no web browser could be opened here; open http://127.0.0.1:" in seen + rest, seen + rest
            continue
        cwd = os.getcwd()
        os.chdir(demo_root)
        try:
            out = _qdkit(args)
        finally:
            os.chdir(cwd)
        assert "\r" not in out, f"{line}: a progress bar in output that is not a terminal"


def test_a_run_leaves_its_curves_as_a_picture(demo_root):
    curves = demo_root / "demo/artifacts/demo/curves.png"
    with Image.open(curves) as image:
        assert image.size[0] >= 400 and image.size[1] >= 200
        pixels = np.asarray(image.convert("L"))
    assert len(np.unique(pixels)) > 20 and pixels.std() > 5  # axes, lines and text, not a blank page


def test_predict_reports_accuracy_on_class_named_folders(demo_root):
    cwd = os.getcwd()
    os.chdir(demo_root / "demo")  # no --model: the newest artifacts/*/model.onnx, and it says which
    try:
        out = _qdkit(["predict", "data/png/test", "--top-k", "2"])
    finally:
        os.chdir(cwd)
    assert "model: artifacts/demo/model.onnx (the newest export" in out, out
    assert re.search(r"accuracy on 40 input\(s\) in class-named folders: top-1 \d+\.\d\d%, top-2", out), out


def test_folder_accuracy_counts_right():
    def pred(source: str, *labels: str) -> Prediction:
        return Prediction(list(labels), [0.5] * len(labels), list(range(len(labels))), source)

    preds = [
        pred("png/test/cat/1.png", "cat", "dog"),
        pred("png/test/cat/2.png", "dog", "cat"),
        pred("png/test/dog/3.png", "dog", "cat"),
        pred("png/test/dog/4.png", "dog", "cat"),
        pred("elsewhere/5.png", "cat", "dog"),  # not a class folder: not counted
        pred("cats/cat.ndjson:3", "cat", "dog"),  # a stroke file's line: no label
    ]
    report = folder_accuracy(preds, ["cat", "dog"])
    assert report is not None
    assert (report.labelled, report.total, report.top1, report.topk) == (4, 6, 3, 4)
    assert report.per_class == {"cat": (1, 2), "dog": (2, 2)}
    assert report.worst(1) == [("cat", 0.5, 2)]
    text = report.summary()
    assert "accuracy on 4 input(s) in class-named folders (of 6 predicted): top-1 75.00%, top-2 100.00%" in text
    assert "worst: cat 50% of 2" in text
    assert folder_accuracy(preds[4:], ["cat", "dog"]) is None
    assert label_of("x/cat/cat.ndjson:1", {"cat"}) is None


def test_progress_off_a_terminal_is_a_few_plain_lines(monkeypatch):
    monkeypatch.delenv("QDKIT_PROGRESS", raising=False)
    buf = io.StringIO()  # not a terminal
    bar = progress(total=1000, desc="convert", unit="img", file=buf)
    assert isinstance(bar, PlainProgress)
    with bar:
        for _ in range(100):
            bar.update(10)
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 5 and lines[-1].startswith("convert: 1,000/1,000 img (100%)"), lines
    silent = io.StringIO()
    for _ in progress(range(50), desc="epoch 1/2", file=silent, lines=0):
        pass
    assert silent.getvalue() == ""
    assert format_seconds(5) == "5 s" and format_seconds(125) == "2 min 05 s" and format_seconds(3720) == "1 h 02 min"


def test_convert_into_a_log_file_writes_no_bar_frames(tmp_path):
    log = tmp_path / "convert.log"
    env = dict(os.environ)
    env.pop("QDKIT_PROGRESS", None)
    with open(log, "w") as f:
        subprocess.run(
            [sys.executable, "-m", "qdkit", "synth", str(tmp_path / "raw"), "--classes", "2", "--per-class", "12"],
            check=True,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
    text = log.read_text()
    assert "\r" not in text and text.count("synth: 2/2 class (100%)") == 1, text


def test_a_sweep_draws_one_figure_per_learning_rate(tmp_path):
    from qdkit.train.curves import write_sweep_figures

    def rows(offset: float) -> list[dict[str, float]]:
        return [
            {
                "epoch": e,
                "train_accuracy": 0.5 + offset + e / 10,
                "val_accuracy": 0.4 + offset + e / 10,
                "train_loss": 2 - e / 3,
                "val_loss": 2.2 - e / 3,
            }
            for e in (1, 2, 3)
        ]

    runs = {(1e-2, 32): rows(0), (1e-2, 64): rows(0.05), (1e-3, 32): rows(0.1), (1e-3, 64): []}
    written = write_sweep_figures(runs, tmp_path, lambda lr: f"{lr:.0e}")
    assert [p.name for p in written] == ["lr1e-02.png", "lr1e-03.png"]
    for path in written:
        with Image.open(path) as image:
            assert len(np.unique(np.asarray(image.convert("L")))) > 20


def test_api_docs_need_no_internet(model_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from qdkit.serve import create_app
    from qdkit.serve.docs import ASSETS_URL, swagger_assets

    if swagger_assets() is None:
        pytest.skip("swagger-ui-bundle-v2 is not installed: /docs keeps FastAPI's CDN page")
    with TestClient(create_app(model_path, threads=1)) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "SwaggerUIBundle" in page.text
        assert "cdn." not in page.text and "https://" not in page.text.replace("https://fastapi", "")
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            r = client.get(f"{ASSETS_URL}/{asset}")
            assert r.status_code == 200 and len(r.content) > 10_000
        assert client.get("/openapi.json").status_code == 200
