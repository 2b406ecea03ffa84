"""qdkit predict and the Predictor API: PNGs from convert agree with PyTorch on the store, image
normalisation (any size/mode/polarity -> a Quick-Draw-style drawing), and every bad input."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from _helpers import FIXTURES, alive, children_of, clean_run, exported, one_line_error, torch_logits
from click.testing import CliRunner
from PIL import Image

from qdkit import Predictor
from qdkit.cli import main
from qdkit.data.store import open_store
from qdkit.errors import QdkitError
from qdkit.images import image_to_drawing, is_dark_on_light, read_drawing
from qdkit.inference.paths import expand_paths
from qdkit.inference.predictor import Prediction


@pytest.fixture(scope="module")
def model(tmp_path_factory, store_path):
    return exported(tmp_path_factory, store_path)  # (checkpoint, model.onnx)


@pytest.fixture(scope="module")
def test_rows(store_path, png_dir):
    """{png path: store row} for the test split, via class folder and source row."""
    store = open_store(store_path)
    test = store.split("test")
    rows = {}
    for row, (label, source) in enumerate(zip(test.labels, test.source_index, strict=True)):
        path = png_dir / "test" / store.class_names[label] / f"{source}.png"
        assert path.is_file(), path
        rows[path] = row
    return test, rows


def _body(out: str) -> str:
    """The output without qdkit's own warning and summary lines."""
    return "\n".join(line for line in out.splitlines() if not line.startswith("qdkit:"))


def _parse_csv(text: str) -> dict[Path, dict[str, str]]:
    return {Path(r["path"]): r for r in csv.DictReader(io.StringIO(text))}


def test_pngs_from_convert_read_back_exactly(test_rows):
    test, rows = test_rows
    for path, row in rows.items():
        np.testing.assert_array_equal(read_drawing(path), test.images[row])


def test_predict_on_convert_pngs_matches_pytorch_on_the_store(model, test_rows, png_dir):
    ckpt, onnx_path = model
    test, rows = test_rows
    # The folder is searched recursively; 200 files go through the decoding pool.
    result = CliRunner().invoke(
        main,
        [
            "predict",
            str(png_dir / "test"),
            "--model",
            str(onnx_path),
            "--format",
            "csv",
            "--top-k",
            "2",
            "--workers",
            "2",
        ],
    )
    got = _parse_csv(clean_run(result))
    assert set(got) == set(rows)
    expected = torch_logits(ckpt, test.images).argmax(1)
    names = open_store(png_dir.parent / "quickdraw.h5").class_names
    for path, row in rows.items():
        assert got[path]["class_1"] == names[expected[row]], path
        p1, p2 = float(got[path]["probability_1"]), float(got[path]["probability_2"])
        assert 0 <= p2 <= p1 <= 1


def test_formats_globs_and_output_file(model, png_dir, tmp_path):
    _, onnx_path = model
    runner = CliRunner()
    pattern = str(png_dir / "test" / "*" / "1*.png")  # quoted: qdkit expands it itself
    files, problems = expand_paths([pattern])
    assert files and not problems
    js = json.loads(
        clean_run(
            runner.invoke(main, ["predict", pattern, "--model", str(onnx_path), "--format", "json", "--top-k", "3"])
        )
    )
    assert [Path(r["path"]) for r in js] == files
    assert all(len(r["top"]) == 3 and abs(sum(t["probability"] for t in r["top"])) <= 1 + 1e-6 for r in js)
    table = clean_run(ran := runner.invoke(main, ["predict", str(files[0]), str(files[1]), "--model", str(onnx_path)]))
    assert len(ran.stdout.splitlines()) == 2 and str(files[0]) in table and "%" in table
    assert "accuracy on 2 input(s) in class-named folders: top-1" in table  # on stderr, after the table
    # These PNGs are dark ink on light: --invert yes is what auto decides, --invert no is not.
    auto = clean_run(runner.invoke(main, ["predict", pattern, "--model", str(onnx_path), "--format", "csv"]))
    assert (
        clean_run(
            runner.invoke(main, ["predict", pattern, "--model", str(onnx_path), "--format", "csv", "--invert", "yes"])
        )
        == auto
    )
    assert (
        clean_run(
            runner.invoke(main, ["predict", pattern, "--model", str(onnx_path), "--format", "csv", "--invert", "no"])
        )
        != auto
    )
    out = tmp_path / "preds.csv"
    text = clean_run(
        runner.invoke(
            main,
            [
                "predict",
                pattern,
                "--model",
                str(onnx_path),
                "--format",
                "csv",
                "--output",
                str(out),
                "--threads",
                "1",
                "--batch-size",
                "7",
            ],
        )
    )
    assert f"wrote {len(files)} predictions" in text
    assert list(_parse_csv(out.read_text())) == files


def test_predictor_api_accepts_arrays_images_and_paths(model, test_rows):
    _, onnx_path = model
    test, rows = test_rows
    path, row = next(iter(rows.items()))
    drawing = np.array(test.images[row])
    p = Predictor(onnx_path, threads=1)
    by_array = p.predict(drawing, top_k=2)
    assert isinstance(by_array, list) and len(by_array) == 1 and isinstance(by_array[0], Prediction)
    assert len(by_array[0].labels) == 2 and by_array[0].label == by_array[0].labels[0]
    same = [
        p.predict(drawing[None])[0],
        p.predict(drawing[None, None])[0],
        p.predict(str(path))[0],
        p.predict(Image.open(path))[0],
        p.predict(path)[0],
    ]
    assert {s.label for s in same} == {by_array[0].label}
    assert p.predict(path)[0].source == str(path)
    batch = p.predict([drawing, str(path), Image.open(path)])
    assert len(batch) == 3 and [b.source for b in batch] == [None, str(path), None]
    proba = p.predict_proba(np.array(test.images[:5]))
    assert proba.shape == (5, len(p.class_names))
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    assert p.logits(np.array(test.images[:5])).shape == (5, len(p.class_names))
    assert p.predict(np.zeros((0, 28, 28), np.uint8)) == []
    with pytest.raises(TypeError):
        p.predict(42)


# --- image normalisation ---------------------------------------------------------------------


def _bbox(drawing: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(drawing.any(1)), np.flatnonzero(drawing.any(0))
    return rows[0], rows[-1], cols[0], cols[-1]


def _fills_frame(drawing: np.ndarray) -> bool:
    r0, r1, c0, c1 = _bbox(drawing > 40)
    long_side = max(r1 - r0, c1 - c0) + 1
    # Like the real bitmaps: the longer side spans ~26 of 28 pixels, centred.
    return long_side >= 25 and abs(r0 - (27 - r1)) <= 2 and abs(c0 - (27 - c1)) <= 2


def _cropped_and_fitted(drawing: np.ndarray) -> np.ndarray:
    r0, r1, c0, c1 = _bbox(drawing)
    crop = drawing[r0 : r1 + 1, c0 : c1 + 1]
    scale = 26 / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    out = np.zeros((28, 28), np.uint8)
    top, left = (28 - h) // 2, (28 - w) // 2
    out[top : top + h, left : left + w] = np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.BILINEAR))
    return out


def _blur(drawing: np.ndarray) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(np.pad(drawing.astype(float), 1), (3, 3)).mean(axis=(2, 3))


def test_big_rgb_rgba_and_inverted_images_become_the_same_drawing(model, test_rows, tmp_path):
    _, onnx_path = model
    test, rows = test_rows
    p = Predictor(onnx_path, threads=1)
    picks = list(rows.values())[::25]
    originals = np.array(test.images[picks])
    variants: dict[str, list[np.ndarray]] = {"rgb": [], "rgba": [], "inverted": [], "small": []}
    for i, d in enumerate(originals):
        big = Image.fromarray(255 - d).resize((252, 252), Image.Resampling.BILINEAR)
        # a dark doodle off-centre on a large, slightly warm white RGB page
        page = Image.new("RGB", (700, 480), (250, 247, 240))
        page.paste(big.convert("RGB"), (380, 150))
        page.save(tmp_path / f"page{i}.jpg", quality=95)
        variants["rgb"].append(read_drawing(tmp_path / f"page{i}.jpg"))
        # black strokes on a transparent sheet
        sheet = Image.new("RGBA", (300, 260), (0, 0, 0, 0))
        ink = Image.new("RGBA", (196, 196), (0, 0, 0, 255))
        ink.putalpha(Image.fromarray(d).resize((196, 196), Image.Resampling.BILINEAR))
        sheet.paste(ink, (20, 40))
        sheet.save(tmp_path / f"sheet{i}.png")
        variants["rgba"].append(read_drawing(tmp_path / f"sheet{i}.png"))
        # light ink on dark, larger than 28 (so it is fitted too)
        variants["inverted"].append(image_to_drawing(Image.fromarray(d).resize((140, 140), Image.Resampling.BICUBIC)))
        variants["small"].append(image_to_drawing(np.asarray(Image.fromarray(255 - d).resize((20, 20)))))
    # A fitted image spans 26 of 28 pixels, like the real Quick Draw bitmaps: the reference is the
    # original cropped to its ink and scaled to that size, centred. The fixture's strokes are the
    # dataset's ~1.5 px pen, where a 1-pixel offset from rounding would dominate a correlation of
    # raw pixels, so both sides are compared after a 3x3 box blur.
    reference = np.array([_cropped_and_fitted(d) for d in originals])
    want = [r.label for r in p.predict(reference)]
    for name, variant in variants.items():
        drawings = np.array(variant)
        assert all(_fills_frame(v) for v in drawings), name
        corr = [np.corrcoef(_blur(a).ravel(), _blur(b).ravel())[0, 1] for a, b in zip(drawings, reference, strict=True)]
        assert min(corr) > 0.85, (name, corr)
        got = [r.label for r in p.predict(drawings)]
        assert sum(a == b for a, b in zip(got, want, strict=True)) >= len(want) - 1, (name, got, want)


def test_polarity_and_28x28_inputs_are_never_resampled(tmp_path):
    rng = np.random.default_rng(0)
    d = np.zeros((28, 28), np.uint8)
    d[5:23, 9] = 255
    d[5, 9:20] = 200
    assert not is_dark_on_light(d) and is_dark_on_light(255 - d)
    np.testing.assert_array_equal(image_to_drawing(Image.fromarray(255 - d)), d)  # dark on light
    np.testing.assert_array_equal(image_to_drawing(Image.fromarray(d)), d)  # already light on dark
    np.testing.assert_array_equal(image_to_drawing(Image.fromarray(d), invert="yes"), 255 - d)
    np.testing.assert_array_equal(image_to_drawing(Image.fromarray(255 - d).convert("RGB")), d)
    noise = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_drawing(Image.fromarray(noise), invert="no"), noise)
    assert not image_to_drawing(Image.new("L", (300, 200), 255)).any()  # a blank page: no drawing
    # 28x28 files other than qdkit's own PNGs: black ink as alpha on a transparent sheet, and RGB.
    Image.merge("LA", [Image.new("L", (28, 28), 0), Image.fromarray(d)]).save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(read_drawing(tmp_path / "alpha.png"), d)
    Image.fromarray(255 - d).convert("RGB").save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_drawing(tmp_path / "rgb.png"), d)


def test_thin_lines_on_a_big_page_get_a_quick_draw_pen(tmp_path):
    page = Image.new("L", (1200, 900), 255)
    from PIL import ImageDraw

    ImageDraw.Draw(page).rectangle((300, 200, 800, 700), outline=0, width=2)  # 2-px pen, 500-px square
    d = image_to_drawing(page)
    assert _fills_frame(d)
    assert d.max() == 255 and (d[14, :] > 128).sum() >= 2  # each side stays a solid ~2 px stroke


# --- bad input ---------------------------------------------------------------------------------


def test_bad_files_warn_and_the_rest_go_on(model, png_dir, tmp_path):
    _, onnx_path = model
    good = sorted((png_dir / "test").rglob("*.png"))[:3]
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image\n")
    (tmp_path / "cut.png").write_bytes(good[0].read_bytes()[:-30])  # pixel data cut short
    bad = [tmp_path / "empty.png", tmp_path / "notes.png", tmp_path / "cut.png", tmp_path / "missing.png"]
    result = CliRunner().invoke(
        main,
        ["predict", *map(str, good[:2]), *map(str, bad), str(good[2]), "--model", str(onnx_path), "--format", "csv"],
    )
    out = clean_run(result, code=1)
    warnings = [line for line in out.splitlines() if line.startswith("qdkit: warning:")]
    assert len(warnings) == 4, out
    assert any("empty.png: empty file" in w for w in warnings)
    assert any("notes.png: not an image" in w for w in warnings)
    assert any("cut.png: unreadable image" in w for w in warnings)
    assert any("missing.png: no such file" in w for w in warnings)
    assert list(_parse_csv(_body(out))) == good
    assert "4 input(s) failed, 3 predicted" in out


def test_decompression_bomb_is_one_line(model, tmp_path, monkeypatch):
    _, onnx_path = model
    Image.new("L", (100, 100), 255).save(tmp_path / "warn.png")  # over the limit: PIL only warns
    Image.new("L", (300, 300), 255).save(tmp_path / "bomb.png")  # over twice the limit: PIL raises
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    for name in ("warn.png", "bomb.png"):
        with pytest.raises(QdkitError, match=f"{name}: image too large"):
            read_drawing(tmp_path / name)
    result = CliRunner().invoke(
        main, ["predict", str(tmp_path / "warn.png"), str(tmp_path / "bomb.png"), "--model", str(onnx_path)]
    )
    out = clean_run(result, code=1)
    assert out.count("image too large") == 2 and len(out.strip().splitlines()) == 3


def test_no_images_at_all(model, tmp_path):
    _, onnx_path = model
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hi")
    runner = CliRunner()
    assert "folder has no images" in one_line_error(
        runner.invoke(main, ["predict", str(tmp_path / "docs"), "--model", str(onnx_path)])
    )
    assert "no file matches" in one_line_error(
        runner.invoke(main, ["predict", str(tmp_path / "*.png"), "--model", str(onnx_path)])
    )


def test_bad_model_files(model, png_dir, tmp_path, monkeypatch):
    _, onnx_path = model
    png = str(next((png_dir / "test").rglob("*.png")))
    runner = CliRunner()

    def err(model_file) -> str:
        return one_line_error(runner.invoke(main, ["predict", png, "--model", str(model_file)]))

    assert "no such model file" in err(tmp_path / "none.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert "empty file" in err(tmp_path / "empty.onnx")
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(0).bytes(3000))
    assert "not a usable ONNX model" in err(tmp_path / "junk.onnx")
    (tmp_path / "cut.onnx").write_bytes(onnx_path.read_bytes()[:5000])
    assert "not a usable ONNX model" in err(tmp_path / "cut.onnx")
    assert "not a usable ONNX model" in err(png)  # an image is not a model
    # A graph that does not take 28x28 drawings.
    x = onnx.helper.make_tensor_value_info("img", onnx.TensorProto.FLOAT, ["N", 3, 32, 32])
    y = onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", 3, 32, 32])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["img"], ["out"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), tmp_path / "rgb.onnx")
    assert "qdkit feeds 28x28 drawings" in err(tmp_path / "rgb.onnx")
    # No default model under artifacts/.
    monkeypatch.chdir(tmp_path)
    assert "no exported model found" in one_line_error(runner.invoke(main, ["predict", png]))


def test_model_without_qdkit_metadata_still_runs(model, png_dir, tmp_path):
    _, onnx_path = model
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, bare)
    png = str(next((png_dir / "test").rglob("*.png")))
    result = CliRunner().invoke(main, ["predict", png, "--model", str(bare), "--format", "json"])
    out = clean_run(result)
    assert sum(line.startswith("qdkit: warning:") and "no qdkit metadata" in line for line in out.splitlines()) == 1
    body = json.loads(_body(out))
    assert body[0]["top"][0]["class"] in {"0", "1", "2", "3"}
    with pytest.warns(UserWarning, match="no qdkit metadata"):
        assert Predictor(bare).class_names == ["0", "1", "2", "3"]


# --- decoding processes: a dying worker, a killed parent ------------------------------------------


@pytest.fixture(scope="module")
def slow_images(tmp_path_factory):
    """300 copies of a 900x900 JPEG page (~10 ms each to decode and fit): work that lasts a while."""
    from PIL import ImageDraw

    folder = tmp_path_factory.mktemp("slow")
    page = Image.new("L", (900, 900), 255)
    ImageDraw.Draw(page).ellipse((200, 200, 700, 650), outline=0, width=12)
    page.save(folder / "0.jpg", quality=90)
    for i in range(1, 300):
        (folder / f"{i}.jpg").write_bytes((folder / "0.jpg").read_bytes())
    return folder


def _wait_for(condition, seconds: float) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_a_dying_decoder_process_loses_no_result(model, slow_images):
    import multiprocessing
    import os
    import signal
    import threading

    from qdkit.inference.batch import predict_files

    _, onnx_path = model
    files = sorted(slow_images.iterdir(), key=lambda p: int(p.stem))[:120]  # enough for the process pool
    killed = []

    def kill_a_worker() -> None:  # as if the kernel killed it for memory, mid-run
        if _wait_for(lambda: bool(multiprocessing.active_children()), 30):
            victim = multiprocessing.active_children()[0]
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    warned: list[str] = []
    result = predict_files(files, onnx_path, workers=2, warn=warned.append)
    killer.join()
    assert killed
    assert [p.source for p in result.predictions] == [str(f) for f in files]
    assert not result.errors and len(warned) == 1 and "decoding process died" in warned[0]


def _start_predict(folder: Path, onnx_path: Path) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qdkit",
            "predict",
            str(folder),
            "--model",
            str(onnx_path),
            "--workers",
            "2",
            "--format",
            "csv",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert _wait_for(lambda: len(children_of(proc.pid)) >= 2, 60), "the decoding pool never started"
    return proc, children_of(proc.pid)


def test_kill_9_of_predict_leaves_no_worker_behind(model, slow_images):
    import signal

    _, onnx_path = model
    proc, workers = _start_predict(slow_images, onnx_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert _wait_for(lambda: not any(map(alive, workers)), 5), f"orphaned workers: {workers}"


def test_sigterm_of_predict_stops_it_like_ctrl_c(model, slow_images):
    import signal

    _, onnx_path = model
    proc, workers = _start_predict(slow_images, onnx_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "qdkit: interrupted" in err and "Traceback" not in err
    assert _wait_for(lambda: not any(map(alive, workers)), 5), f"orphaned workers: {workers}"


# --- hostile inputs (issue 10) -----------------------------------------------------------------


def _some_pngs(png_dir: Path, n: int) -> list[Path]:
    return sorted((png_dir / "test").rglob("*.png"))[:n]


def test_fifos_and_other_non_regular_files_are_skipped_with_a_warning(model, png_dir, tmp_path):
    import os
    import shutil

    _, onnx_path = model
    good = _some_pngs(png_dir, 2)
    folder = tmp_path / "in"
    folder.mkdir()
    for g in good:
        shutil.copy(g, folder / g.name)
    os.mkfifo(folder / "pipe.png")  # reading it would block forever
    os.mkfifo(folder / "stream.ndjson")
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    runner = CliRunner()
    for args in ([str(folder)], [str(folder / "*")], [str(folder / "pipe.png"), str(folder / good[0].name)]):
        out = clean_run(runner.invoke(main, ["predict", *args, "--model", str(onnx_path), "--format", "csv"]), code=1)
        warnings = [line for line in out.splitlines() if line.startswith("qdkit: warning:")]
        assert any("pipe.png: a FIFO" in w for w in warnings), out
        assert len(_parse_csv(_body(out))) == (1 if len(args) == 2 else 2), out  # every good file, once
    out = clean_run(runner.invoke(main, ["predict", str(folder), "--model", str(onnx_path)]), code=1)
    assert "stream.ndjson: a FIFO" in out and "gone.png: a broken symbolic link" in out
    os.mkfifo(tmp_path / "model.onnx")  # a FIFO as the model: refused, not opened
    line = one_line_error(runner.invoke(main, ["predict", str(folder), "--model", str(tmp_path / "model.onnx")]))
    assert "model.onnx: not a regular file" in line


def test_globs_and_folders_survive_symlink_loops_without_duplicates(model, png_dir, tmp_path):
    import shutil

    _, onnx_path = model
    good = _some_pngs(png_dir, 3)
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    shutil.copy(good[0], root / "top.png")
    shutil.copy(good[1], root / "a" / "mid.png")
    shutil.copy(good[2], root / "a" / "b" / "deep.png")
    (root / "a" / "b" / "up").symlink_to(root, target_is_directory=True)  # a loop back to the top
    (root / "a" / "self").symlink_to(root / "a", target_is_directory=True)  # a loop onto itself
    (root / "again").symlink_to(root / "a", target_is_directory=True)  # a second way into a/
    want = {root / "top.png", root / "a" / "mid.png", root / "a" / "b" / "deep.png"}
    for spec in (str(root), str(root / "**" / "*.png"), str(root / "**")):
        files, problems = expand_paths([spec])
        assert not problems, (spec, problems)
        assert len(files) == 3 and {f.resolve() for f in files} == want, (spec, files)
    out = clean_run(
        CliRunner().invoke(main, ["predict", str(root / "**" / "*.png"), "--model", str(onnx_path), "--format", "csv"])
    )
    assert len(_parse_csv(out)) == 3
    # One file reached through a/ and again/ is listed once.
    assert expand_paths([str(root / "*" / "*.png")]) == ([root / "a" / "mid.png"], [])
    files, problems = expand_paths([str(root / "**" / "a") + "*"])  # a/ and again/ (top.png via a/b/up)
    assert not problems and len(files) == 3 and {f.resolve() for f in files} == want
    # A folder named twice, or a folder and its subfolder: each file once, no false "no images".
    files, problems = expand_paths([str(root / "a"), str(root / "a" / "b"), str(root / "a")])
    assert not problems and len(files) == 3 and {f.resolve() for f in files} == want
    assert expand_paths([str(tmp_path / "nowhere" / "**" / "*.png")]) == (
        [],
        [f"{tmp_path}/nowhere/**/*.png: no file matches"],
    )


def test_an_unreadable_subfolder_is_a_warning_and_exit_code_1(model, png_dir, tmp_path):
    import os
    import shutil

    _, onnx_path = model
    good = _some_pngs(png_dir, 2)
    root = tmp_path / "in"
    (root / "locked").mkdir(parents=True)
    shutil.copy(good[0], root / "open.png")
    shutil.copy(good[1], root / "locked" / "hidden.png")
    cmd = [sys.executable, "-m", "qdkit", "predict", str(root), "--model", str(onnx_path), "--format", "csv"]
    if os.geteuid() == 0:  # root reads any folder: drop the two capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot make a folder unreadable")
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *cmd]
    (root / "locked").chmod(0)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        (root / "locked").chmod(0o755)
    assert done.returncode == 1, done.stderr
    assert f"{root / 'locked'}: cannot read folder (Permission denied)" in done.stderr
    assert "1 input(s) failed, 1 predicted" in done.stderr and "Traceback" not in done.stderr
    assert list(_parse_csv(done.stdout)) == [root / "open.png"]


def test_messages_are_said_once_and_in_qdkit_words(model, tmp_path):
    _, onnx_path = model
    runner = CliRunner()
    out = runner.invoke(main, ["predict", str(tmp_path / "*.png"), "--model", str(onnx_path)]).output
    assert "no file matches" in one_line_error(
        runner.invoke(main, ["predict", str(tmp_path / "*.png"), "--model", str(onnx_path)])
    )
    assert out.count("no file matches") == 1, out
    # A float TIFF with NaN pixels: one warning naming the file, no Python-format warning lines.
    pixels = np.zeros((40, 40), np.float32)
    pixels[5:30, 10] = np.nan
    Image.fromarray(pixels, mode="F").save(tmp_path / "nan.tif")
    out = clean_run(runner.invoke(main, ["predict", str(tmp_path / "nan.tif"), "--model", str(onnx_path)]), code=1)
    assert "nan.tif: unreadable image (the image has NaN or infinite pixels)" in out
    assert "Warning" not in out and ".py:" not in out, out
    with pytest.raises(QdkitError, match="NaN"):
        Predictor(onnx_path).predict(np.full((28, 28), np.nan))


def test_predict_output_never_replaces_a_file_without_overwrite(model, png_dir, tmp_path):
    _, onnx_path = model
    png = str(_some_pngs(png_dir, 1)[0])
    runner = CliRunner()
    mine = tmp_path / "notes.csv"
    mine.write_text("my own notes\n")
    line = one_line_error(runner.invoke(main, ["predict", png, "--model", str(onnx_path), "--output", str(mine)]))
    assert "notes.csv: already exists" in line and "--overwrite" in line
    assert mine.read_text() == "my own notes\n"
    clean_run(
        runner.invoke(
            main, ["predict", png, "--model", str(onnx_path), "--output", str(mine), "--overwrite", "--format", "csv"]
        )
    )
    assert list(_parse_csv(mine.read_text())) == [Path(png)]
    assert "names a folder" in one_line_error(
        runner.invoke(main, ["predict", png, "--model", str(onnx_path), "--output", str(tmp_path / "new") + "/"])
    )
    assert not (tmp_path / "new").exists()


def test_debug_prints_the_traceback_behind_the_one_line_error(tmp_path):
    runner = CliRunner()
    args = ["predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "junk.onnx")]
    (tmp_path / "junk.onnx").write_bytes(b"junk" * 100)
    Image.new("L", (28, 28)).save(tmp_path / "x.png")
    for result in (runner.invoke(main, ["--debug", *args]), runner.invoke(main, args, env={"QDKIT_DEBUG": "1"})):
        assert result.exit_code == 2
        assert "Traceback (most recent call last)" in result.output
        assert result.output.strip().splitlines()[-1].startswith("qdkit: error: ")
        assert "The above exception was the direct cause" in result.output  # the cause is kept
    assert "Traceback" not in runner.invoke(main, args).output


# --- strokes: .ndjson files and Drawing / stroke-list inputs (issue 8) ---------------------------


@pytest.fixture(scope="module")
def golden():
    """Six real simplified drawings (ndjson lines) and the official bitmaps of the same drawings."""
    lines = (FIXTURES / "golden_strokes.ndjson").read_text().splitlines()
    return lines, np.load(FIXTURES / "golden_bitmaps.npy").reshape(-1, 28, 28)


def test_ndjson_lines_are_drawings_named_by_file_and_line(model, golden, tmp_path):
    _, onnx_path = model
    lines, bitmaps = golden
    bare = json.dumps(json.loads(lines[1])["drawing"])  # a bare stroke list is a drawing too
    cats = tmp_path / "cats.ndjson"
    cats.write_text("\n".join([lines[0], "", bare, '{"drawing": [[[1, 2], [3]]]}', "not json", *lines[2:]]) + "\n")
    out = clean_run(
        CliRunner().invoke(main, ["predict", str(cats), "--model", str(onnx_path), "--format", "csv", "--top-k", "2"]),
        code=1,
    )
    rows = list(csv.DictReader(io.StringIO(_body(out))))
    assert [r["path"] for r in rows] == [f"{cats}:{n}" for n in (1, 3, 6, 7, 8, 9)]
    # Rasterized by qdkit.strokes, byte for byte the official bitmaps: the same predictions.
    want = Predictor(onnx_path).predict(bitmaps, top_k=2)
    assert [r["class_1"] for r in rows] == [w.label for w in want]
    assert [float(r["probability_1"]) for r in rows] == pytest.approx([w.probability for w in want], abs=2e-6)
    warnings = [line for line in out.splitlines() if line.startswith("qdkit: warning:")]
    assert len(warnings) == 2, out
    assert f"{cats}:4: stroke 0 has 2 xs but 1 ys" in warnings[0] and f"{cats}:5: is not JSON" in warnings[1]
    assert "2 input(s) failed, 6 predicted" in out


def test_a_big_ndjson_file_goes_through_the_pool_in_order(model, golden, tmp_path):
    _, onnx_path = model
    lines, bitmaps = golden
    many = tmp_path / "many.ndjson"
    many.write_text("\n".join(lines * 100) + "\n")  # 600 drawings, ~400 KB: decoded by the pool
    folder_png = tmp_path / "one.png"
    Image.fromarray(255 - bitmaps[0]).save(folder_png)
    out = clean_run(
        CliRunner().invoke(
            main,
            [
                "predict",
                str(tmp_path),
                "--model",
                str(onnx_path),
                "--format",
                "csv",
                "--workers",
                "2",
                "--batch-size",
                "64",
            ],
        )
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["path"] for r in rows] == [f"{many}:{n}" for n in range(1, 601)] + [str(folder_png)]
    want = [p.label for p in Predictor(onnx_path).predict(bitmaps)]
    assert [r["class_1"] for r in rows[:600]] == want * 100


def test_a_gzip_file_named_ndjson_is_one_line(model, golden, tmp_path):
    import gzip

    _, onnx_path = model
    lines, _ = golden
    (tmp_path / "packed.ndjson").write_bytes(gzip.compress(("\n".join(lines * 50) + "\n").encode()))
    out = clean_run(
        CliRunner().invoke(main, ["predict", str(tmp_path / "packed.ndjson"), "--model", str(onnx_path)]), code=1
    )
    assert out.count("qdkit: warning:") == 1, out  # one line for the file, not one per (binary) line
    assert "packed.ndjson: is gzip-compressed, not ndjson data (gunzip it first)" in out
    assert "1 input(s) failed, 0 predicted" in out


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", ": is empty"),
        (b"\n\n", ": holds no drawings"),
        (b"\xff\xfe{]\n", ":1: is not JSON"),
        (b'{"drawing": [[[1, 2], [3, 4]]], "recognized": "yes"}\n', ":1: 'recognized' is str, not bool"),
        (b"[[[0, 300], [0, 10]]]\n", ":1: coordinates outside 0..255"),
        (b'{"drawing": [[[NaN], [1]]]}\n', ":1: is not JSON"),  # NaN is not JSON
        (b"[]\n", ":1: drawing has no strokes"),
        (b'{"drawing": "[[[1], [1]]]"}\n', ":1: drawing is str, not a list of strokes"),
        (b"[[[1, 2], [3, 4]]]" + b" " * 3000 + b"\n", ":1: is 3,018 bytes long (at most 2,048 bytes per drawing)"),
    ],
)
def test_hostile_ndjson_files_are_one_line_each(model, tmp_path, monkeypatch, content, message):
    import qdkit.data.strokefiles

    _, onnx_path = model
    monkeypatch.setattr(qdkit.data.strokefiles, "MAX_RECORD_BYTES", 2048)  # the cap, small enough to test cheaply
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(content)
    out = clean_run(CliRunner().invoke(main, ["predict", str(bad), "--model", str(onnx_path)]), code=1)
    warnings = [line for line in out.splitlines() if line.startswith("qdkit: warning:")]
    assert len(warnings) == 1 and f"{bad}{message}" in warnings[0], out
    assert "Traceback" not in out and "0 predicted" in out


def test_predictor_takes_drawings_stroke_lists_and_ndjson_objects(model, golden):
    from qdkit.strokes import StrokeError, parse_drawing

    _, onnx_path = model
    lines, bitmaps = golden
    p = Predictor(onnx_path, threads=1)
    obj = json.loads(lines[0])
    want = p.predict_proba(bitmaps[:1])
    for x in (obj, obj["drawing"], parse_drawing(obj), [parse_drawing(obj)]):
        np.testing.assert_array_equal(p.predict_proba(x), want)
    batch = p.predict([obj, obj["drawing"], bitmaps[1], json.loads(lines[2])["drawing"]])
    assert [b.label for b in batch] == [w.label for w in p.predict(bitmaps[[0, 0, 1, 2]])]
    with pytest.raises(StrokeError, match="has 2 xs but 1 ys"):
        p.predict({"drawing": [[[1, 2], [3]]]})
    with pytest.raises(QdkitError, match="no 'drawing' key"):
        p.predict({"strokes": obj["drawing"]})


def test_a_model_without_qdkit_metadata_is_supported_by_its_shapes(tmp_path, golden):
    """The deliberate decision: a foreign model that fits the contract's shapes runs (indices for
    class names, raw pixels in); one that does not is refused in one line (test_bad_model_files)."""
    from onnx import TensorProto, helper, numpy_helper

    _, bitmaps = golden
    weights = np.random.default_rng(0).normal(0, 0.01, (784, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["z"]),
            helper.make_node("Softmax", ["z"], ["scores"], axis=1),
        ],
        "foreign",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.warns(UserWarning, match="no qdkit metadata"):
        p = Predictor(path)
    assert p.class_names == p.classes == ["0", "1", "2"] and not p.is_qdkit
    z = bitmaps.reshape(-1, 784).astype(np.float32) @ weights  # raw 0..255 pixels, as the warning says
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    # Its only output already is probabilities: used as they are, not put through a second softmax.
    np.testing.assert_allclose(p.predict_proba(bitmaps), expected, rtol=1e-4, atol=1e-6)


def test_predict_reads_every_stroke_format_convert_reads(model, golden, tmp_path):
    """.ndjson, .bin and .csv go through qdkit.data.strokefiles, as in convert and render."""
    from qdkit.strokes import pack_binary, parse_ndjson_line

    _, onnx_path = model
    lines, bitmaps = golden
    drawings = [parse_ndjson_line(line.encode()) for line in lines]
    (tmp_path / "cats.bin").write_bytes(b"".join(pack_binary(d) for d in drawings))
    rows = [{"key_id": str(i), "drawing": json.dumps(json.loads(line)["drawing"])} for i, line in enumerate(lines)]
    with open(tmp_path / "cats.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["key_id", "drawing"])
        writer.writeheader()
        writer.writerows(rows)
    want = [p.label for p in Predictor(onnx_path).predict(bitmaps)]
    for name, first in (("cats.bin", 0), ("cats.csv", 2)):
        out = clean_run(
            CliRunner().invoke(main, ["predict", str(tmp_path / name), "--model", str(onnx_path), "--format", "csv"])
        )
        got = list(csv.DictReader(io.StringIO(out)))
        assert [r["path"] for r in got] == [f"{tmp_path / name}:{first + i}" for i in range(len(lines))]
        assert [r["class_1"] for r in got] == want
