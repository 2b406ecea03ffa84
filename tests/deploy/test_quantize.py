"""qdkit export --int8: the int8 model keeps the contract and the metadata, agrees with fp32, passes
evaluate with its own tolerances, and every refusal leaves no file."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from _helpers import clean_run, exported, one_line_error
from click.testing import CliRunner

from qdkit import Predictor
from qdkit.cli import main
from qdkit.data.store import open_store
from qdkit.deploy.quantize import default_store, int8_path, quantize_model
from qdkit.errors import QdkitError
from qdkit.inference.onnxmodel import default_model_path


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, store_path):
    """(checkpoint, model.onnx, model.int8.onnx, CLI output) from one `qdkit export --int8`."""
    ckpt, _ = exported(tmp_path_factory, store_path)
    out = tmp_path_factory.mktemp("int8") / "model.onnx"
    text = clean_run(
        CliRunner().invoke(main, ["export", str(ckpt), "--out", str(out), "--int8", "--data", str(store_path)])
    )
    return ckpt, out, int8_path(out), text


def test_int8_model_keeps_the_contract_and_metadata(int8_export, store_path):
    _, fp32_path, int8, text = int8_export
    assert int8.name == "model.int8.onnx" and int8.is_file()
    (line,) = [t for t in text.splitlines() if t.startswith("int8 ->")]
    assert "top-1 agreement with fp32" in line and "MiB fp32" in line
    fp32, q = onnx.load(str(fp32_path)), onnx.load(str(int8))
    onnx.checker.check_model(q, full_check=True)
    assert str(q.graph.input) == str(fp32.graph.input)  # uint8 `pixels`, (N, 1, 28, 28)
    assert [(o.name, o.type.tensor_type.elem_type) for o in q.graph.output] == [
        ("logits", onnx.TensorProto.FLOAT),
        ("probabilities", onnx.TensorProto.FLOAT),
    ]
    assert {o.domain for o in q.opset_import} == {o.domain for o in fp32.opset_import}
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in q.graph.initializer)
    assert int8.stat().st_size < 0.5 * fp32_path.stat().st_size

    fp32_props = {p.key: p.value for p in fp32.metadata_props}
    props = {p.key: p.value for p in q.metadata_props}
    assert {k: props[k] for k in fp32_props} == fp32_props  # every fp32 prop, unchanged
    meta = Predictor(int8).metadata
    quant = meta["quantization"]
    store = open_store(store_path)
    assert quant["type"] == "int8-static-qdq" and quant["calibrate_method"] == "minmax"
    # 7-bit weights hold the gate on every x86-64 CPU (no u8 x s8 saturation without VNNI); the gate's
    # CPU and onnxruntime are recorded (docs/int8.md)
    assert quant["settings"] == {"weight_type": "int8", "reduce_range": True, "per_channel": True}
    assert "7-bit range" in quant["weights"] and quant["gated_on"]["onnxruntime"] == quant["onnxruntime_version"]
    assert isinstance(quant["gated_on"]["cpu_flags"], list) and quant["gated_on"]["machine"]
    assert quant["calibration_drawings"] == store.counts["train"]  # 800 < the 1,024 default: all of them
    assert quant["gate_split"] == "validation" and quant["gate_drawings"] == store.counts["validation"]
    assert 0.98 <= quant["agreement"] <= 1 and quant["min_agreement"] == 0.98
    assert quant["store"] == str(store_path) and quant["source_model"] == "model.onnx"
    assert 0 <= quant["int8_accuracy"] <= 1 and 0 <= quant["fp32_accuracy"] <= 1


def test_int8_agrees_with_fp32_and_predicts(int8_export, store_path):
    _, fp32_path, int8, _ = int8_export
    test = open_store(store_path).split("test")
    x = np.array(test.images)
    f_logits, _ = Predictor(fp32_path, threads=1).logits_and_proba(x)
    predictor = Predictor(int8, threads=1)
    q_logits, q_probs = predictor.logits_and_proba(x)
    assert (q_logits.argmax(1) == f_logits.argmax(1)).mean() >= 0.95
    assert q_probs.dtype == np.float32 and np.abs(q_probs.sum(1) - 1).max() < 1e-3 and q_probs.min() >= 0
    assert (q_probs.argmax(1) == q_logits.argmax(1)).all()
    (p,) = predictor.predict(x[0], top_k=2)
    assert p.label in predictor.class_names and len(p.labels) == 2


def test_evaluate_int8_uses_its_own_tolerances(int8_export, store_path, tmp_path):
    _, _, int8, _ = int8_export
    args = ["evaluate", "--model", str(int8), "--data", str(store_path), "--out", str(tmp_path), "--threads", "1"]
    out = clean_run(CliRunner().invoke(main, args))
    assert out.startswith("int8 model") and "(reported, not gated: int8 model)" in out and "parity PASS" in out
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["tolerances"] == {"min_agreement": 0.98, "max_prob_delta": None}
    assert report["quantization"]["type"] == "int8-static-qdq" and report["passed"] is True
    assert report["top1_agreement"] >= 0.98 and report["max_abs_prob_delta"] > 1e-4  # int8 does move them
    # Explicit tolerances are the caller's: the fp32 bar fails an int8 model.
    out = clean_run(CliRunner().invoke(main, [*args, "--max-prob-delta", "1e-4"]), code=1)
    assert "(need <= 0.0001)" in out and "parity FAIL" in out


def test_a_refused_int8_model_leaves_no_file(int8_export, store_path, tmp_path, monkeypatch):
    ckpt, fp32_path, _, _ = int8_export
    import qdkit.deploy.quantize

    monkeypatch.setattr(qdkit.deploy.quantize, "MIN_AGREEMENT", 1.01)  # no model reaches it
    result = CliRunner().invoke(
        main, ["export", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--int8", "--data", str(store_path)]
    )
    line = one_line_error(result)
    assert "agrees with fp32 on only" in line and "nothing written" in line and "fp32" in line
    assert "on this CPU (" in line and "deploy the fp32 model" in line and "--int8-min-agreement" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # the fp32 model, no temporaries
    # The library refuses the same way, and checks its inputs.
    drawings = np.array(open_store(store_path).split("train").images[:64])
    with pytest.raises(QdkitError, match="agrees with fp32 on only"):
        quantize_model(fp32_path, tmp_path / "q.onnx", drawings, gate=drawings[:32], min_agreement=1.01)
    with pytest.raises(QdkitError, match=r"\(N, 28, 28\) uint8"):
        quantize_model(fp32_path, tmp_path / "q.onnx", drawings.astype(np.float32), gate=drawings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_int8_store_problems_stop_before_anything_is_written(int8_export, store_path, tmp_path, monkeypatch):
    ckpt, _, _, _ = int8_export
    runner = CliRunner()
    out = tmp_path / "out" / "model.onnx"
    line = one_line_error(
        runner.invoke(main, ["export", str(ckpt), "--out", str(out), "--int8", "--data", str(tmp_path / "nope.h5")])
    )
    assert "nope.h5: no such store" in line
    # Default store: the run's metrics.json names none here, so data/quickdraw.h5, which is missing.
    monkeypatch.chdir(tmp_path)
    assert "data/quickdraw.h5: no such store" in one_line_error(
        runner.invoke(main, ["export", str(ckpt), "--out", str(out), "--int8"])
    )
    # A checkpoint whose classes are not the store's.
    from qdkit.checkpoint import save_checkpoint
    from qdkit.models import build_model

    three = tmp_path / "three.pt"
    save_checkpoint(
        three, model=build_model("seed-cnn", 3), model_name="seed-cnn", model_kwargs={}, class_names=["a", "b", "c"]
    )
    line = one_line_error(
        runner.invoke(main, ["export", str(three), "--out", str(out), "--int8", "--data", str(store_path)])
    )
    assert "has 3 classes" in line
    assert "only with --int8" in one_line_error(
        runner.invoke(main, ["export", str(ckpt), "--out", str(out), "--data", str(store_path)])
    )
    assert not (tmp_path / "out").exists()


def test_defaults(int8_export, tmp_path, monkeypatch, store_path):
    ckpt, fp32_path, int8, _ = int8_export
    # The calibration store: the run's metrics.json "data", else data/quickdraw.h5.
    (tmp_path / "best.pt").write_bytes(b"")
    assert (
        default_store(tmp_path / "best.pt") == default_store(tmp_path / "x.pt") == type(tmp_path)("data/quickdraw.h5")
    )
    (tmp_path / "metrics.json").write_text(json.dumps({"run_name": "r", "data": str(store_path)}))
    assert default_store(tmp_path / "best.pt") == store_path
    # predict/evaluate/visualize default to the fp32 model even though the int8 one is newer.
    run = tmp_path / "artifacts" / "run"
    run.mkdir(parents=True)
    (run / "model.onnx").write_bytes(fp32_path.read_bytes())
    (run / "model.int8.onnx").write_bytes(int8.read_bytes())
    os.utime(run / "model.onnx", (1, 1))
    monkeypatch.chdir(tmp_path)
    assert default_model_path() == type(tmp_path)("artifacts/run/model.onnx")
    (run / "model.onnx").unlink()
    assert default_model_path() == type(tmp_path)("artifacts/run/model.int8.onnx")
    # Re-exporting fp32 alone warns that the int8 model beside it is now stale.
    out = clean_run(CliRunner().invoke(main, ["export", str(ckpt), "--out", str(run / "model.onnx")]))
    assert "model.int8.onnx is from an earlier export" in out
