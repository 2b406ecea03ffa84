"""qdkit export --triton: a Triton model repository whose config parses with Triton's own protobuf
definitions (tritonclient's model_config_pb2) and matches what `qdkit serve` speaks over v2."""

from __future__ import annotations

import warnings

import pytest
from _helpers import clean_run, exported, one_line_error
from click.testing import CliRunner
from google.protobuf import text_format

from qdkit.cli import main
from qdkit.deploy.triton import config_text, write_repository
from qdkit.errors import QdkitError
from qdkit.inference.predictor import Predictor

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


@pytest.fixture(scope="module")
def model(tmp_path_factory, store_path):
    return exported(tmp_path_factory, store_path)  # (checkpoint, model.onnx)


def _parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_export_triton_writes_a_repository_that_triton_parses(model, tmp_path):
    ckpt, _ = model
    out, repo = tmp_path / "model.onnx", tmp_path / "triton"
    output = clean_run(CliRunner().invoke(main, ["export", str(ckpt), "--out", str(out), "--triton", str(repo)]))
    assert f"{repo / 'qdkit'}" in output
    names = Predictor(out, threads=1).class_names
    config = _parse((repo / "qdkit" / "config.pbtxt").read_text())
    assert config.name == "qdkit" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 1024
    (pixels,) = config.input
    assert (pixels.name, pixels.data_type, list(pixels.dims)) == ("pixels", model_config_pb2.TYPE_UINT8, [1, 28, 28])
    fp32, n = model_config_pb2.TYPE_FP32, len(names)
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("logits", fp32, [n]),
        ("probabilities", fp32, [n]),
    ]
    assert config.output[1].label_filename == "labels.txt"
    assert config.HasField("dynamic_batching") and 0 < config.dynamic_batching.max_queue_delay_microseconds <= 2000
    assert (repo / "qdkit" / "labels.txt").read_text().splitlines() == names
    assert (repo / "qdkit" / "1" / "model.onnx").read_bytes() == out.read_bytes()
    # a re-export replaces the repository qdkit wrote; nothing is left half-written beside it
    clean_run(CliRunner().invoke(main, ["export", str(ckpt), "--out", str(out), "--triton", str(repo)]))
    assert sorted(p.name for p in repo.iterdir()) == ["qdkit", "qdkit_rasterize", "qdkit_strokes"]


def test_triton_metadata_matches_qdkit_serve_v2(model):
    """The same client talks to both: input/output names, datatypes and per-drawing shapes agree."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from qdkit.serve import create_app

    _, onnx_path = model
    names = Predictor(onnx_path, threads=1).class_names
    config = _parse(config_text("qdkit", names))
    with TestClient(create_app(onnx_path, threads=1)) as c:
        meta = c.get(f"/v2/models/{config.name}").json()
    dtype = {model_config_pb2.TYPE_UINT8: "UINT8", model_config_pb2.TYPE_FP32: "FP32"}
    assert [(t["name"], t["datatype"], t["shape"][1:]) for t in meta["inputs"]] == [
        (t.name, dtype[t.data_type], list(t.dims)) for t in config.input
    ]
    assert [(t["name"], t["datatype"], t["shape"][1:]) for t in meta["outputs"]] == [
        (t.name, dtype[t.data_type], list(t.dims)) for t in config.output
    ]
    assert meta["parameters"]["class_names"] == names


def test_triton_refuses_what_it_did_not_write(model, tmp_path):
    ckpt, onnx_path = model
    repo = tmp_path / "repo"
    (repo / "qdkit").mkdir(parents=True)
    (repo / "qdkit" / "config.pbtxt").write_text('name: "mine"\n')
    (repo / "qdkit" / "notes.txt").write_text("keep me")
    out = tmp_path / "model.onnx"
    error = one_line_error(CliRunner().invoke(main, ["export", str(ckpt), "--out", str(out), "--triton", str(repo)]))
    assert "config.pbtxt" in error and "--overwrite" in error
    assert not out.exists()  # refused before anything was written
    assert (repo / "qdkit" / "config.pbtxt").read_text() == 'name: "mine"\n'
    (tmp_path / "file").write_text("x")
    with pytest.raises(QdkitError, match="is a file"):
        write_repository(onnx_path, tmp_path / "file")
    (repo / "other").write_text("x")
    with pytest.raises(QdkitError, match="is a file"):
        write_repository(onnx_path, repo, name="other")
    written = write_repository(onnx_path, repo, overwrite=True)  # files replaced, the folder and the rest kept
    assert _parse(written.config.read_text()).name == "qdkit"
    assert (repo / "qdkit" / "notes.txt").read_text() == "keep me"
