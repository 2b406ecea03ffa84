"""The exported repository in a real Triton: `qdkit export --triton --triton-backend python`, then
`qdkit triton` starts the tritonserver of nvidia-pytriton on 127.0.0.1 (free ports, no metrics port)
with the server's Python of scripts/_venv.sh (.venv-triton: qdkit, onnxruntime, numpy<2), and
tritonclient talks to it over HTTP and gRPC: pixels as Predictor, strokes as POST /predict of
`qdkit serve`, the classification extension, the batch limit, a bad drawing failing only its own
request, and a clean stop on SIGTERM. Under CI=true a Triton that is missing or cannot start
fails; elsewhere the tests skip, loudly."""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _helpers import clean_run, exported, one_line_error
from _serving import REPO, SHARED_STROKES, output_lines, running_server, shared_simplified, synthetic_drawings
from click.testing import CliRunner

from qdkit.cli import main
from qdkit.deploy.export import parity_drawings
from qdkit.deploy.triton import MAX_BATCH_SIZE
from qdkit.deploy.tritonserver import INSTALL_HINT, find_tritonserver
from qdkit.errors import QdkitError
from qdkit.predict import Predictor
from qdkit.strokes import parse_drawing, rasterize

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODELS = ["qdkit", "qdkit_rasterize", "qdkit_strokes"]
START_TIMEOUT_S = 120


def _not_run(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(f"TRITON TESTS NOT RUN: {message}")


def _server_python() -> Path:
    return Path(os.environ.get("QDKIT_TRITON_PYTHON") or REPO / ".venv-triton" / "bin" / "python")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Triton:
    def __init__(self, proc: subprocess.Popen, http_port: int, grpc_port: int, lines: queue.Queue) -> None:
        self.proc, self.lines = proc, lines
        self.http, self.grpc = f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
        self.ports = (http_port, grpc_port)
        self.output: list[str] = []

    def drain(self) -> str:
        while not self.lines.empty():
            line = self.lines.get_nowait()
            if line is not None:
                self.output.append(line)
        return "".join(self.output)


@pytest.fixture(scope="module")
def model(tmp_path_factory, store_path):
    return exported(tmp_path_factory, store_path)  # (checkpoint, model.onnx)


@pytest.fixture(scope="module")
def predictor(model):
    return Predictor(model[1], threads=1)


@pytest.fixture(scope="module")
def repo(model, tmp_path_factory):
    ckpt, _ = model
    out = tmp_path_factory.mktemp("triton")
    args = ["export", str(ckpt), "--out", str(out / "model.onnx"), "--triton", str(out / "repo")]
    clean_run(CliRunner().invoke(main, [*args, "--triton-backend", "python"]))
    return out / "repo"


@pytest.fixture(scope="module")
def triton(repo):
    if find_tritonserver() is None:
        _not_run(f"{INSTALL_HINT} (scripts/_venv.sh installs it)")
    python = _server_python()
    if not python.exists():
        _not_run(f"{python}: no server Python for Triton's Python backend (scripts/_venv.sh makes .venv-triton)")
    http_port, grpc_port = _free_ports(2)
    cmd = [sys.executable, "-m", "qdkit", "triton", str(repo), "--http-port", str(http_port)]
    proc = subprocess.Popen(
        [*cmd, "--grpc-port", str(grpc_port), "--python", str(python)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    lines = output_lines(proc)
    server = Triton(proc, http_port, grpc_port, lines)
    try:
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                line = None
            if line is None:
                _not_run(f"qdkit triton did not start in {START_TIMEOUT_S} s: {server.drain()}")
            server.output.append(line)
            if line.startswith("qdkit triton: http://"):
                break
        assert len(server.output) == 1, server.output  # one line, nothing before it
        yield server
        # Ctrl-C/SIGTERM: a clean stop, exit code 0, the ports closed, nothing left running
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, server.drain()
        assert server.drain().rstrip().endswith("qdkit triton: stopped")
        for port in server.ports:
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _http(triton):
    return httpclient.InferenceServerClient(triton.http, network_timeout=120, connection_timeout=60)


def _grpc(triton):
    return grpcclient.InferenceServerClient(triton.grpc)


def _pixels_input(client_module, pixels: np.ndarray, binary: bool = True):
    x = client_module.InferInput("pixels", list(pixels.shape), "UINT8")
    if client_module is httpclient:
        x.set_data_from_numpy(pixels, binary_data=binary)
    else:
        x.set_data_from_numpy(pixels)
    return x


def _drawings_input(client_module, elements: list[str]):
    x = client_module.InferInput("drawings", [len(elements), 1], "BYTES")
    data = np.array([e.encode() for e in elements], dtype=np.object_).reshape(-1, 1)
    if client_module is httpclient:
        x.set_data_from_numpy(data, binary_data=False)  # v2 JSON, as a browser would send it
    else:
        x.set_data_from_numpy(data)
    return x


def _outputs(client_module, *names: str, class_count: int = 0):
    return [client_module.InferRequestedOutput(n, class_count=class_count) for n in names]


def test_repository_loads_unchanged_health_metadata_index(triton, repo, predictor):
    before = {p: p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}
    http, grpc = _http(triton), _grpc(triton)
    for client in (http, grpc):
        assert client.is_server_live() and client.is_server_ready()
        assert all(client.is_model_ready(m) for m in MODELS)
    index = http.get_model_repository_index()
    assert sorted((m["name"], m["state"]) for m in index) == [(m, "READY") for m in MODELS]
    meta = http.get_model_metadata("qdkit")
    n = len(predictor.class_names)
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("pixels", "UINT8", [-1, 1, 28, 28])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("logits", "FP32", [-1, n]),
        ("probabilities", "FP32", [-1, n]),
    ]
    strokes = grpc.get_model_metadata("qdkit_strokes", as_json=True)
    assert [(t["name"], t["datatype"]) for t in strokes["inputs"]] == [("drawings", "BYTES")]
    assert {t["name"] for t in strokes["outputs"]} == {"probabilities", "logits", "bitmaps"}
    assert {p: p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()} == before


def test_pixels_equal_predictor_over_http_and_grpc(triton, predictor):
    drawings = parity_drawings(48, seed=3)
    logits, probs = predictor.logits_and_proba(drawings)
    pixels = drawings[:, None]
    answers = [
        _http(triton).infer("qdkit", [_pixels_input(httpclient, pixels, binary=False)]),  # v2 JSON
        _http(triton).infer(
            "qdkit", [_pixels_input(httpclient, pixels)], outputs=_outputs(httpclient, "logits", "probabilities")
        ),
        _grpc(triton).infer("qdkit", [_pixels_input(grpcclient, pixels)]),
    ]
    for answer in answers:
        np.testing.assert_allclose(answer.as_numpy("probabilities"), probs, rtol=0, atol=1e-6)
        np.testing.assert_allclose(answer.as_numpy("logits"), logits, rtol=1e-5, atol=1e-5)
    # compressed request and response bodies (gzip) give the same answer
    gz = _http(triton).infer(
        "qdkit",
        [_pixels_input(httpclient, pixels)],
        request_compression_algorithm="gzip",
        response_compression_algorithm="gzip",
    )
    np.testing.assert_allclose(gz.as_numpy("probabilities"), probs, rtol=0, atol=1e-6)


def _stroke_drawings() -> tuple[list, list]:
    """(raw stroke lists, simplified ones): canvas-like doodles and, where shared/ has them, real drawings."""
    raw = synthetic_drawings()
    simplified = []
    if SHARED_STROKES.is_dir():
        words = sorted(p.stem for p in SHARED_STROKES.glob("*.ndjson"))[:3]
        simplified = [d["drawing"] for w in words for d in shared_simplified(w, 4)]
        raw += simplified[:4]  # the same strokes, also as raw ones (simplified again)
    else:
        simplified = [[[[0, 100, 255], [0, 200, 40]]], [[[10, 10], [0, 255]], [[0, 255], [128, 128]]]]
    return raw, simplified


def test_strokes_through_the_ensemble_equal_qdkit_serve_predict(triton, model, predictor):
    import httpx

    _, onnx_path = model
    raw, simplified = _stroke_drawings()
    names, k = predictor.class_names, len(predictor.class_names)
    with running_server(onnx_path, "--threads", "1") as server:
        served = []
        for body in ({"drawings": raw}, {"drawings": simplified, "simplified": True}):
            r = httpx.post(f"{server.url}predict?top_k={k}&bitmap=true", json=body, timeout=60)
            assert r.status_code == 200, r.text
            served += r.json()["predictions"]
    want_bitmaps = np.array([p["bitmap"] for p in served], np.uint8)
    want_probs = np.array([[{t["class"]: t["probability"] for t in p["top"]}[c] for c in names] for p in served])
    elements = [json.dumps(d) for d in raw] + [json.dumps({"drawing": d, "simplified": True}) for d in simplified]
    for client_module, client in ((httpclient, _http(triton)), (grpcclient, _grpc(triton))):
        answer = client.infer(
            "qdkit_strokes",
            [_drawings_input(client_module, elements)],
            outputs=_outputs(client_module, "probabilities", "bitmaps"),
        )
        bitmaps = answer.as_numpy("bitmaps")
        assert bitmaps.shape == (len(elements), 1, 28, 28)
        np.testing.assert_array_equal(bitmaps[:, 0], want_bitmaps)  # byte for byte the picture qdkit serve saw
        np.testing.assert_allclose(answer.as_numpy("probabilities"), want_probs, rtol=0, atol=2e-6)  # serve rounds to 6
    # probabilities only: the bitmaps are not sent back
    answer = _http(triton).infer(
        "qdkit_strokes", [_drawings_input(httpclient, elements[:2])], outputs=_outputs(httpclient, "probabilities")
    )
    assert answer.as_numpy("bitmaps") is None and answer.as_numpy("probabilities").shape == (2, k)


def test_classification_extension_gives_class_names(triton, predictor):
    drawings = parity_drawings(6, seed=5)
    expected = predictor.predict(drawings, top_k=3)
    raw = [[[[10, 60, 110], [10, 80, 10]], [[30, 90], [50, 50]]], [[[0, 50, 100, 0], [0, 100, 0, 0]]]]
    expected_strokes = predictor.predict(
        np.stack([rasterize(parse_drawing(d, simplified=False)) for d in raw]), top_k=3
    )
    for client_module, client in ((httpclient, _http(triton)), (grpcclient, _grpc(triton))):
        for model_name, inputs, want in (
            ("qdkit", [_pixels_input(client_module, drawings[:, None])], expected),
            ("qdkit_strokes", [_drawings_input(client_module, [json.dumps(d) for d in raw])], expected_strokes),
        ):
            answer = client.infer(model_name, inputs, outputs=_outputs(client_module, "probabilities", class_count=3))
            rows = answer.as_numpy("probabilities")
            assert rows.shape == (len(want), 3)
            for row, prediction in zip(rows, want, strict=True):
                entries = [(v.decode() if isinstance(v, bytes) else v).split(":") for v in row]
                assert [e[2] for e in entries] == prediction.labels
                np.testing.assert_allclose([float(e[0]) for e in entries], prediction.probabilities, atol=1e-6)


def test_batch_at_the_config_limit_works_and_above_it_is_refused(triton):
    from qdkit.inference.v2spec import MAX_DRAWINGS

    http = _http(triton)
    assert MAX_BATCH_SIZE == MAX_DRAWINGS  # what one request to qdkit serve may carry
    for m in ("qdkit", "qdkit_rasterize", "qdkit_strokes"):
        assert http.get_model_config(m)["max_batch_size"] == MAX_BATCH_SIZE
    pixels = np.zeros((MAX_BATCH_SIZE, 1, 28, 28), np.uint8)
    pixels[:, 0, 10:18, 4:24] = 255
    out = http.infer("qdkit", [_pixels_input(httpclient, pixels)]).as_numpy("probabilities")
    assert out.shape[0] == MAX_BATCH_SIZE and np.allclose(out.sum(axis=1), 1, atol=1e-4)
    over = np.zeros((MAX_BATCH_SIZE + 1, 1, 28, 28), np.uint8)
    with pytest.raises(InferenceServerException, match="batch"):
        http.infer("qdkit", [_pixels_input(httpclient, over)])
    with pytest.raises(InferenceServerException, match="batch"):
        _grpc(triton).infer("qdkit", [_pixels_input(grpcclient, over)])
    line = json.dumps([[[0, 255], [0, 255]]])
    strokes = _grpc(triton).infer("qdkit_strokes", [_drawings_input(grpcclient, [line] * MAX_BATCH_SIZE)])
    assert strokes.as_numpy("probabilities").shape[0] == MAX_BATCH_SIZE
    with pytest.raises(InferenceServerException, match="batch"):
        _grpc(triton).infer("qdkit_strokes", [_drawings_input(grpcclient, [line] * (MAX_BATCH_SIZE + 1))])
    assert http.is_server_ready()
    stats = http.get_inference_statistics("qdkit")["model_stats"][0]
    assert stats["inference_count"] >= MAX_BATCH_SIZE and stats["execution_count"] >= 1


BAD_DRAWINGS = [
    ("[[[0, 10], [0]]]", "stroke 0 has 2 xs but 1 ys"),
    ("{not json", "not JSON"),
    ("[]", "no strokes"),
    ('{"drawing": [[[0, 10], [0, 10]]], "simplified": "yes"}', "simplified: true or false expected"),
    ('{"drawing": [[[0, 10], [0, 10]]], "colour": 3}', "colour: unknown field"),
    ('{"drawing": [[[0, 300], [0, 10]]], "simplified": true}', "0..255"),
    # parses, but simplification refuses it (over its work cap): still only this request's error
    (json.dumps([[[0, 1] * 500, [0, 0] * 500, list(range(1000))]]), "too long a path to simplify"),
]


def test_a_bad_drawing_fails_only_its_own_request(triton, predictor):
    good = [json.dumps(d) for d in synthetic_drawings()]
    want = predictor.predict_proba(np.stack([rasterize(parse_drawing(json.loads(g), simplified=False)) for g in good]))
    jobs = []
    for i in range(36):  # concurrent requests, so Triton's dynamic batcher mixes good and bad ones
        if i % 3 == 2:
            bad, message = BAD_DRAWINGS[(i // 3) % len(BAD_DRAWINGS)]
            jobs.append(([good[0], bad], "drawings[1]: ", message))
        else:
            jobs.append(([good[i % len(good)]], None, None))

    def send(job):
        elements, prefix, _ = job
        client = _grpc(triton) if len(elements) == 1 else _http(triton)
        module = grpcclient if len(elements) == 1 else httpclient
        try:
            return client.infer("qdkit_strokes", [_drawings_input(module, elements)]).as_numpy("probabilities")
        except InferenceServerException as e:
            return str(e)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, jobs))
    for i, ((elements, prefix, message), result) in enumerate(zip(jobs, results, strict=True)):
        if prefix is None:
            assert isinstance(result, np.ndarray), result
            np.testing.assert_allclose(result[0], want[i % len(good)], rtol=0, atol=1e-6)
        else:
            assert isinstance(result, str), f"request {i} with {elements[1]!r} was answered"
            assert prefix in result and message in result, result
            assert "Traceback" not in result and "\n" not in result.strip(), result
    assert _http(triton).is_server_ready()


def test_every_config_parses_for_both_backends_and_the_replace_rule_holds(model, tmp_path):
    """Without a server: Triton's own protobuf definitions read every config.pbtxt qdkit writes."""
    from google.protobuf import text_format

    from qdkit.deploy.triton import write_repository

    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    _, onnx_path = model
    for backend in ("onnxruntime", "python"):
        written = write_repository(onnx_path, tmp_path / backend, backend=backend)
        configs = {
            p.parent.name: text_format.Parse(p.read_text(), pb2.ModelConfig())
            for p in written.folder.parent.glob("*/config.pbtxt")
        }
        assert sorted(configs) == MODELS
        assert (configs["qdkit"].platform, configs["qdkit"].backend) == (
            ("onnxruntime_onnx", "") if backend == "onnxruntime" else ("", "python")
        )
        assert (written.model_py.is_file()) == (backend == "python")
        assert configs["qdkit_rasterize"].backend == "python" and configs["qdkit_strokes"].platform == "ensemble"
        assert all(c.max_batch_size == MAX_BATCH_SIZE for c in configs.values())
        kinds = {name: [g.kind for g in c.instance_group] for name, c in configs.items()}
        assert kinds == {
            "qdkit": [pb2.ModelInstanceGroup.KIND_AUTO],
            "qdkit_rasterize": [pb2.ModelInstanceGroup.KIND_CPU],
            "qdkit_strokes": [],
        }
        steps = configs["qdkit_strokes"].ensemble_scheduling.step
        assert [s.model_name for s in steps] == ["qdkit_rasterize", "qdkit"]
        assert (written.folder.parent / "qdkit_strokes" / "labels.txt").read_text() == written.labels.read_text()
    # switching back to onnxruntime removes the model.py the python export wrote
    again = write_repository(onnx_path, tmp_path / "python", backend="onnxruntime")
    assert not again.model_py.exists()
    # a foreign file in the ensemble's place is kept and named
    foreign = tmp_path / "python" / "qdkit_strokes" / "config.pbtxt"
    foreign.write_text('name: "mine"\n')
    with pytest.raises(QdkitError, match="qdkit_strokes/config.pbtxt.*--overwrite"):
        write_repository(onnx_path, tmp_path / "python", backend="python")
    assert foreign.read_text() == 'name: "mine"\n'


def test_qdkit_triton_says_what_is_missing(model, repo, tmp_path):
    assert find_tritonserver(search_path="", packages=False) is None
    assert "pip install --no-deps nvidia-pytriton==0.7.0" in INSTALL_HINT
    error = one_line_error(CliRunner().invoke(main, ["triton", str(tmp_path / "nothing")]))
    assert "nothing: no such folder" in error
    error = one_line_error(CliRunner().invoke(main, ["triton", str(tmp_path)]))
    assert "no model repository" in error
    if find_tritonserver() is not None and find_tritonserver(packages=False) is None:
        # the wheel's tritonserver has no onnxruntime backend: the default export is refused up front
        ckpt, _ = model
        default = tmp_path / "default"
        clean_run(
            CliRunner().invoke(main, ["export", str(ckpt), "--out", str(default / "m.onnx"), "--triton", str(default)])
        )
        error = one_line_error(CliRunner().invoke(main, ["triton", str(default)]))
        assert "onnxruntime backend" in error and "--triton-backend python" in error
    if find_tritonserver() is not None and _server_python().exists():
        # a taken port: one line, before Triton starts
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = str(taken.getsockname()[1])
            args = ["triton", str(repo), "--http-port", port, "--grpc-port", str(_free_ports(1)[0])]
            error = one_line_error(CliRunner().invoke(main, [*args, "--python", str(_server_python())]))
        assert f"--http-port {port}: 127.0.0.1:{port} cannot be used (Address already in use)" in error, error
    if find_tritonserver() is not None and np.__version__.startswith("2."):
        # the Python running the tests has numpy 2: refused as the server's Python, before any start
        error = one_line_error(CliRunner().invoke(main, ["triton", str(repo), "--python", sys.executable]))
        assert "numpy<2" in error and "--python" in error
