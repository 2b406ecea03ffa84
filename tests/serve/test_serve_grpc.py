"""qdkit serve --grpc-port: the Open Inference Protocol over gRPC through tritonclient.grpc (sync,
streaming and aio) against a real server process: every answer equal to the Predictor's, Triton's
ModelConfig, bad requests as the right status code with the HTTP API's words, and the server
serving on while other clients send bad requests."""

from __future__ import annotations

import asyncio
import queue
import signal
import threading

import grpc
import httpx
import numpy as np
import pytest
from _oip import classification, grpc_address, need, oip_server, pixels


@pytest.fixture(scope="module")
def server(model_path):
    with oip_server(model_path, "--max-body-mb", "1") as s:
        yield s


@pytest.fixture(scope="module")
def triton_grpc():
    return need("tritonclient.grpc")


@pytest.fixture
def client(server, triton_grpc):
    c = triton_grpc.InferenceServerClient(url=grpc_address(server))
    yield c
    c.close()


def _input(triton_grpc, px: np.ndarray):
    inp = triton_grpc.InferInput("pixels", list(px.shape), "UINT8")
    inp.set_data_from_numpy(px)
    return inp


def test_tritonclient_grpc_every_call_for_one_model(server, client, triton_grpc, predictor):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("qdkit")
    assert client.is_model_ready("qdkit", "1")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "qdkit" and "classification" in meta["extensions"]
    model = client.get_model_metadata("qdkit", as_json=True)
    assert model["inputs"] == [{"name": "pixels", "datatype": "UINT8", "shape": ["-1", "1", "28", "28"]}]
    assert [o["name"] for o in model["outputs"]] == ["logits", "probabilities"]
    config = client.get_model_config("qdkit").config
    assert config.name == "qdkit" and config.max_batch_size == 1024 and config.platform == "onnxruntime_onnx"
    assert [o.label_filename for o in config.output] == ["", "labels.txt"]
    assert list(config.input[0].dims) == [1, 28, 28]
    index = client.get_model_repository_index(as_json=True)
    assert index["models"] == [{"name": "qdkit", "version": "1", "state": "READY"}]
    px = pixels(5, seed=11)
    logits, probs = predictor.logits_and_proba(px)
    result = client.infer("qdkit", [_input(triton_grpc, px)], request_id="g1")
    assert result.get_response().id == "g1"
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probs)
    outputs = [triton_grpc.InferRequestedOutput("probabilities", class_count=4)]
    top = client.infer("qdkit", [_input(triton_grpc, px)], outputs=outputs).as_numpy("probabilities")
    assert [[b.decode() for b in row] for row in top] == classification(predictor, probs, 4)
    # async_infer (a callback), and the bidirectional stream
    done: queue.Queue = queue.Queue()
    client.async_infer("qdkit", [_input(triton_grpc, px)], callback=lambda result, error: done.put((result, error)))
    r, e = done.get(timeout=30)
    assert e is None
    np.testing.assert_array_equal(r.as_numpy("logits"), logits)
    streamed: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: streamed.put((result, error)))
    try:
        client.async_stream_infer("qdkit", [_input(triton_grpc, px)], request_id="s1")
        client.async_stream_infer("nope", [_input(triton_grpc, px)], request_id="s2")
        client.async_stream_infer("qdkit", [_input(triton_grpc, px[:2])], request_id="s3")
        got = [streamed.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
    np.testing.assert_array_equal(got[0][0].as_numpy("probabilities"), probs)
    assert got[1][0] is None and "model 'nope'" in got[1][1].message()
    np.testing.assert_array_equal(got[2][0].as_numpy("logits"), logits[:2])
    stats = client.get_inference_statistics("qdkit", as_json=True)["model_stats"][0]
    assert int(stats["inference_stats"]["success"]["count"]) >= 4 and int(stats["inference_count"]) >= 20


def test_tritonclient_grpc_aio(server, predictor):
    aio = need("tritonclient.grpc.aio")
    px = pixels(3, seed=4)
    logits, probs = predictor.logits_and_proba(px)

    async def run() -> None:
        client = aio.InferenceServerClient(url=grpc_address(server))
        try:
            assert await client.is_server_live() and await client.is_model_ready("qdkit")
            inp = aio.InferInput("pixels", list(px.shape), "UINT8")
            inp.set_data_from_numpy(px)
            results = await asyncio.gather(*(client.infer("qdkit", [inp]) for _ in range(8)))
            for result in results:
                np.testing.assert_array_equal(result.as_numpy("probabilities"), probs)
            config = await client.get_model_config("qdkit", as_json=True)
            assert config["config"]["name"] == "qdkit"
        finally:
            await client.close()

    asyncio.run(run())


def _bad_cases(triton_grpc) -> list[tuple[str, list, list | None, str, str]]:
    good = pixels(2)

    def inp(shape, datatype="UINT8", raw: bytes | None = None, name="pixels"):
        i = triton_grpc.InferInput(name, shape, datatype)
        i._raw_content = good.tobytes() if raw is None else raw
        return i

    out = triton_grpc.InferRequestedOutput
    return [
        ("other", [inp([2, 1, 28, 28])], None, "NOT_FOUND", "model 'other'"),
        ("qdkit", [inp([2, 1, 28, 28], name="image")], None, "INVALID_ARGUMENT", "inputs[0].name"),
        ("qdkit", [inp([2, 1, 28, 28], "FP32")], None, "INVALID_ARGUMENT", "inputs[0].datatype"),
        ("qdkit", [inp([2, 28, 28])], None, "INVALID_ARGUMENT", "inputs[0].shape"),
        ("qdkit", [inp([0, 1, 28, 28], raw=b"")], None, "INVALID_ARGUMENT", "inputs[0].shape"),
        ("qdkit", [inp([2, 1, 28, 28], raw=b"\0" * 100)], None, "INVALID_ARGUMENT", "inputs[0]: 100 bytes"),
        ("qdkit", [inp([2, 1, 28, 28]), inp([2, 1, 28, 28])], None, "INVALID_ARGUMENT", "inputs: a list of one"),
        ("qdkit", [inp([2, 1, 28, 28])], [out("features")], "INVALID_ARGUMENT", "outputs[0].name"),
        ("qdkit", [inp([1024, 1, 28, 28], raw=b"\0" * 1024 * 784 * 2)], None, "RESOURCE_EXHAUSTED", "larger than max"),
    ]


def test_bad_grpc_requests_get_the_right_status_and_message(server, client, triton_grpc):
    for model, inputs, outputs, code, words in _bad_cases(triton_grpc):
        with pytest.raises(triton_grpc.InferenceServerException) as e:
            client.infer(model, inputs, outputs=outputs)
        assert e.value.status() == f"StatusCode.{code}", (words, e.value.status(), e.value.message())
        assert words in e.value.message() and "Traceback" not in e.value.message()
    for call, args in (
        (client.get_model_metadata, ("nope",)),
        (client.get_model_config, ("qdkit", "2")),
        (client.is_model_ready, ("qdkit", "9")),
    ):
        with pytest.raises(triton_grpc.InferenceServerException) as e:
            call(*args)
        assert e.value.status() == "StatusCode.NOT_FOUND" and "not found" in e.value.message()
    # uint_contents as KServe sends it, and a wrong contents field, through the raw stub
    from qdkit.serve._proto import grpc_service_pb2 as pb
    from qdkit.serve._proto import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(grpc_address(server)) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="qdkit")
        tensor = request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 1, 28, 28])
        tensor.contents.uint_contents.extend([7] * 784)
        assert len(stub.ModelInfer(request).raw_output_contents) == 2
        tensor.contents.uint_contents[5] = 300
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "0..255" in e.value.details()
        del tensor.contents.uint_contents[:]
        tensor.contents.fp32_contents.extend([0.0] * 784)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request)
        assert "inputs[0].contents.fp32_contents" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="qdkit"))
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_serves_on_while_other_clients_send_bad_requests(server, triton_grpc, predictor):
    px = pixels(2, seed=21)
    _, probs = predictor.logits_and_proba(px)
    cases = _bad_cases(triton_grpc)
    failures: list[str] = []

    def bad_client(k: int) -> None:
        c = triton_grpc.InferenceServerClient(url=grpc_address(server))
        try:
            for i in range(20):
                model, inputs, outputs, code, _ = cases[(k + i) % len(cases)]
                try:
                    c.infer(model, inputs, outputs=outputs)
                    failures.append("a bad request was answered")
                except triton_grpc.InferenceServerException as e:
                    if e.status() != f"StatusCode.{code}":
                        failures.append(f"{code}: {e.status()} {e.message()}")
        finally:
            c.close()

    def good_client() -> None:
        c = triton_grpc.InferenceServerClient(url=grpc_address(server))
        try:
            for _ in range(20):
                got = c.infer("qdkit", [_input(triton_grpc, px)]).as_numpy("probabilities")
                if not np.array_equal(got, probs):
                    failures.append("a good answer differed")
        finally:
            c.close()

    threads = [threading.Thread(target=bad_client, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=good_client) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:5]
    assert httpx.get(f"{server.url}v2/health/live").json() == {"live": True}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_both_servers_stop_cleanly(model_path, triton_grpc, sig):
    with oip_server(model_path) as s:
        c = triton_grpc.InferenceServerClient(url=grpc_address(s))
        assert c.is_server_ready()
        c.close()
        code = s.stop(sig)
        output = s.output()
    assert code == 0, output
    assert "Traceback" not in output and "ERROR" not in output, output


def test_grpc_port_needs_one_worker_and_a_free_port(model_path, server):
    from _helpers import one_line_error
    from click.testing import CliRunner

    from qdkit.cli import main

    runner = CliRunner()
    message = one_line_error(runner.invoke(main, ["serve", str(model_path), "--grpc-port", "0", "--workers", "2"]))
    assert "--workers 1" in message
    port = grpc_address(server).rsplit(":", 1)[1]
    taken = one_line_error(runner.invoke(main, ["serve", str(model_path), "--port", "0", "--grpc-port", port]))
    assert "cannot listen for gRPC" in taken and port in taken


def test_the_shipped_protos_are_what_the_script_generates(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    need("grpc_tools")
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, str(repo / "scripts" / "gen_grpc_proto.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    shipped = repo / "qdkit" / "serve" / "_proto"
    names = sorted(p.name for p in shipped.iterdir() if p.suffix in (".py", ".pyi"))
    assert names == sorted(p.name for p in tmp_path.iterdir())
    for name in names:
        assert (tmp_path / name).read_text() == (shipped / name).read_text(), name
