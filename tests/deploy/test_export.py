"""qdkit export: checker + parity for both models, the metadata round trip, the refusal path."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import pytest
import torch
from _helpers import clean_run, exported, one_line_error, torch_logits, train_checkpoint
from click.testing import CliRunner

from qdkit.cli import main
from qdkit.data.store import open_store
from qdkit.deploy.export import export_model
from qdkit.errors import QdkitError
from qdkit.files import sha256_file
from qdkit.inference.predictor import Predictor
from qdkit.models import INPUT_SPEC


@pytest.mark.parametrize("model_name", ["seed-cnn", "qdnet"])
def test_export_passes_checker_and_matches_pytorch(tmp_path, store_path, model_name):
    ckpt = train_checkpoint(tmp_path / "best.pt", store_path, model_name, steps=5)
    out = tmp_path / "exported.onnx"
    text = clean_run(CliRunner().invoke(main, ["export", str(ckpt), "--out", str(out)]))
    assert "parity on" in text and out.is_file()
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    (inp,) = proto.graph.input
    assert inp.name == "pixels" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities"]

    test = open_store(store_path).split("test")
    x = np.array(test.images)
    predictor = Predictor(out, threads=1)
    logits, probs = predictor.logits_and_proba(x)
    expected = torch_logits(ckpt, x)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(expected), 1).numpy(), atol=1e-5)
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_dynamic_batch_axis(tmp_path_factory, store_path):
    _, model = exported(tmp_path_factory, store_path)
    x = np.array(open_store(store_path).split("test").images[:7])
    predictor = Predictor(model, batch_size=3)  # 7 drawings -> batches of 3, 3, 1
    whole = Predictor(model).logits(x)
    np.testing.assert_allclose(predictor.logits(x), whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Predictor(model).logits(x[:1]), whole[:1], rtol=1e-5, atol=1e-5)


def test_metadata_round_trip(tmp_path_factory, store_path):
    ckpt, model = exported(tmp_path_factory, store_path)
    meta = Predictor(model).metadata
    store = open_store(store_path)
    assert meta["format"] == "qdkit-onnx/1"
    assert meta["class_names"] == store.class_names
    assert meta["input"]["name"] == "pixels"
    assert {k: meta["input"][k] for k in ("shape", "layout", "dtype", "background", "ink")} == {
        k: INPUT_SPEC[k] for k in ("shape", "layout", "dtype", "background", "ink")
    }
    assert meta["qdkit_version"] and meta["run_name"] == "test-run" and meta["model_name"] == "qdnet"
    assert meta["model_kwargs"] == {"width": 16}
    assert 0 <= meta["val_accuracy"] <= 1 and meta["test_accuracy"] == 0.5
    assert meta["checkpoint_sha256"] == sha256_file(ckpt)
    assert meta["checkpoint_path"] == str(ckpt.resolve())
    assert meta["parity"]["max_abs_prob_delta"] <= 1e-4
    # The raw props are plain strings a browser client can read without qdkit.
    props = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert json.loads(props["class_names"]) == store.class_names


def test_defaults_pick_the_newest_checkpoint(tmp_path, store_path, monkeypatch):
    old = train_checkpoint(tmp_path / "artifacts" / "old" / "best.pt", store_path, "seed-cnn", steps=1)
    new = train_checkpoint(tmp_path / "artifacts" / "new" / "best.pt", store_path, "seed-cnn", steps=1)
    import os

    os.utime(old, (1, 1))
    monkeypatch.chdir(tmp_path)
    clean_run(CliRunner().invoke(main, ["export"]))
    assert (new.parent / "model.onnx").is_file() and not (old.parent / "model.onnx").exists()


def test_test_accuracy_comes_from_the_runs_metrics_json(tmp_path, store_path):
    ckpt = tmp_path / "best.pt"
    from qdkit.checkpoint import save_checkpoint
    from qdkit.models import build_model

    save_checkpoint(
        ckpt,
        model=build_model("seed-cnn", 4),
        model_name="seed-cnn",
        model_kwargs={},
        class_names=list("abcd"),
        epoch=3,
        metrics={"val_accuracy": 0.75},
        run_name="r",
    )
    (tmp_path / "metrics.json").write_text(json.dumps({"run_name": "r", "test_accuracy": 0.625}))
    meta = export_model(ckpt).metadata
    assert meta["val_accuracy"] == "0.75" and meta["test_accuracy"] == "0.625" and meta["epoch"] == "3"


def test_disagreeing_runtimes_leave_no_file(tmp_path, store_path, monkeypatch):
    ckpt = train_checkpoint(tmp_path / "best.pt", store_path, "seed-cnn", steps=1)
    import qdkit.inference.onnxmodel as onnxmodel

    real = onnxmodel.make_session

    class Skewed:  # onnxruntime, off by a little
        def __init__(self, session):
            self.session = session

        def run(self, names, feed):
            return [o + 0.01 for o in self.session.run(names, feed)]

    monkeypatch.setattr(onnxmodel, "make_session", lambda *a, **k: Skewed(real(*a, **k)))
    result = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(tmp_path / "m.onnx")])
    line = one_line_error(result)
    assert "disagrees with PyTorch" in line and "nothing written" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_bad_checkpoints(tmp_path, monkeypatch):
    runner = CliRunner()
    assert "no such checkpoint" in one_line_error(runner.invoke(main, ["export", str(tmp_path / "nope.pt")]))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert "not a PyTorch checkpoint" in one_line_error(runner.invoke(main, ["export", str(junk)]))
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as z:  # a zip, but not a torch.save archive
        z.writestr("hello.txt", "hi")
    line = one_line_error(runner.invoke(main, ["export", str(tmp_path / "other.pt")]))
    assert "not a loadable PyTorch checkpoint" in line
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    assert "not a qdkit checkpoint" in one_line_error(runner.invoke(main, ["export", str(foreign)]))
    monkeypatch.chdir(tmp_path)
    assert "no checkpoint found" in one_line_error(runner.invoke(main, ["export"]))
    assert not list(tmp_path.glob("*.onnx"))


def test_library_error_is_a_qdkit_error(tmp_path):
    with pytest.raises(QdkitError, match="no such checkpoint"):
        export_model(tmp_path / "missing.pt")


def test_export_out_names_a_file_and_never_replaces_a_users(tmp_path, store_path):
    ckpt = train_checkpoint(tmp_path / "best.pt", store_path, "seed-cnn", steps=1)
    runner = CliRunner()
    line = one_line_error(runner.invoke(main, ["export", str(ckpt), "--out", str(tmp_path / "newdir") + "/"]))
    assert "newdir/: ends with a slash, so it names a folder" in line
    assert not (tmp_path / "newdir").exists()
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"my own model")
    line = one_line_error(runner.invoke(main, ["export", str(ckpt), "--out", str(mine)]))
    assert "mine.onnx: already exists and was not written by qdkit" in line and "--overwrite" in line
    assert mine.read_bytes() == b"my own model"
    clean_run(runner.invoke(main, ["export", str(ckpt), "--out", str(mine), "--overwrite"]))
    assert Predictor(mine).is_qdkit
    clean_run(runner.invoke(main, ["export", str(ckpt), "--out", str(mine)]))  # its own model: refreshed
    # An int8 target that is a user's file stops the export before anything is written.
    (tmp_path / "fresh.int8.onnx").write_bytes(b"mine too")
    line = one_line_error(
        runner.invoke(
            main, ["export", str(ckpt), "--out", str(tmp_path / "fresh.onnx"), "--int8", "--data", str(store_path)]
        )
    )
    assert "fresh.int8.onnx: already exists and was not written by qdkit" in line
    assert not (tmp_path / "fresh.onnx").exists()
    # A folder is never replaced by the model (the library says so; click refuses it first on the CLI).
    (tmp_path / "dir.onnx").mkdir()
    (tmp_path / "dir.onnx" / "keep.txt").write_text("keep")
    with pytest.raises(QdkitError, match="dir.onnx: is a folder"):
        export_model(ckpt, tmp_path / "dir.onnx")
    assert (tmp_path / "dir.onnx" / "keep.txt").read_text() == "keep"
