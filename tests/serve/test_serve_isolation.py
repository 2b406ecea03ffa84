"""Issue 18, third audit, the service side: one bad client must not hurt the others. Each test runs
against a real `qdkit serve` process (tests/_serving.py) and measures isolation by status codes and
answers, never by latency: bounded in requests, each under a generous 60 s client timeout."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time

import httpx
import numpy as np
import pytest
from _serving import running_server, synthetic_drawings
from PIL import Image

from qdkit.strokes import parse_drawing, to_bitmap

TIMEOUT = 60


def _zigzag(points: int) -> list:
    """A legal raw drawing over simplify's work caps (tests/strokes/test_simplify_exact.py)."""
    return [[[float(i) for i in range(points)], [0.0 if i % 2 else 1000.0 for i in range(points)], list(range(points))]]


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def _infer(data: str) -> bytes:
    """A v2 infer body whose `data` is the JSON text `data` (nested too deep for json.dumps here)."""
    return b'{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": %s}]}' % data.encode()


def _hostile() -> list[tuple[str, bytes, int, str]]:
    """(path, JSON body, status, words the error must hold): the audit's requests and siblings."""
    good = synthetic_drawings()[:3]
    huge_int = int("9" * 400)
    return [
        ("/predict", json.dumps({"drawings": [*good, _zigzag(300)]}).encode(), 400, "drawings[3]: "),
        ("/predict", json.dumps({"drawing": _zigzag(1600)}).encode(), 400, "drawing: "),
        ("/predict", json.dumps({"drawing": [[[-1e308, 1e308], [0, 1]]]}).encode(), 400, "drawing: "),
        ("/predict", json.dumps({"drawings": [*good, [[[huge_int, 1], [0, 1]]]]}).encode(), 400, "drawings[3]: "),
        ("/predict", ('{"drawing": ' + _deep(100_000) + "}").encode(), 400, "body: JSON nested deeper"),
        ("/predict", ('{"drawing": ' + _deep(1000) + "}").encode(), 400, "drawing: "),
        ("/predict", _deep(100_000).encode(), 400, "body: JSON nested deeper"),
        ("/v2/models/qdkit/infer", _infer(_deep(1000)), 400, "inputs[0].data: "),
        ("/v2/models/qdkit/infer", _infer(json.dumps([huge_int] * 784)), 400, "inputs[0].data: "),
        ("/v2/models/qdkit/infer", _infer(_deep(100_000)), 400, "body: JSON nested deeper"),
    ]


@pytest.fixture(scope="module")
def server(model_path):
    with running_server(model_path, "--threads", "1", "--max-batch", "8", "--grpc-port", "0") as s:
        yield s


def _no_traceback(server) -> str:
    out = server.output()
    assert "Traceback" not in out and "ERROR" not in out and "unexpected error" not in out, out[-3000:]
    return out


def test_one_bad_client_costs_only_itself(server, predictor):
    """16 good clients and one sending the audit's degenerate, deep and costly bodies: every good
    request is answered right, every bad one is its own 400 naming the field, nothing is logged."""
    good = [{"drawings": synthetic_drawings()}, *({"drawing": d} for d in synthetic_drawings())]
    expected = []
    for body in good:
        bitmaps = np.stack([to_bitmap(d) for d in body.get("drawings", [body.get("drawing")])])
        expected.append([p.labels for p in predictor.predict(bitmaps, top_k=2)])
    hostile = _hostile()
    answered: list[tuple[int, str]] = []

    async def run() -> None:
        done = asyncio.Event()
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as c:

            async def good_client(k: int) -> None:
                for r in range(6):
                    i = (k + r) % len(good)
                    resp = await c.post("/predict?top_k=2", json=good[i])
                    assert resp.status_code == 200, resp.text
                    body = resp.json()
                    got = [[t["class"] for t in p["top"]] for p in body.get("predictions", [body])]
                    assert got == expected[i]

            async def bad_client() -> None:
                i = 0
                while not done.is_set() or i < len(hostile):  # every hostile body at least once
                    path, body, status, words = hostile[i % len(hostile)]
                    resp = await c.post(path, content=body, headers={"content-type": "application/json"})
                    answered.append((resp.status_code, resp.text))
                    assert resp.status_code == status, (words, resp.status_code, resp.text[:300])
                    assert words in resp.json()["error"], (words, resp.text[:300])
                    i += 1

            async def goods() -> None:
                await asyncio.gather(*(good_client(k) for k in range(16)))
                done.set()

            await asyncio.gather(goods(), bad_client())

    asyncio.run(run())
    assert len(answered) >= len(hostile)
    messages = [json.loads(text)["error"] for _, text in answered[: len(hostile)]]
    assert any("too long a path" in m or "too intricate" in m for m in messages), messages  # says why
    _no_traceback(server)


def test_a_drawing_that_fails_inside_a_batch_fails_only_its_job(predictor):
    """The batch level under the parse-time check: a raw drawing simplify refuses, handed straight to
    the batcher with good jobs, is its own JobItemError (index within its job); the others answer."""
    from qdkit.serve import create_app
    from qdkit.serve.batcher import JobItemError
    from qdkit.strokes import rasterize

    service = create_app(predictor, max_batch=16, max_wait=0.05).state.service
    good = [parse_drawing(d, simplified=False) for d in synthetic_drawings()[:3]]
    bad = parse_drawing(_zigzag(300))

    async def run() -> list:
        results = await asyncio.gather(
            service.batcher.submit([good[0]]),
            service.batcher.submit([good[1], bad, good[2]]),
            service.batcher.submit([good[2]]),
            return_exceptions=True,
        )
        await service.batcher.close()
        return results

    first, second, third = asyncio.run(run())
    assert isinstance(second, JobItemError) and second.index == 1, second
    assert "too long a path" in str(second.error) or "too intricate" in str(second.error)
    assert np.array_equal(first[0][0], rasterize(good[0])) and np.array_equal(third[0][0], rasterize(good[2]))


def test_a_small_request_is_served_between_big_batches_and_readiness_says_saturated(server):
    """8 clients each sending a legal 1,024-drawing batch: a one-drawing request is answered before
    any of them (their jobs are split and interleaved), /v2/health/ready and gRPC ServerReady /
    ModelReady say not-ready while the queue is over its bound, and ready again afterwards."""
    import grpc

    from qdkit.serve._proto import grpc_service_pb2 as pb
    from qdkit.serve._proto import grpc_service_pb2_grpc as pb_grpc

    grpc_port = int(server.first_line.rsplit("gRPC at ", 1)[1].split(",")[0].rsplit(":", 1)[1])
    rng = np.random.default_rng(1)
    big = {
        "drawings": [[[rng.integers(0, 256, 12).tolist(), rng.integers(0, 256, 12).tolist()]] for _ in range(1024)],
        "simplified": True,
    }
    small = {"drawing": [[[10, 200], [20, 250]]], "simplified": True}
    finished: list[str] = []

    def grpc_ready() -> tuple[bool, bool]:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            server_ready = stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT).ready
            model_ready = stub.ModelReady(pb.ModelReadyRequest(name="qdkit"), timeout=TIMEOUT).ready
        return server_ready, model_ready

    async def run() -> tuple[list[int], tuple[bool, bool]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as c:

            async def big_client() -> None:
                r = await c.post("/predict", json=big)
                assert r.status_code == 200 and len(r.json()["predictions"]) == 1024
                finished.append("big")

            tasks = [asyncio.create_task(big_client()) for _ in range(8)]
            statuses = []
            for _ in range(2000):  # until the queue is seen over its bound (bounded polls)
                r = await c.get("/v2/health/ready")
                statuses.append(r.status_code)
                if r.status_code == 503:
                    break
                await asyncio.sleep(0.005)
            assert statuses[-1] == 503, statuses[-20:]
            not_ready = r.json()
            assert not_ready["ready"] is False and "queued" in not_ready["error"], not_ready
            assert (await c.get("/v2/models/qdkit/ready")).status_code == 503
            grpc_state = await asyncio.to_thread(grpc_ready)
            r = await c.post("/predict", json=small)
            assert r.status_code == 200, r.text
            finished.append("small")
            await asyncio.gather(*tasks)
            after = await c.get("/v2/health/ready")
            assert after.status_code == 200 and after.json() == {"ready": True}
            return statuses, grpc_state

    statuses, grpc_state = asyncio.run(run())
    assert finished.index("small") == 0, finished  # before every big one: not behind them
    assert grpc_state == (False, False)  # ServerReady, ModelReady: not ready while saturated
    assert grpc_ready() == (True, True)
    _no_traceback(server)


def _png(width: int, height: int) -> bytes:
    a = np.full((height, width), 255, np.uint8)
    a[:, ::7] = 0
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _peak_rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM:"))


def test_thin_images_cost_what_they_hold(server):
    """A 471-byte 1x200,000 PNG once raised the RSS by 1.5 GB (the fit step padded it to a square):
    now refused from its header, and a thin strip that is accepted costs its own pixels."""
    before = _peak_rss_mb(server.proc.pid)
    for width, height in ((200_000, 1), (1, 700_000)):
        data = _png(width, height)
        assert len(data) < 2000
        r = httpx.post(f"{server.url}predict", content=data, headers={"content-type": "image/png"}, timeout=TIMEOUT)
        assert r.status_code == 413 and f"image: {width}x{height} pixels" in r.json()["error"], r.text
    r = httpx.post(f"{server.url}predict", content=_png(16_000, 2), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert _peak_rss_mb(server.proc.pid) - before < 300
    _no_traceback(server)


def _port(server) -> int:
    return int(server.url.rstrip("/").rsplit(":", 1)[1])


def test_a_huge_request_head_is_refused_early(server):
    """A 64 MiB header was read whole (blocking the event loop for 7.8 s): the head is capped at
    64 KiB, answered 431 and the connection closed long before 64 MiB; a 60 KB header is fine."""
    sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=TIMEOUT)
    sent = 0
    try:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        while sent < 64 * 1024 * 1024:
            sock.sendall(b"a" * 65536)
            sent += 65536
    except OSError:
        pass
    try:
        answer = sock.recv(4096)
    except OSError:
        answer = b""
    sock.close()
    assert sent < 16 * 1024 * 1024, sent  # stopped: the server closed the connection
    if answer:  # the 431 is usually read before the reset
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"headers: " in answer
    r = httpx.get(f"{server.url}v2/health/live", headers={"x-fine": "a" * 60_000}, timeout=TIMEOUT)
    assert r.status_code == 200
    _no_traceback(server)


def test_a_client_gone_mid_body_is_one_log_line(server):
    for path in ("/predict", "/v2/models/qdkit/infer"):
        sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=TIMEOUT)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        sock.sendall(head.encode() + b'{"drawing": [[[1, 2], [3, 4]]')
        time.sleep(0.2)  # the server is reading the body
        sock.close()
    assert httpx.get(f"{server.url}v2/health/live", timeout=TIMEOUT).status_code == 200
    lines = []
    for _ in range(100):  # the log lines arrive through a pipe: bounded polls
        lines += [line for line in server.output().splitlines() if line.strip()]
        if len(lines) >= 2:
            break
        time.sleep(0.05)
    assert lines == [
        "client went away while sending POST /predict (request dropped)",
        "client went away while sending POST /v2/models/qdkit/infer (request dropped)",
    ], lines
