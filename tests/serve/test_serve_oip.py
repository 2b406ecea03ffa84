"""qdkit serve's Open Inference Protocol over HTTP through the client users have, tritonclient.http
(sync and aio) with its defaults — binary tensors both ways, compressed bodies, classification —
plus config, stats and the repository index, CORS preflights, and the wire details by hand. Every
answer equals the Predictor's on the same pixels. One real server process for the module."""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
import zlib

import httpx
import numpy as np
import pytest
from _oip import ALLOWED_ORIGIN, classification, http_address, need, oip_server, pixels


@pytest.fixture(scope="module")
def server(model_path):
    with oip_server(model_path) as s:
        yield s


@pytest.fixture(scope="module")
def triton_http():
    return need("tritonclient.http")


def _infer_header(n: int, **extra) -> dict:
    return {"inputs": [{"name": "pixels", "shape": [n, 1, 28, 28], "datatype": "UINT8", **extra}]}


def test_tritonclient_http_defaults_binary_compression_classification(server, triton_http, predictor):
    px = pixels(6)
    logits, probs = predictor.logits_and_proba(px)
    client = triton_http.InferenceServerClient(url=http_address(server), concurrency=4)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("qdkit")
        assert not client.is_model_ready("nope")
        meta = client.get_server_metadata()
        assert "binary_tensor_data" in meta["extensions"] and "classification" in meta["extensions"]
        model = client.get_model_metadata("qdkit")
        assert model["inputs"][0] == {"name": "pixels", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}
        config = client.get_model_config("qdkit")
        assert config["max_batch_size"] == 1024 and config["input"][0]["data_type"] == "TYPE_UINT8"
        assert client.get_model_repository_index() == [
            {"name": "qdkit", "version": "1", "state": "READY", "reason": ""}
        ]
        inp = triton_http.InferInput("pixels", list(px.shape), "UINT8")
        inp.set_data_from_numpy(px)  # binary_data=True: the default
        assert "binary_data_size" in inp._get_tensor()["parameters"]
        for compression in (None, "gzip", "deflate"):
            result = client.infer(
                "qdkit",
                [inp],
                request_compression_algorithm=compression,
                response_compression_algorithm=compression,
            )  # no outputs named: binary_data_output, every output
            np.testing.assert_array_equal(result.as_numpy("logits"), logits)
            np.testing.assert_array_equal(result.as_numpy("probabilities"), probs)
        outputs = [
            triton_http.InferRequestedOutput("probabilities", class_count=3),
            triton_http.InferRequestedOutput("logits", binary_data=False),
        ]
        result = client.infer("qdkit", [inp], outputs=outputs, request_id="r7", model_version="1")
        assert result.get_response()["id"] == "r7"
        top = result.as_numpy("probabilities")
        assert top.shape == (6, 3) and top.dtype == object
        assert [[b.decode() for b in row] for row in top] == classification(predictor, probs, 3)
        np.testing.assert_array_equal(result.as_numpy("logits"), logits)  # as JSON numbers
        pending = [client.async_infer("qdkit", [inp]) for _ in range(4)]  # gevent greenlets
        for request in pending:
            np.testing.assert_array_equal(request.get_result().as_numpy("probabilities"), probs)
        # JSON in, JSON out, as tritonclient sends it with binary_data=False
        inp.set_data_from_numpy(px, binary_data=False)
        out = client.infer("qdkit", [inp], outputs=[triton_http.InferRequestedOutput("logits", binary_data=False)])
        np.testing.assert_array_equal(out.as_numpy("logits"), logits)
        stats = client.get_inference_statistics("qdkit")["model_stats"][0]
        assert stats["name"] == "qdkit" and stats["inference_stats"]["success"]["count"] >= 5
        assert stats["inference_count"] >= 30 and stats["execution_count"] >= 1
        assert stats["inference_stats"]["queue"]["count"] >= 5 and stats["inference_stats"]["compute_infer"]["ns"] > 0
        with pytest.raises(triton_http.InferenceServerException, match="model 'other'"):
            client.infer("other", [inp])
        bad = triton_http.InferInput("pixels", [2, 1, 28, 28], "UINT8")
        bad.set_data_from_numpy(px[:1].repeat(2, axis=0))
        bad._raw_data = bad._raw_data[:-1]
        bad._parameters["binary_data_size"] = len(bad._raw_data)
        with pytest.raises(triton_http.InferenceServerException, match="inputs\\[0\\]: 1567 bytes"):
            client.infer("qdkit", [bad])
    finally:
        client.close()


def test_tritonclient_http_aio(server, predictor):
    aio = need("tritonclient.http.aio")
    px = pixels(4, seed=9)
    logits, probs = predictor.logits_and_proba(px)

    async def run() -> None:
        client = aio.InferenceServerClient(url=http_address(server))
        try:
            assert await client.is_server_live() and await client.is_model_ready("qdkit")
            assert (await client.get_model_config("qdkit"))["name"] == "qdkit"
            inp = aio.InferInput("pixels", list(px.shape), "UINT8")
            inp.set_data_from_numpy(px)
            results = await asyncio.gather(
                *(
                    client.infer(
                        "qdkit",
                        [inp],
                        outputs=[aio.InferRequestedOutput("probabilities", class_count=2)] if i % 2 else None,
                        request_compression_algorithm="gzip" if i % 3 == 0 else None,
                        response_compression_algorithm="deflate" if i % 3 == 1 else None,
                    )
                    for i in range(8)
                )
            )
            for i, result in enumerate(results):
                if i % 2:
                    top = [[b.decode() for b in row] for row in result.as_numpy("probabilities")]
                    assert top == classification(predictor, probs, 2)
                else:
                    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
                    np.testing.assert_array_equal(result.as_numpy("probabilities"), probs)
        finally:
            await client.close()

    asyncio.run(run())


def test_binary_and_compressed_wire_by_hand(server, predictor):
    px = pixels(3, seed=2)
    logits, probs = predictor.logits_and_proba(px)
    url = f"{server.url}v2/models/qdkit/infer"
    header = json.dumps(
        {
            **_infer_header(3, parameters={"binary_data_size": px.size}),
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "logits", "parameters": {"classification": 1, "binary_data": True}},
            ],
        }
    ).encode()
    body = header + px.tobytes()
    r = httpx.post(
        url,
        content=gzip.compress(body),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Encoding": "gzip",
            "Content-Type": "application/octet-stream",
            "Accept-Encoding": "identity",
        },
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    answer = json.loads(r.content[:n])
    rest = r.content[n:]
    sizes = [o["parameters"]["binary_data_size"] for o in answer["outputs"]]
    got = np.frombuffer(rest[: sizes[0]], "<f4").reshape(answer["outputs"][0]["shape"])
    np.testing.assert_array_equal(got, probs)
    strings, blob = [], rest[sizes[0] :]
    while blob:
        (length,) = struct.unpack("<I", blob[:4])
        strings.append(blob[4 : 4 + length].decode())
        blob = blob[4 + length :]
    best = logits.argmax(axis=1)
    assert answer["outputs"][1]["datatype"] == "BYTES" and answer["outputs"][1]["shape"] == [3, 1]
    assert strings == [f"{float(logits[i, best[i]]):f}:{best[i]}" for i in range(3)]  # logits carry no labels
    # deflate (zlib) and raw deflate request bodies; a JSON answer compressed on request
    plain = json.dumps({**_infer_header(3, data=px.ravel().tolist())}).encode()
    for packed in (zlib.compress(plain), zlib.compress(plain)[2:-4]):
        r = httpx.post(url, content=packed, headers={"Content-Encoding": "deflate", "Accept-Encoding": "gzip"})
        assert r.status_code == 200 and r.headers["content-encoding"] == "gzip", r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        np.testing.assert_array_equal(np.array(out["logits"]["data"], np.float32).reshape(3, -1), logits)


def _error(r: httpx.Response, status: int, field: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    message = r.json()["error"]
    assert field in message and "\n" not in message and "Traceback" not in r.text, message


def test_bad_binary_and_compressed_requests_are_one_json_line(server):
    url = f"{server.url}v2/models/qdkit/infer"
    header = json.dumps(_infer_header(1, parameters={"binary_data_size": 784})).encode()
    ihcl = {"Inference-Header-Content-Length": str(len(header))}
    _error(httpx.post(url, content=header + b"\0" * 783, headers=ihcl), 400, "binary_data_size")
    _error(
        httpx.post(url, content=header + b"\0" * 784, headers={"Inference-Header-Content-Length": "x"}),
        400,
        "Inference-Header-Content-Length",
    )
    _error(
        httpx.post(url, content=header, headers={"Inference-Header-Content-Length": "99999"}),
        400,
        "Inference-Header-Content-Length",
    )
    plain = json.dumps(_infer_header(1, data=[0] * 784)).encode()
    _error(
        httpx.post(url, content=plain + b"\0" * 4, headers={"Inference-Header-Content-Length": str(len(plain))}),
        400,
        "no input claims",
    )
    _error(httpx.post(url, content=b"not gzip", headers={"Content-Encoding": "gzip"}), 400, "body: not valid gzip")
    _error(httpx.post(url, content=gzip.compress(plain)[:-12], headers={"Content-Encoding": "gzip"}), 400, "truncated")
    _error(httpx.post(url, content=plain, headers={"Content-Encoding": "br"}), 415, "Content-Encoding")
    # a gzip bomb: 4 KiB that would inflate to 64 MiB; refused once past the 4 MiB limit
    bomb = gzip.compress(b"\0" * (64 << 20), 9)
    assert len(bomb) < 100_000
    _error(httpx.post(url, content=bomb, headers={"Content-Encoding": "gzip"}), 413, "once decompressed")
    _error(httpx.post(f"{server.url}predict", content=bomb, headers={"Content-Encoding": "gzip"}), 413, "body")
    out = {"outputs": [{"name": "logits", "parameters": {"classification": -1}}]}
    _error(
        httpx.post(url, json={**_infer_header(1, data=[0] * 784), **out}), 400, "outputs[0].parameters.classification"
    )
    _error(
        httpx.post(url, json={**_infer_header(1, data=[0] * 784), "parameters": {"binary_data_output": 1}}),
        400,
        "binary_data_output",
    )
    _error(httpx.get(f"{server.url}v2/models/qdkit/versions/3/config"), 404, "version '3'")
    _error(httpx.get(f"{server.url}v2/models/cat/stats"), 404, "model 'cat'")
    _error(httpx.post(f"{server.url}v2/repository/index", json={"ready": "yes"}), 400, "ready")
    assert httpx.get(server.url).status_code == 200  # still serving


def test_config_is_what_export_triton_writes(server, predictor, tmp_path, model_path):
    from google.protobuf import json_format, text_format

    need("tritonclient.grpc")
    from tritonclient.grpc import model_config_pb2

    from qdkit.deploy.triton import write_repository

    repo = write_repository(model_path, tmp_path)
    written = text_format.Parse(repo.config.read_text(), model_config_pb2.ModelConfig())
    served = json_format.ParseDict(
        httpx.get(f"{server.url}v2/models/qdkit/config").json(), model_config_pb2.ModelConfig()
    )
    for field in ("name", "platform", "max_batch_size", "input", "output", "dynamic_batching"):
        assert getattr(served, field) == getattr(written, field), field
    # The repository says KIND_AUTO; a loaded model reports what AUTO became (here the CPU), as Triton does.
    assert [g.kind for g in written.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_AUTO]
    assert [g.kind for g in served.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert repo.labels.read_text().split("\n")[:-1] == predictor.class_names


def test_predict_takes_a_whole_dataset_line(server, predictor):
    line = {
        "word": "cat",
        "countrycode": "US",
        "timestamp": "2017-03-09 00:28:55.63751 UTC",
        "recognized": True,
        "key_id": "5201136883597312",
        "drawing": [[[10, 60, 110, 200], [10, 80, 10, 90]], [[30, 90], [50, 50]]],
    }
    for body, like in ((line, {**line, "drawing": line["drawing"]}), ({**line, "simplified": True}, line)):
        r = httpx.post(f"{server.url}predict?top_k=3", json=body)
        assert r.status_code == 200, r.text
        expected = predictor.predict(like if "simplified" in body else [_raw(line)], top_k=3)[0]
        assert [t["class"] for t in r.json()["top"]] == expected.labels
    _error(httpx.post(f"{server.url}predict", json={**line, "country": "US"}), 400, "country: unknown field")


def _raw(line: dict) -> dict:
    """The same line as raw strokes (with times), as Predictor reads the raw dataset."""
    return {**line, "drawing": [[xs, ys, list(range(len(xs)))] for xs, ys in line["drawing"]]}


def test_cors_preflight_from_an_allowed_and_a_refused_origin(server):
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    url = f"{server.url}v2/models/qdkit/infer"
    ok = httpx.options(url, headers={"Origin": ALLOWED_ORIGIN, **ask})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in ok.headers["access-control-allow-methods"]
    refused = httpx.options(url, headers={"Origin": "https://evil.example.com", **ask})
    _error(refused, 400, "Origin: 'https://evil.example.com' is not allowed")
    assert "access-control-allow-origin" not in refused.headers
    simple = httpx.get(f"{server.url}v2/health/ready", headers={"Origin": ALLOWED_ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    other = httpx.get(f"{server.url}v2/health/ready", headers={"Origin": "https://evil.example.com"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_without_cors_origins_a_preflight_is_405(model_path):
    import warnings

    from qdkit.serve import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's note on httpx versions
        from fastapi.testclient import TestClient

    with TestClient(create_app(model_path, threads=1)) as c:
        r = c.options("/predict", headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"})
        _error(r, 405, "OPTIONS")


def test_infer_json_edge_cases_stay_4xx_or_answer(server):
    url = f"{server.url}v2/models/qdkit/infer"
    pixels_json = json.dumps([0] * 784)
    lone = '{"id": "\\ud800x", "inputs": [{"name": "pixels", "shape": [1.0, 1, 28, 28], "datatype": "UINT8", '
    r = httpx.post(url, content=(lone + f'"data": {pixels_json}}}]}}').encode())
    assert r.status_code == 200 and r.json()["id"] == "\ud800x", r.text  # json reads it; the answer carries it
    nan = lone.replace("\\ud800x", "n") + '"data": [NaN' + ", 0" * 783 + "]}]}"
    _error(httpx.post(url, content=nan.encode()), 400, "inputs[0].data")
    _error(
        httpx.post(
            url,
            content=b'{"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [1e400]}]}',
        ),
        400,
        "inputs[0].data",
    )
    _error(httpx.post(url, json={**_infer_header(1, data=[0] * 784), "outputs": None}), 400, "outputs")
    _error(httpx.post(url, json={**_infer_header(1, data=[0] * 784), "id": None}), 400, "id")


def test_cors_any_origin_warns(model_path):
    from _serving import running_server

    with running_server(model_path, "--cors-origin", "*") as s:
        r = httpx.get(f"{s.url}v2/health/live", headers={"Origin": "https://anywhere.example"})
        assert r.headers["access-control-allow-origin"] == "*"
        s.stop()
        assert "warning: --cors-origin '*'" in s.output()
