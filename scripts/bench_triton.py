"""Benchmark the scale-out options of docs/serve.md in one run, on whatever machine it is started on:
one `qdkit serve`, `qdkit serve --workers N` (N processes behind one port), and the local Triton
(`qdkit triton` on a repository from `qdkit export --triton --triton-backend python`), under the
same load as scripts/bench_serve.py: ONE real drawing per request, from 1 and from 16 concurrent
clients, --seconds each (default 10), after 0.5 s of warm-up:

  pixels   POST /v2/models/qdkit/infer, v2 JSON, the drawing's 28x28 pixels (UINT8 [1, 1, 28, 28]),
           asking for `probabilities`: qdkit serve and Triton (its Python backend + onnxruntime)
  strokes  the raw strokes: POST /predict of qdkit serve (top 3), and on Triton the strokes ensemble
           qdkit_strokes (v2 JSON, BYTES [1, 1], one JSON drawing; `probabilities`)

Drawings, model and load generator are bench_serve.py's: real strokes from ../shared/quickdraw/strokes
(else synthetic doodles), qdnet with random weights (or --model), a separate process with raw
asyncio sockets, HTTP/1.1 keep-alive, one connection per client, pre-encoded requests, every
response checked (status 200 and the expected output). Server CPU is the server's process tree
(Triton's includes its Python-backend stubs). Triton needs what `qdkit triton` needs: nvidia-pytriton
and a server Python with numpy<2 (--triton-python, default .venv-triton/bin/python; scripts/_venv.sh).

    python scripts/bench_triton.py [--json FILE] [--seconds 10] [--workers 2] [--model FILE] [--triton-python PY]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import (  # noqa: E402
    LOAD_GENERATOR,
    REPO,
    cpu_seconds,
    http_client,
    make_model,
    real_or_synthetic_drawings,
)

CLIENTS = (1, 16)


# ----------------------------------------------------------------------------- requests


def pixels_body(bitmap: np.ndarray) -> bytes:
    body = {
        "inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": bitmap.ravel().tolist()}],
        "outputs": [{"name": "probabilities"}],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def strokes_v2_body(strokes: list) -> bytes:
    element = json.dumps(strokes, separators=(",", ":"))
    body = {
        "inputs": [{"name": "drawings", "shape": [1, 1], "datatype": "BYTES", "data": [element]}],
        "outputs": [{"name": "probabilities"}],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def predict_body(strokes: list) -> bytes:
    return json.dumps({"drawing": strokes}, separators=(",", ":")).encode()


def encode(host: str, port: int, path: str, bodies: list[bytes]) -> list[bytes]:
    return [
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(b)}\r\n\r\n".encode()
        + b
        for b in bodies
    ]


# ----------------------------------------------------------------------------- the load generator


async def _load(host: str, port: int, requests: list[bytes], marker: bytes, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    warm: list[float] = []
    errors: list[str] = []
    until = time.perf_counter() + 0.5
    await asyncio.gather(
        *(http_client(host, port, requests, 7919 * c, until, warm, errors, marker) for c in range(clients))
    )
    start = time.perf_counter()
    await asyncio.gather(
        *(
            http_client(host, port, requests, 104729 * c, start + seconds, latencies, errors, marker)
            for c in range(clients)
        )
    )
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "with_warm_up": len(latencies) + len(warm),
        "req_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "errors": len(errors),
        "first_errors": errors[:3],
        "generator_cpu_s": time.process_time(),
    }


def load_generator_main(argv: list[str]) -> None:
    """`--load-generator HOST PORT CLIENTS SECONDS MARKER REQUESTS_FILE`: prints one JSON line."""
    host, port, clients, seconds, marker, path = argv
    raw = Path(path).read_bytes()
    requests = raw.split(b"\0REQUEST\0")
    print(json.dumps(asyncio.run(_load(host, int(port), requests, marker.encode(), int(clients), float(seconds)))))


def run_load(host: str, port: int, requests: list[bytes], marker: str, clients: int, seconds: float, tmp: Path) -> dict:
    path = tmp / "requests.bin"
    path.write_bytes(b"\0REQUEST\0".join(requests))
    out = subprocess.run(
        [sys.executable, __file__, "--load-generator", host, str(port), str(clients), str(seconds), marker, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(name: str, host: str, port: int, path: str, bodies: list[bytes], marker: str, pid: int, args, tmp) -> list:
    rows = []
    for clients in CLIENTS:
        cpu = cpu_seconds(pid)
        r = run_load(host, port, encode(host, port, path, bodies), marker, clients, args.seconds, tmp)
        r["per_cpu_s"] = r["with_warm_up"] / max(cpu_seconds(pid) - cpu, 1e-9)
        r["server"] = name
        rows.append(r)
        print(
            f"{name:44s} {clients:2d} client(s): {r['req_per_s']:7,.0f} req/s, p50 {r['p50_ms']:6.2f} ms, "
            f"p99 {r['p99_ms']:6.2f} ms, {r['errors']} errors ({r['per_cpu_s']:,.0f} req per server CPU-second)",
            flush=True,
        )
        for e in r["first_errors"]:
            print(f"    error: {e}")
    return rows


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--load-generator":
        load_generator_main(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--seconds", type=float, default=10.0, help="per client count and server")
    ap.add_argument("--workers", type=int, default=2, help="the multi-worker qdkit serve: --workers N")
    ap.add_argument("--model", type=Path, help="an exported model [default: qdnet with random weights]")
    ap.add_argument(
        "--triton-python", default=os.environ.get("QDKIT_TRITON_PYTHON") or str(REPO / ".venv-triton/bin/python")
    )
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from _serving import running_server

    from qdkit.deploy.triton import write_repository
    from qdkit.deploy.tritonserver import running_triton
    from qdkit.strokes import to_bitmap

    drawings, source = real_or_synthetic_drawings()
    cores = os.cpu_count() or 1
    pixels = [pixels_body(to_bitmap(d)) for d in drawings]
    predict = [predict_body(d) for d in drawings]
    strokes = [strokes_v2_body(d) for d in drawings]
    results = []
    with tempfile.TemporaryDirectory(prefix="qdkit-bench-triton-") as tmp:
        tmp_path = Path(tmp)
        model = args.model or make_model(tmp_path)
        print(f"drawings: {source}; model {model}; {cores} cores; load generator: {LOAD_GENERATOR}", flush=True)
        for workers in (1, args.workers):
            threads = max(1, cores // workers)
            label = f"qdkit serve --workers {workers} --threads {threads}"
            with running_server(model, "--workers", str(workers), "--threads", str(threads)) as server:
                host, port = server.url.split("//")[1].rstrip("/").rsplit(":", 1)
                pid = server.proc.pid
                results += measure(
                    f"{label}: pixels (v2)",
                    host,
                    int(port),
                    "/v2/models/qdkit/infer",
                    pixels,
                    '"probabilities"',
                    pid,
                    args,
                    tmp_path,
                )
                results += measure(
                    f"{label}: strokes (/predict)",
                    host,
                    int(port),
                    "/predict?top_k=3",
                    predict,
                    '"top"',
                    pid,
                    args,
                    tmp_path,
                )
                server.stop()
        repo = tmp_path / "repo"
        write_repository(model, repo, backend="python")
        http_port, grpc_port = _free_port(), _free_port()
        with running_triton(repo, http_port, grpc_port, python=args.triton_python) as t:
            label = f"Triton {t['version']} (Python backend)"
            pid = t["process"].pid
            results += measure(
                f"{label}: pixels (v2)",
                "127.0.0.1",
                http_port,
                "/v2/models/qdkit/infer",
                pixels,
                '"probabilities"',
                pid,
                args,
                tmp_path,
            )
            results += measure(
                f"{label}: strokes (ensemble)",
                "127.0.0.1",
                http_port,
                "/v2/models/qdkit_strokes/infer",
                strokes,
                '"probabilities"',
                pid,
                args,
                tmp_path,
            )
    report = {
        "results": [{k: v for k, v in r.items() if k != "first_errors"} for r in results],
        "seconds_per_level": args.seconds,
        "drawings": source,
        "load_generator": LOAD_GENERATOR,
        "cores": cores,
        "load_average_at_end": os.getloadavg()[0],
    }
    print(f"load average at the end: {report['load_average_at_end']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
