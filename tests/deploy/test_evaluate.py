"""qdkit evaluate (ONNX vs PyTorch on a split) and qdkit visualize."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from _helpers import clean_run, exported, one_line_error, torch_logits
from click.testing import CliRunner
from onnx import numpy_helper
from PIL import Image

from qdkit.checkpoint import save_checkpoint
from qdkit.cli import main
from qdkit.data.store import open_store
from qdkit.inference.onnxmodel import OnnxModel
from qdkit.models import build_model


@pytest.fixture(scope="module")
def model(tmp_path_factory, store_path):
    return exported(tmp_path_factory, store_path)  # (checkpoint, model.onnx)


def _evaluate(*args: str):
    return CliRunner().invoke(main, ["evaluate", *args, "--threads", "1"])


def test_evaluate_agrees_and_writes_reports(model, store_path, tmp_path):
    ckpt, onnx_path = model
    out = clean_run(_evaluate("--model", str(onnx_path), "--data", str(store_path), "--out", str(tmp_path)))
    assert "parity PASS" in out and "top-1 agreement        100.0000%" in out
    report = json.loads((tmp_path / "evaluation.json").read_text())
    store = open_store(store_path)
    test = store.split("test")
    expected = torch_logits(ckpt, test.images).argmax(1)
    assert report["drawings"] == len(test) and report["class_names"] == store.class_names
    assert report["top1_agreement"] == 1.0 and report["passed"] is True
    assert report["torch_accuracy"] == pytest.approx(float((expected == test.labels).mean()))
    assert report["onnx_accuracy"] == report["torch_accuracy"]
    assert report["max_abs_prob_delta"] <= 1e-4 and report["max_abs_logit_delta"] < 1e-3
    assert report["checkpoint"] == str(ckpt.resolve())
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == len(test)
    assert cm.sum(1).tolist() == np.bincount(test.labels, minlength=4).tolist()
    assert np.trace(cm) / cm.sum() == pytest.approx(report["onnx_accuracy"])
    assert set(report["per_class_accuracy"]) == set(store.class_names)
    with Image.open(tmp_path / "confusion_matrix.png") as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_a_perturbed_weight_fails_the_parity_check(model, store_path, tmp_path):
    _, onnx_path = model
    proto = onnx.load(str(onnx_path))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the biggest weight tensor
    w = numpy_helper.to_array(init).copy()
    w.flat[np.argmax(np.abs(w))] *= 1.5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(proto, bad)  # same metadata: it still names the original checkpoint
    out = clean_run(_evaluate("--model", str(bad), "--data", str(store_path), "--out", str(tmp_path)), code=1)
    assert "parity FAIL" in out
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["passed"] is False and report["max_abs_prob_delta"] > 1e-4
    # A loose enough tolerance lets it pass: the thresholds are settable.
    clean_run(
        _evaluate(
            "--model",
            str(bad),
            "--data",
            str(store_path),
            "--out",
            str(tmp_path),
            "--max-prob-delta",
            "1",
            "--min-agreement",
            "0",
        )
    )


def test_default_model_and_checkpoint_from_metadata(model, store_path, tmp_path, monkeypatch):
    ckpt, onnx_path = model
    run = tmp_path / "artifacts" / "run"
    run.mkdir(parents=True)
    shutil.copy(onnx_path, run / "model.onnx")  # its metadata points at the original checkpoint
    monkeypatch.chdir(tmp_path)
    out = clean_run(_evaluate("--data", str(store_path)))
    assert str(ckpt.resolve()) in out and (run / "evaluation.json").is_file()


def test_bad_inputs(model, store_path, tmp_path, monkeypatch):
    ckpt, onnx_path = model
    args = ["--model", str(onnx_path), "--data", str(store_path), "--out", str(tmp_path)]
    # An explicit checkpoint other than the exported one: a warning, then the comparison fails.
    changed = tmp_path / "changed.pt"
    save_checkpoint(
        changed,
        model=build_model("qdnet", 4, width=16),
        model_name="qdnet",
        model_kwargs={"width": 16},
        class_names=open_store(store_path).class_names,
    )
    assert "SHA-256 differs" not in clean_run(_evaluate(*args, "--checkpoint", str(ckpt)))
    out = clean_run(_evaluate(*args, "--checkpoint", str(changed)), code=1)  # explicit: warned, compared
    assert "SHA-256 differs" in out and "parity FAIL" in out
    # Not a qdkit checkpoint.
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert "not a qdkit checkpoint" in one_line_error(_evaluate(*args, "--checkpoint", str(foreign)))
    # Model and store disagree on the number of classes.
    three = tmp_path / "three"
    three.mkdir()
    save_checkpoint(
        three / "best.pt",
        model=build_model("seed-cnn", 3),
        model_name="seed-cnn",
        model_kwargs={},
        class_names=["a", "b", "c"],
    )
    clean_run(CliRunner().invoke(main, ["export", str(three / "best.pt")]))
    line = one_line_error(_evaluate("--model", str(three / "model.onnx"), "--data", str(store_path)))
    assert "has 3 classes" in line and "has 4" in line
    # A model without qdkit metadata does not name its checkpoint.
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "bare.onnx")
    assert "pass --checkpoint" in one_line_error(
        _evaluate("--model", str(tmp_path / "bare.onnx"), "--data", str(store_path))
    )
    # Missing files.
    assert "no such model file" in one_line_error(
        _evaluate("--model", str(tmp_path / "x.onnx"), "--data", str(store_path))
    )
    assert "no such store" in one_line_error(_evaluate("--model", str(onnx_path), "--data", str(tmp_path / "x.h5")))
    assert "no split 'dev'" in one_line_error(_evaluate(*args, "--split", "dev"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert "no exported model found" in one_line_error(_evaluate("--data", str(store_path)))


def test_checkpoint_changed_since_export(store_path, tmp_path):
    from _helpers import train_checkpoint

    ckpt = train_checkpoint(tmp_path / "best.pt", store_path, "seed-cnn", steps=1)
    clean_run(CliRunner().invoke(main, ["export", str(ckpt)]))
    train_checkpoint(ckpt, store_path, "seed-cnn", steps=2)  # overwritten by a later save
    line = one_line_error(_evaluate("--model", str(tmp_path / "model.onnx"), "--data", str(store_path)))
    assert "changed since" in line and "re-export" in line


def test_visualize_draws_a_grid(model, store_path, tmp_path):
    _, onnx_path = model
    out = tmp_path / "grid.png"
    text = clean_run(
        CliRunner().invoke(
            main,
            [
                "visualize",
                "--model",
                str(onnx_path),
                "--data",
                str(store_path),
                "--out",
                str(out),
                "--count",
                "6",
                "--columns",
                "3",
            ],
        )
    )
    assert "wrote" in text and "6 random test drawings" in text
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 200
    res = CliRunner().invoke(
        main,
        [
            "visualize",
            "--model",
            str(onnx_path),
            "--data",
            str(store_path),
            "--out",
            str(tmp_path / "m.png"),
            "--mistakes",
            "--count",
            "4",
        ],
    )
    # A few-step model makes mistakes; should it make none, that is one clear line, not a crash.
    test = open_store(store_path).split("test")
    wrong = int((OnnxModel(onnx_path).run(np.array(test.images), want_probs=False)[0].argmax(1) != test.labels).sum())
    if wrong:
        assert f"{min(4, wrong)} misclassified test drawing" in clean_run(res)
    else:
        assert "no mistakes" in one_line_error(res)
    # Its own picture is refreshed; a user's PNG is replaced only with --overwrite.
    clean_run(
        CliRunner().invoke(
            main, ["visualize", "--model", str(onnx_path), "--data", str(store_path), "--out", str(out), "--count", "2"]
        )
    )
    Image.new("RGB", (10, 10)).save(tmp_path / "photo.png")
    args = ["visualize", "--model", str(onnx_path), "--data", str(store_path), "--out", str(tmp_path / "photo.png")]
    assert "photo.png: already exists and was not written by qdkit" in one_line_error(CliRunner().invoke(main, args))
    clean_run(CliRunner().invoke(main, [*args, "--overwrite"]))


def test_evaluate_out_never_deletes_or_replaces_what_qdkit_did_not_write(model, store_path, tmp_path):
    _, onnx_path = model
    out = tmp_path / "reports"
    args = ["--model", str(onnx_path), "--data", str(store_path), "--out", str(out)]
    (out / "evaluation.json").mkdir(parents=True)
    (out / "evaluation.json" / "precious.txt").write_text("keep me")
    assert "evaluation.json: is a folder" in one_line_error(_evaluate(*args))
    assert (out / "evaluation.json" / "precious.txt").read_text() == "keep me"
    shutil.rmtree(out / "evaluation.json")
    (out / "evaluation.json").write_text('{"mine": 1}\n')
    line = one_line_error(_evaluate(*args))
    assert "evaluation.json: already exists and was not written by qdkit" in line and "--overwrite" in line
    assert json.loads((out / "evaluation.json").read_text()) == {"mine": 1}
    assert not (out / "confusion_matrix.png").exists()
    clean_run(_evaluate(*args, "--overwrite"))
    assert "confusion_matrix_axes" in json.loads((out / "evaluation.json").read_text())
    clean_run(_evaluate(*args))  # its own reports: refreshed without --overwrite
    (out / "confusion_matrix.png").unlink()
    Image.new("RGB", (10, 10)).save(out / "confusion_matrix.png")  # a user's picture of that name
    assert "confusion_matrix.png: already exists" in one_line_error(_evaluate(*args))
