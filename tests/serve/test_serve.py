"""qdkit serve: POST /predict (strokes, batches, images), the Open Inference Protocol (v2), dynamic
batching, every bad request as a JSON 4xx, through the test client and a real uvicorn process."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import struct
import warnings
import zlib

import httpx
import numpy as np
import pytest
from _serving import SHARED_BITMAPS, SHARED_STROKES, running_server, shared_simplified, synthetic_drawings
from PIL import Image

from qdkit.images import read_drawing
from qdkit.inference.predictor import Predictor
from qdkit.strokes import rasterize, simplify, to_bitmap

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note on httpx versions
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def app(model_path):
    from qdkit.serve import create_app

    return create_app(model_path, threads=1)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def _top(predictor: Predictor, bitmaps: np.ndarray, k: int) -> list[list[str]]:
    return [p.labels for p in predictor.predict(bitmaps, top_k=k)]


def _is_clean_error(response: httpx.Response, status: int, field: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert "Traceback" not in response.text and "\n" not in message
    assert field in message, message
    return message


# ----------------------------------------------------------------------------- POST /predict


def test_predict_one_raw_drawing_sees_the_simplified_rendering(client, predictor):
    for strokes in synthetic_drawings():
        r = client.post("/predict?top_k=3&bitmap=true", json={"drawing": strokes})
        assert r.status_code == 200, r.text
        body = r.json()
        bitmap = np.array(body["bitmap"], np.uint8)
        expected = rasterize(simplify([np.array(s, float) for s in strokes]))
        np.testing.assert_array_equal(bitmap, expected)
        np.testing.assert_array_equal(bitmap, to_bitmap(strokes))
        assert [t["class"] for t in body["top"]] == _top(predictor, expected[None], 3)[0]
        probs = predictor.predict_proba(expected[None])[0]
        for t in body["top"]:
            assert abs(t["probability"] - probs[predictor.class_names.index(t["class"])]) <= 1e-6


def test_predict_batch_top_k_and_no_bitmap_by_default(client, predictor):
    drawings = synthetic_drawings()
    r = client.post("/predict?top_k=2", json={"drawings": drawings})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == len(drawings) and all("bitmap" not in p and len(p["top"]) == 2 for p in preds)
    expected = np.stack([to_bitmap(d) for d in drawings])
    assert [[t["class"] for t in p["top"]] for p in preds] == _top(predictor, expected, 2)
    # top_k beyond the number of classes gives every class once, best first
    every = client.post("/predict?top_k=999", json={"drawing": drawings[0]}).json()["top"]
    assert sorted(t["class"] for t in every) == sorted(predictor.class_names)
    assert [t["probability"] for t in every] == sorted((t["probability"] for t in every), reverse=True)


def test_simplified_strokes_are_rendered_as_they_are(client):
    strokes = [[[10, 100, 200, 255], [0, 90, 20, 250]], [[0, 50], [255, 128]]]
    r = client.post("/predict?bitmap=true", json={"drawing": strokes, "simplified": True})
    np.testing.assert_array_equal(np.array(r.json()["bitmap"], np.uint8), to_bitmap(strokes, simplified=True))
    raw = client.post("/predict?bitmap=true", json={"drawing": strokes}).json()["bitmap"]
    assert raw != r.json()["bitmap"]  # simplifying again moves vertices (not idempotent)


@pytest.mark.skipif(not SHARED_STROKES.is_dir(), reason="../shared/quickdraw/strokes not present")
def test_simplified_real_strokes_give_the_official_bitmaps_byte_for_byte(client):
    for word in ("bear", "cat", "duck"):
        rows = np.load(SHARED_BITMAPS / f"full_numpy_bitmap_{word}.npy", mmap_mode="r")
        lines = shared_simplified(word, 8)
        r = client.post("/predict?bitmap=true", json={"drawings": [d["drawing"] for d in lines], "simplified": True})
        got = np.array([p["bitmap"] for p in r.json()["predictions"]], np.uint8).reshape(len(lines), -1)
        np.testing.assert_array_equal(got, rows[: len(lines)])


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def test_image_uploads_are_read_like_qdkit_predict(client, predictor, tmp_path):
    rng = np.random.default_rng(1)
    page = np.full((200, 160), 255, np.uint8)  # dark ink on white paper, not 28x28: fitted like predict
    page[40:150, 30:40] = 0
    page[40:50, 30:130] = rng.integers(0, 60, (10, 100))
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg")):
        data = _png(page, fmt)
        path = tmp_path / f"page{suffix}"
        path.write_bytes(data)
        expected = read_drawing(path)
        mime = "image/png" if fmt == "PNG" else "image/jpeg"
        uploads = ({"files": {"image": (path.name, data, mime)}}, {"content": data, "headers": {"content-type": mime}})
        for kwargs in uploads:
            r = client.post("/predict?bitmap=true&top_k=2", **kwargs)
            assert r.status_code == 200, r.text
            np.testing.assert_array_equal(np.array(r.json()["bitmap"], np.uint8), expected)
            assert [t["class"] for t in r.json()["top"]] == _top(predictor, expected[None], 2)[0]


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height grey pixels, with one tiny IDAT: decoding it
    would need width*height bytes, reading its header costs nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


BAD_PREDICT = [
    (b"{", "application/json", 400, "body: malformed JSON"),
    (b"", "application/json", 400, "body: empty"),
    (b"\xff\xfe", "application/json", 400, "body"),
    (b"[1, 2]", "application/json", 400, "body"),
    (b'{"drawing": 3}', "application/json", 400, "drawing:"),
    (b'{"drawing": []}', "application/json", 400, "drawing: has no strokes"),
    (b'{"drawing": [[[1, 2], [3]]]}', "application/json", 400, "drawing: stroke 0"),
    (b'{"drawing": [[[1, "a"], [3, 4]]]}', "application/json", 400, "drawing: stroke 0"),
    (b'{"drawing": [[[], []]]}', "application/json", 400, "drawing: stroke 0 is empty"),
    (b'{"drawing": [[[1, 2], [3, 4]]], "simplified": "yes"}', "application/json", 400, "simplified"),
    (b'{"drawing": [[[1, 300], [3, 4]]], "simplified": true}', "application/json", 400, "0..255"),
    (b'{"drawings": []}', "application/json", 400, "drawings: empty"),
    (b'{"drawings": [[[[1], [2]]], 7]}', "application/json", 400, "drawings[1]"),
    (b'{"drawing": [[[1], [2]]], "drawings": []}', "application/json", 400, "exactly one"),
    (b'{"drawng": []}', "application/json", 400, "drawng: unknown field"),
    (json.dumps({"drawing": [[[1], [2]]] * 1001}).encode(), "application/json", 400, "strokes (at most"),
    (
        json.dumps({"drawing": [[list(range(60_000)), list(range(60_000))]] * 2}).encode(),
        "application/json",
        400,
        "points",
    ),
    (json.dumps({"drawings": [[[[1], [2]]]] * 1025}).encode(), "application/json", 400, "drawings: 1025"),
    (b"not an image", "image/png", 415, "image: not an image"),
    (b"", "image/png", 400, "image: empty"),
    (
        _png(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8))[:300],
        "image/png",
        400,
        "image: unreadable",
    ),
    (_bomb_png(30_000, 30_000), "image/png", 413, "decompression-bomb guard"),
    (b"<x/>", "application/xml", 415, "Content-Type"),
]


@pytest.mark.parametrize("body, ctype, status, field", BAD_PREDICT, ids=[b[3] for b in BAD_PREDICT])
def test_bad_predict_requests_are_one_json_line(client, body, ctype, status, field):
    _is_clean_error(client.post("/predict", content=body, headers={"content-type": ctype}), status, field)


def test_bad_query_upload_route_and_method(client):
    ok = {"drawing": [[[1, 5], [2, 9]]]}
    _is_clean_error(client.post("/predict?top_k=0", json=ok), 400, "top_k (query)")
    _is_clean_error(client.post("/predict?top_k=x", json=ok), 400, "top_k (query)")
    _is_clean_error(client.post("/predict?bitmap=perhaps", json=ok), 400, "bitmap (query)")
    _is_clean_error(client.post("/predict?invert=maybe", json=ok), 400, "invert (query)")
    _is_clean_error(client.post("/predict?topk=2", json=ok), 400, "topk (query): unknown")
    assert len(client.post("/predict?top_k=1&bitmap=0&invert=no", json=ok).json()["top"]) == 1
    _is_clean_error(client.post("/predict", files={"photo": ("a.png", b"x", "image/png")}), 400, "'image'")
    _is_clean_error(client.get("/nowhere"), 404, "/nowhere")
    _is_clean_error(client.get("/predict"), 405, "GET")


def test_body_limit_by_length_and_while_streaming(model_path, predictor):
    from qdkit.serve import create_app

    small = create_app(predictor, max_body=2000)
    big = json.dumps({"drawing": [[list(range(400)), list(range(400))]]}).encode()
    with TestClient(small) as c:
        _is_clean_error(
            c.post("/predict", content=big, headers={"content-type": "application/json"}), 413, "2,000 bytes"
        )
        # chunked: no Content-Length, counted while read
        _is_clean_error(
            c.post("/predict", content=iter([big[:1500], big[1500:]]), headers={"content-type": "application/json"}),
            413,
            "body",
        )
        assert c.post("/predict", json={"drawing": [[[1, 5], [2, 9]]]}).status_code == 200


# ----------------------------------------------------------------------------- v2


def _infer_body(pixels: np.ndarray, nested: bool = False, **extra) -> dict:
    data = pixels.tolist() if nested else pixels.ravel().tolist()
    return {"inputs": [{"name": "pixels", "shape": list(pixels.shape), "datatype": "UINT8", "data": data}], **extra}


def test_v2_health_metadata_and_infer_agree_with_the_predictor_exactly(client, predictor):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/qdkit/ready").json()["ready"] is True
    meta = client.get("/v2/models/qdkit").json()
    assert meta == client.get("/v2/models/qdkit/versions/1").json()
    assert meta["inputs"] == [{"name": "pixels", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
    assert meta["parameters"]["class_names"] == predictor.class_names
    pixels = np.random.default_rng(3).integers(0, 256, (5, 1, 28, 28)).astype(np.uint8)
    logits, probs = predictor.logits_and_proba(pixels)
    for nested in (False, True):
        r = client.post("/v2/models/qdkit/infer", json=_infer_body(pixels, nested, id="req-1"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"] == "req-1" and body["model_name"] == "qdkit"
        out = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in body["outputs"]}
        assert all(o["datatype"] == "FP32" for o in body["outputs"])
        np.testing.assert_array_equal(out["logits"], logits)
        np.testing.assert_array_equal(out["probabilities"], probs)
    only = client.post(
        "/v2/models/qdkit/versions/1/infer", json=_infer_body(pixels[:1], outputs=[{"name": "probabilities"}])
    ).json()
    assert [o["name"] for o in only["outputs"]] == ["probabilities"]


def _bad_infer_cases() -> list[tuple[str, object, int, str]]:
    px = np.zeros((2, 1, 28, 28), np.uint8)
    good = _infer_body(px)

    def tensor(**change) -> dict:
        return {"inputs": [{**good["inputs"][0], **change}]}

    return [
        ("/v2/models/other/infer", good, 404, "model 'other'"),
        ("/v2/models/qdkit/versions/2/infer", good, 404, "version '2'"),
        ("/v2/models/qdkit/infer", [], 400, "body"),
        ("/v2/models/qdkit/infer", {"inputs": []}, 400, "inputs"),
        ("/v2/models/qdkit/infer", tensor(name="image"), 400, "inputs[0].name"),
        ("/v2/models/qdkit/infer", tensor(datatype="FP32"), 400, "inputs[0].datatype"),
        ("/v2/models/qdkit/infer", tensor(shape=[2, 28, 28]), 400, "inputs[0].shape"),
        ("/v2/models/qdkit/infer", tensor(shape=[2, 1, 28, 27]), 400, "inputs[0].shape"),
        ("/v2/models/qdkit/infer", tensor(shape=[0, 1, 28, 28], data=[]), 400, "inputs[0].shape"),
        ("/v2/models/qdkit/infer", tensor(shape=["2", 1, 28, 28]), 400, "inputs[0].shape"),
        ("/v2/models/qdkit/infer", tensor(data=[0] * 100), 400, "inputs[0].data: 100 values"),
        ("/v2/models/qdkit/infer", tensor(data=[0.5] * 1568), 400, "inputs[0].data"),
        ("/v2/models/qdkit/infer", tensor(data=[300] * 1568), 400, "0..255"),
        ("/v2/models/qdkit/infer", tensor(data=[[0] * 5, [0]]), 400, "inputs[0].data"),
        ("/v2/models/qdkit/infer", tensor(data="AAAA"), 400, "inputs[0].data"),
        ("/v2/models/qdkit/infer", tensor(parameters={"binary_data_size": 10}), 400, "binary"),
        ("/v2/models/qdkit/infer", {**good, "outputs": [{"name": "features"}]}, 400, "outputs[0].name"),
        ("/v2/models/qdkit/infer", {**good, "id": 5}, 400, "id"),
    ]


@pytest.mark.parametrize("path, body, status, field", _bad_infer_cases(), ids=[c[3] for c in _bad_infer_cases()])
def test_bad_v2_requests(client, path, body, status, field):
    _is_clean_error(client.post(path, json=body), status, field)


def test_v2_unknown_model_metadata(client):
    _is_clean_error(client.get("/v2/models/cat"), 404, "model 'cat'")
    _is_clean_error(client.get("/v2/models/qdkit/versions/7/ready"), 404, "version '7'")


def test_model_facts_page_and_docs(client, predictor):
    facts = client.get("/model").json()
    assert facts["classes"] == predictor.class_names and facts["model_name"] == "qdnet"
    assert facts["run_name"] == "test-run" and facts["limits"]["max_batch"] == 64
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="pad"' in page.text
    for asset in ("static/app.js", "static/style.css"):
        assert f'"{asset}"' in page.text and client.get(f"/{asset}").status_code == 200
    assert "http" not in client.get("/static/app.js").text.replace("HTTP ", "")  # no CDN, nothing remote
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/v2/models/{name}/infer", "/model"} <= set(spec["paths"])


# ----------------------------------------------------------------------------- batching


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(model_path, predictor):
    from qdkit.serve import create_app

    app = create_app(predictor, max_batch=8, max_wait=0.005)
    drawings = synthetic_drawings() * 6
    expected = _top(predictor, np.stack([to_bitmap(d) for d in drawings]), 2)

    async def run() -> list[list[str]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            rs = await asyncio.gather(*(c.post("/predict?top_k=2", json={"drawing": d}) for d in drawings))
        await app.state.service.batcher.close()
        return [[t["class"] for t in r.json()["top"]] for r in rs]

    assert asyncio.run(run()) == expected
    stats = app.state.service.batcher.stats
    assert stats.items == len(drawings)
    assert 1 < stats.largest <= 8 and stats.batches < len(drawings)


def test_batcher_routes_results_and_survives_a_failing_batch():
    from qdkit.serve.batcher import DynamicBatcher

    def double(items: list) -> tuple[np.ndarray]:
        if any(i < 0 for i in items):
            raise ValueError("negative")
        return (np.array(items) * 2,)

    async def run() -> None:
        b = DynamicBatcher(double, max_batch=4, max_wait=0.002)
        await b.start()
        jobs = [[i, i + 100] for i in range(10)] + [list(range(9))]  # the last is split into max_batch pieces
        results = await asyncio.gather(*(b.submit(j) for j in jobs))
        for job, (out,) in zip(jobs, results, strict=True):
            assert out.tolist() == [2 * i for i in job]
        assert b.stats.largest == 4
        bad = await asyncio.gather(b.submit([-1]), return_exceptions=True)
        assert isinstance(bad[0], ValueError)
        # a failing batch of several jobs: only the job that fails alone gets the error
        mixed = await asyncio.gather(b.submit([1]), b.submit([2, -3]), b.submit([4]), return_exceptions=True)
        assert isinstance(mixed[1], ValueError)
        assert mixed[0][0].tolist() == [2] and mixed[2][0].tolist() == [8]
        (again,) = await b.submit([5])
        assert again.tolist() == [10]
        await b.close()

    asyncio.run(run())
    # started lazily, and again on a new event loop (an ASGI server without lifespan events)
    lazy = DynamicBatcher(double)
    for value in (1, 2):
        assert asyncio.run(lazy.submit([value]))[0].tolist() == [2 * value]


# ----------------------------------------------------------------------------- a real server


async def _mixed_load(url: str, good: list[dict], expected: list[list[str]], rounds: int = 6) -> None:
    """Good and bad requests interleaved from 16 concurrent clients; every good one answered right."""
    bad = [
        (b"{", "application/json"),
        (b'{"drawing": []}', "application/json"),
        (b"GIF89a...", "image/gif"),
        (_bomb_png(40_000, 40_000), "image/png"),
        (json.dumps({"drawing": [[[1, 2], [3]]]}).encode(), "application/json"),
    ]
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as c:

        async def one(i: int) -> None:
            if i % 3 == 2:
                body, ctype = bad[i % len(bad)]
                r = await c.post("/predict", content=body, headers={"content-type": ctype})
                assert 400 <= r.status_code < 500 and "error" in r.json(), r.text
                infer = await c.post("/v2/models/qdkit/infer", json={"inputs": [{"name": "pixels"}]})
                assert infer.status_code == 400
            else:
                k = i % len(good)
                r = await c.post("/predict?top_k=2", json=good[k])
                assert r.status_code == 200, r.text
                assert [t["class"] for t in r.json()["top"]] == expected[k]

        await asyncio.gather(*(one(i) for i in range(rounds * 16)))
        for k, body in enumerate(good):  # afterwards, the good ones still answer correctly
            r = await c.post("/predict?top_k=2", json=body)
            assert [t["class"] for t in r.json()["top"]] == expected[k]


@pytest.mark.parametrize("workers, sig", [(1, signal.SIGTERM), (2, signal.SIGINT)])
def test_real_server_under_mixed_load_then_stops_cleanly(model_path, predictor, workers, sig):
    good = [{"drawing": d} for d in synthetic_drawings()]
    expected = _top(predictor, np.stack([to_bitmap(g["drawing"]) for g in good]), 2)
    with running_server(model_path, "--workers", str(workers)) as server:
        assert server.url.startswith("http://127.0.0.1:")  # bound to loopback unless told otherwise
        assert f"{workers} worker" in server.first_line
        asyncio.run(_mixed_load(server.url, good, expected))
        assert httpx.get(server.url).status_code == 200
        code = server.stop(sig)
        output = server.output()
    assert code == 0, output
    assert "Traceback" not in output and "ERROR" not in output, output


def test_serve_cli_errors_are_one_line(model_path, tmp_path, monkeypatch):
    from _helpers import one_line_error
    from click.testing import CliRunner

    from qdkit.cli import main

    runner = CliRunner()
    assert "no such model" in one_line_error(runner.invoke(main, ["serve", str(tmp_path / "none.onnx")]))
    monkeypatch.chdir(tmp_path)  # no artifacts/ here
    assert "qdkit serve path/to/model.onnx" in one_line_error(runner.invoke(main, ["serve"]))
    with running_server(model_path) as server:
        port = server.url.rsplit(":", 1)[1].strip("/")
        taken = one_line_error(runner.invoke(main, ["serve", str(model_path), "--port", port]))
        assert "cannot listen" in taken and port in taken
    assert "model name" in one_line_error(runner.invoke(main, ["serve", str(model_path), "--name", "a/b"]))
