"""Benchmark `qdkit serve` against its own ceiling, in one run, on whatever machine it is started on:

  (a) the in-process rate of the same work, no HTTP: validate the strokes (parse_drawing),
      simplify + rasterize (qdkit.strokes) and infer (the Predictor, same threads), in batches of
      16 drawings as the server's batcher forms them under 16 clients — the ceiling (the best
      round, measured before and after the server runs);
  (b) `qdkit serve` in its own process, POST /predict with ONE real drawing per request (raw
      strokes, as the page sends them), from 1 and from 16 concurrent clients, --seconds each
      (default 10): requests/s, p50, p99, errors;
  (c) the Open Inference Protocol on the same server (--grpc-port), 16 clients, one drawing per
      request, rasterized by the client beforehand as a Triton client does: v2 JSON (784 numbers),
      v2 binary (the binary tensor extension: 784 bytes after the JSON header, binary output) and
      v2 gRPC (ModelInfer, raw_input_contents), beside their own ceiling: the same Predictor on ready
      bitmaps in batches of 16, no HTTP.

Drawings: the real simplified strokes in ../shared/quickdraw/strokes (every class, sent as raw
strokes so the server simplifies them as it does a canvas's), else synthetic random-walk doodles.
The load generator is a separate process: raw asyncio sockets, HTTP/1.1 keep-alive, one connection
per client, pre-encoded requests, responses checked for status 200 and a JSON body with "top";
it uses a small share of one core. The model: qdnet (the default architecture) with random weights
(speed does not depend on them), or --model FILE. Usage:

    python scripts/bench_serve.py [--json FILE] [--seconds 10] [--workers 1] [--threads N] [--model FILE]

(c) runs with --workers 1 only (gRPC is served by one process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_STROKES = REPO.parent / "shared" / "quickdraw" / "strokes"
BATCH = 16
LOAD_GENERATOR = "separate process, raw asyncio sockets, HTTP/1.1 keep-alive, one connection per client"


# ----------------------------------------------------------------------------- drawings and model


def real_or_synthetic_drawings(limit: int = 2000) -> tuple[list, str]:
    if SHARED_STROKES.is_dir():
        drawings = []
        for path in sorted(SHARED_STROKES.glob("*.ndjson")):
            with open(path, encoding="utf-8") as f:
                drawings += [json.loads(line)["drawing"] for line in f]
        rng = np.random.default_rng(0)
        picked = [drawings[i] for i in rng.permutation(len(drawings))[:limit]]
        return picked, f"real strokes ({len(picked)} of {SHARED_STROKES})"
    rng = np.random.default_rng(0)
    out = []
    for _ in range(limit):
        strokes = []
        for _ in range(int(rng.integers(2, 8))):
            n = int(rng.integers(5, 40))
            strokes.append([np.cumsum(rng.integers(-12, 13, n)).tolist(), np.cumsum(rng.integers(-12, 13, n)).tolist()])
        out.append(strokes)
    return out, f"synthetic random-walk doodles ({limit})"


def make_model(folder: Path) -> Path:
    import torch

    from qdkit.checkpoint import save_checkpoint
    from qdkit.deploy.export import export_model
    from qdkit.models import DEFAULT_MODEL, build_model

    torch.manual_seed(0)
    classes = [f"class{i}" for i in range(10)]
    model = build_model(DEFAULT_MODEL, len(classes)).eval()
    save_checkpoint(
        folder / "best.pt",
        model=model,
        model_name=DEFAULT_MODEL,
        model_kwargs={},
        class_names=classes,
        run_name="bench",
    )
    return export_model(folder / "best.pt", folder / "model.onnx").path


# ----------------------------------------------------------------------------- (a) in-process


def in_process_rate(model: Path, drawings: list, threads: int, seconds: float) -> tuple[float, float]:
    """(drawings/s, drawings per CPU-second) of parse + simplify + rasterize + infer + top-k, batches of
    BATCH; the best of 3 rounds."""
    from qdkit.inference.predictor import Predictor
    from qdkit.strokes import parse_drawing, rasterize_many

    predictor = Predictor(model, threads=threads, spin=False)
    batches = [drawings[i : i + BATCH] for i in range(0, len(drawings) - BATCH + 1, BATCH)]

    def one(batch: list) -> None:
        parsed = [parse_drawing(d, simplified=False) for d in batch]
        _, probs = predictor.logits_and_proba(rasterize_many(parsed))
        predictor.top_k(probs, 3)

    one(batches[0])  # warm-up
    best, per_cpu = 0.0, 0.0
    for _ in range(3):
        done, start, cpu = 0, time.perf_counter(), time.process_time()  # all threads' CPU, onnxruntime's too
        while time.perf_counter() - start < seconds / 3:
            one(batches[done % len(batches)])
            done += 1
        best = max(best, done * BATCH / (time.perf_counter() - start))
        per_cpu = max(per_cpu, done * BATCH / (time.process_time() - cpu))
    return best, per_cpu


def bitmap_rate(model: Path, drawings: list, threads: int, seconds: float) -> float:
    """Drawings/s of the Predictor alone on ready (28, 28) bitmaps, batches of BATCH; the best of 3 rounds."""
    from qdkit.predict import Predictor
    from qdkit.strokes import to_bitmap

    predictor = Predictor(model, threads=threads, spin=False)
    bitmaps = np.stack([to_bitmap(d) for d in drawings[: BATCH * 16]])
    batches = [bitmaps[i : i + BATCH] for i in range(0, len(bitmaps), BATCH)]
    predictor.logits_and_proba(batches[0])
    best = 0.0
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            predictor.logits_and_proba(batches[done % len(batches)])
            done += 1
        best = max(best, done * BATCH / (time.perf_counter() - start))
    return best


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    family, total = {pid}, 0.0
    changed = True
    while changed:
        changed = False
        for p, (parent, _) in stats.items():
            if parent in family and p not in family:
                family.add(p)
                changed = True
    for p in family:
        total += stats.get(p, (0, 0.0))[1]
    return total


# ----------------------------------------------------------------------------- (b) the load generator


MODES = ("predict", "v2-json", "v2-binary", "v2-grpc")
MARKERS = {"predict": b'"top"', "v2-json": b'"outputs"', "v2-binary": b'"outputs"'}


def encode_requests(host: str, port: int, drawings: list, mode: str = "predict") -> list[bytes]:
    """Whole HTTP/1.1 requests, one drawing each: raw strokes for /predict, else the pixels as a
    Triton client sends them (rasterized here, before the clock starts)."""
    from qdkit.strokes import to_bitmap

    out = []
    for d in drawings:
        extra = ""
        if mode == "predict":
            path, body = "/predict?top_k=3", json.dumps({"drawing": d}, separators=(",", ":")).encode()
        else:
            pixels = to_bitmap(d)
            tensor = {"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "UINT8"}
            path = "/v2/models/qdkit/infer"
            if mode == "v2-json":
                body = json.dumps(
                    {"inputs": [{**tensor, "data": pixels.ravel().tolist()}], "outputs": [{"name": "probabilities"}]},
                    separators=(",", ":"),
                ).encode()
            else:
                header = json.dumps(
                    {
                        "inputs": [{**tensor, "parameters": {"binary_data_size": pixels.size}}],
                        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
                    },
                    separators=(",", ":"),
                ).encode()
                body = header + pixels.tobytes()
                extra = f"Inference-Header-Content-Length: {len(header)}\r\n"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def http_client(
    host: str,
    port: int,
    requests: list[bytes],
    offset: int,
    until: float,
    latencies: list[float],
    errors: list[str],
    marker: bytes = b'"top"',
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    try:
        while time.perf_counter() < until:
            request = requests[i % len(requests)]
            i += 1
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 200") or marker not in body:
                errors.append(head.split(b"\r\n", 1)[0].decode() + " " + body[:200].decode(errors="replace"))
    except (OSError, asyncio.IncompleteReadError) as e:
        errors.append(f"connection: {e!r}")
    finally:
        writer.close()


async def _grpc_client(
    address: str,
    requests: list,
    offset: int,
    until: float,
    latencies: list[float],
    errors: list[str],
    marker: bytes = b"",
) -> None:
    import grpc

    from qdkit.serve._proto import grpc_service_pb2_grpc as pb_grpc

    # a connection of its own per client, like 16 separate processes
    async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        i = offset
        while time.perf_counter() < until:
            request = requests[i % len(requests)]
            i += 1
            start = time.perf_counter()
            try:
                response = await stub.ModelInfer(request)
            except grpc.aio.AioRpcError as e:
                errors.append(f"{e.code()}: {e.details()}")
                continue
            latencies.append(time.perf_counter() - start)
            if len(response.raw_output_contents) != 1:
                errors.append("no output")


def _grpc_requests(drawings: list) -> list:
    from qdkit.serve._proto import grpc_service_pb2 as pb
    from qdkit.strokes import to_bitmap

    out = []
    for d in drawings:
        request = pb.ModelInferRequest(model_name="qdkit")
        request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 1, 28, 28])
        request.outputs.add(name="probabilities")
        request.raw_input_contents.append(to_bitmap(d).tobytes())
        out.append(request)
    return out


async def _load(host: str, port: int, requests: list, clients: int, seconds: float, mode: str = "predict") -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    warm_latencies: list[float] = []
    warm = time.perf_counter() + 0.5
    if mode == "v2-grpc":
        address = f"{host}:{port}"

        def one(offset: int, until: float, lat: list[float]) -> Any:
            return _grpc_client(address, requests, offset, until, lat, errors)

    else:

        def one(offset: int, until: float, lat: list[float]) -> Any:
            return http_client(host, port, requests, offset, until, lat, errors, MARKERS[mode])

    await asyncio.gather(*(one(7919 * c, warm, warm_latencies) for c in range(clients)))
    start = time.perf_counter()
    await asyncio.gather(*(one(104729 * c, start + seconds, latencies) for c in range(clients)))
    wall = time.perf_counter() - start
    cpu = time.process_time()
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "with_warm_up": len(latencies) + len(warm_latencies),
        "seconds": wall,
        "req_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "errors": len(errors),
        "first_errors": errors[:3],
        "generator_cpu_s": cpu,
    }


def load_generator_main(argv: list[str]) -> None:
    """`bench_serve.py --load-generator URL CLIENTS SECONDS REQUESTS_JSON [MODE]`: prints one JSON line.
    URL is http://HOST:PORT/, or HOST:PORT for MODE v2-grpc."""
    url, clients, seconds, path = argv[:4]
    mode = argv[4] if len(argv) > 4 else "predict"
    host, port = url.split("//")[-1].rstrip("/").rsplit(":", 1)
    drawings = json.loads(Path(path).read_text())
    requests: list = _grpc_requests(drawings) if mode == "v2-grpc" else encode_requests(host, int(port), drawings, mode)
    print(json.dumps(asyncio.run(_load(host, int(port), requests, int(clients), float(seconds), mode))))


def run_load(url: str, clients: int, seconds: float, drawings_file: Path, mode: str = "predict") -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--load-generator", url, str(clients), str(seconds), str(drawings_file), mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--load-generator":
        load_generator_main(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--seconds", type=float, default=10.0, help="per client count (at least 10 for the README)")
    ap.add_argument("--workers", type=int, default=1, help="qdkit serve --workers")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="onnxruntime threads, in-process and per server worker [default: cores / workers]",
    )
    ap.add_argument("--model", type=Path, help="an exported model [default: qdnet with random weights]")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from _serving import running_server  # the same start-and-stop the tests use

    drawings, source = real_or_synthetic_drawings()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    with tempfile.TemporaryDirectory(prefix="qdkit-bench-serve-") as tmp:
        tmp_path = Path(tmp)
        model = args.model or make_model(tmp_path)
        drawings_file = tmp_path / "drawings.json"
        drawings_file.write_text(json.dumps(drawings))
        print(f"drawings: {source}; model {model}; {os.cpu_count()} cores", flush=True)
        # The ceiling is the best round before and after the server runs: a shared machine's other
        # load only ever makes a round slower.
        rounds = max(3.0, args.seconds / 2)
        before, before_cpu = in_process_rate(model, drawings, threads, seconds=rounds)
        print(
            f"(a) in-process, batches of {BATCH}, {threads} onnxruntime threads: {before:,.0f} drawings/s "
            f"({before_cpu:,.0f} per CPU-second)",
            flush=True,
        )
        bitmaps_ceiling = bitmap_rate(model, drawings, threads, seconds=rounds)
        print(f"(c) in-process on ready bitmaps, batches of {BATCH}: {bitmaps_ceiling:,.0f} drawings/s", flush=True)
        results = {}
        oip: dict[str, dict] = {}
        grpc_args = ["--grpc-port", "0"] if args.workers == 1 else []
        with running_server(model, "--workers", str(args.workers), "--threads", str(threads), *grpc_args) as server:
            for clients in (1, 16):
                cpu = cpu_seconds(server.proc.pid)
                r = run_load(server.url, clients, args.seconds, drawings_file)
                r["per_cpu_s"] = r["with_warm_up"] / max(cpu_seconds(server.proc.pid) - cpu, 1e-9)
                results[clients] = r
                print(
                    f"(b) POST /predict, {clients:2d} client(s), {r['seconds']:.1f} s: {r['req_per_s']:,.0f} req/s, "
                    f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, {r['errors']} errors "
                    f"({r['per_cpu_s']:,.0f} per server CPU-second; load generator CPU {r['generator_cpu_s']:.1f} s)",
                    flush=True,
                )
                for e in r["first_errors"]:
                    print(f"    error: {e}")
            for mode in MODES[1:] if grpc_args else ():
                target = server.url
                if mode == "v2-grpc":
                    target = server.first_line.split(", gRPC at ", 1)[1].split(",", 1)[0]
                cpu = cpu_seconds(server.proc.pid)
                r = run_load(target, 16, args.seconds, drawings_file, mode)
                r["per_cpu_s"] = r["with_warm_up"] / max(cpu_seconds(server.proc.pid) - cpu, 1e-9)
                oip[mode] = r
                print(
                    f"(c) {mode:9s} 16 clients, {r['seconds']:.1f} s: {r['req_per_s']:,.0f} req/s, "
                    f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, {r['errors']} errors "
                    f"({r['per_cpu_s']:,.0f} per server CPU-second)",
                    flush=True,
                )
                for e in r["first_errors"]:
                    print(f"    error: {e}")
            server.stop()
        after, after_cpu = in_process_rate(model, drawings, threads, seconds=rounds)
        ceiling, ceiling_cpu = max(before, after), max(before_cpu, after_cpu)
        print(f"(a) in-process again after the server: {after:,.0f} drawings/s; the ceiling: {ceiling:,.0f}")
    c1, c16 = results[1], results[16]
    report = {
        "inprocess_per_s": round(ceiling, 1),
        "serve_req_per_s_c16": round(c16["req_per_s"], 1),
        "efficiency": round(c16["req_per_s"] / ceiling, 3),
        "p50_ms_c1": round(c1["p50_ms"], 3),
        "p99_ms_c16": round(c16["p99_ms"], 3),
        "errors": c1["errors"] + c16["errors"],
        # the same ratio in CPU time (requests per server CPU-second / drawings per in-process CPU-second):
        # what the server costs per drawing, which other load on a shared machine does not change much
        "efficiency_cpu_c16": round(c16["per_cpu_s"] / ceiling_cpu, 3),
        "serve_req_per_s_c1": round(c1["req_per_s"], 1),
        "p99_ms_c1": round(c1["p99_ms"], 3),
        "p50_ms_c16": round(c16["p50_ms"], 3),
        "seconds_per_level": args.seconds,
        "workers": args.workers,
        "threads": threads,
        "drawings": source,
        "load_generator": LOAD_GENERATOR,
        "cores": os.cpu_count(),
        "inprocess_bitmaps_per_s": round(bitmaps_ceiling, 1),
        "oip_c16": {
            mode: {
                "req_per_s": round(r["req_per_s"], 1),
                "p50_ms": round(r["p50_ms"], 3),
                "p99_ms": round(r["p99_ms"], 3),
                "errors": r["errors"],
                "per_server_cpu_s": round(r["per_cpu_s"], 1),
            }
            for mode, r in oip.items()
        },
    }
    print(
        f"efficiency (16 clients / in-process) {report['efficiency']:.2f} (goal >= 0.6); p50 at 1 client "
        f"{report['p50_ms_c1']:.2f} ms (goal <= 5); p99 at 16 clients {report['p99_ms_c16']:.2f} ms (goal <= 50); "
        f"{report['errors']} errors; CPU-time efficiency {report['efficiency_cpu_c16']:.2f}"
    )
    if oip:
        rows = [("/predict", c16), *((m, r) for m, r in oip.items())]
        print("\n| 16 clients, 1 drawing/request | req/s | p50 ms | p99 ms | errors | per server CPU-s | ceiling |")
        print("|---|---|---|---|---|---|---|")
        for mode, r in rows:
            ceil = ceiling if mode == "/predict" else bitmaps_ceiling
            print(
                f"| {mode} | {r['req_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} "
                f"| {r['per_cpu_s']:,.0f} | {ceil:,.0f} drawings/s |"
            )
        if "v2-json" in oip and "v2-binary" in oip:
            ratio = oip["v2-binary"]["req_per_s"] / oip["v2-json"]["req_per_s"]
            report["v2_binary_over_json"] = round(ratio, 2)
            cpu_ratio = oip["v2-binary"]["per_cpu_s"] / oip["v2-json"]["per_cpu_s"]
            report["v2_binary_over_json_cpu"] = round(cpu_ratio, 2)
            print(f"v2 binary / v2 JSON: {ratio:.2f}x req/s, {cpu_ratio:.2f}x per server CPU-second (goal >= 1.5)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
