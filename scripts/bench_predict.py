"""Benchmark the deploy path, in one run, on whatever machine it is started on:

  (a) throughput on preprocessed drawings: the onnxruntime Predictor vs PyTorch eager on the same
      model (qdnet, the default), batch 256, both on --threads threads (default 2); and the int8
      model `qdkit export --int8` makes from it (static QDQ, calibrated on the benchmark's drawings);
  (b) `qdkit predict` end to end over 10,000 PNG files (a fresh process: start-up, file discovery,
      decoding, inference and writing the CSV all count);
  (c) the latency of one drawing through `Predictor.predict`, median (p50) and p90.

It builds its own model (random weights: speed does not depend on them) and writes its own PNGs
in a temporary folder, so it needs no data. With --checkpoint it benchmarks that trained model
instead, calibrates its int8 model on the run's store (--data, default as `qdkit export --int8`)
and adds the int8 model's top-1 agreement with fp32 and both accuracies on the store's test split.
Each throughput is the best of a few rounds, because a shared machine's other load only ever makes
a round slower. Usage:

    python scripts/bench_predict.py [--json FILE] [--threads 2] [--pngs 10000] [--checkpoint CKPT [--data STORE]]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 256


def best_rate(fn, images: int, rounds: int = 3, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = max(best, images / (time.perf_counter() - t))
    return best


def test_agreement(fp32_path: Path, int8_path: Path, store_path: Path, threads: int) -> dict:
    """Top-1 agreement of the int8 model with fp32, and both accuracies, on the store's test split."""
    from qdkit.data.store import open_store
    from qdkit.inference.predictor import Predictor

    test = open_store(store_path).split("test")
    x = np.array(test.images)
    fp32 = Predictor(fp32_path, threads=threads).logits(x).argmax(1)
    int8 = Predictor(int8_path, threads=threads).logits(x).argmax(1)
    return {
        "drawings": len(x),
        "agreement": round(float((int8 == fp32).mean()), 4),
        "fp32_accuracy": round(float((fp32 == test.labels).mean()), 4),
        "int8_accuracy": round(float((int8 == test.labels).mean()), 4),
    }


def predict_wall(png_dir: Path, model: Path, out: Path, threads: int, expected: int) -> float:
    """Best of two wall times of `qdkit predict` over every PNG under png_dir, as a user runs it."""
    cmd = [
        sys.executable,
        "-m",
        "qdkit",
        "predict",
        str(png_dir),
        "--model",
        str(model),
        "--threads",
        str(threads),
        "--format",
        "csv",
        "--output",
        str(out),
        "--overwrite",
    ]
    walls = []
    for _ in range(2):
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        if done.returncode != 0:
            raise SystemExit(f"qdkit predict failed:\n{done.stderr}")
    rows = out.read_text().count("\n") - 1
    if rows != expected:
        raise SystemExit(f"expected {expected} predictions, got {rows}")
    return min(walls)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pngs", type=int, default=10_000)
    ap.add_argument("--checkpoint", type=Path, help="a trained checkpoint instead of random weights")
    ap.add_argument("--data", type=Path, help="with --checkpoint: its store [default: the run's]")
    args = ap.parse_args()

    import torch

    from qdkit.checkpoint import model_from_checkpoint, save_checkpoint
    from qdkit.deploy.export import export_model, parity_drawings
    from qdkit.deploy.quantize import default_store, quantize_from_store, quantize_model
    from qdkit.images import write_png
    from qdkit.inference.predictor import Predictor
    from qdkit.models import DEFAULT_MODEL, build_model

    torch.set_num_threads(args.threads)
    classes = [f"class{i}" for i in range(10)]
    with tempfile.TemporaryDirectory(prefix="qdkit-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if args.checkpoint:
            model, ckpt = model_from_checkpoint(args.checkpoint)
            model_name, classes = ckpt["model_name"], [str(c) for c in ckpt["class_names"]]
            onnx_path = export_model(args.checkpoint, tmp / "model.onnx").path
        else:
            torch.manual_seed(0)
            model_name = DEFAULT_MODEL
            model = build_model(DEFAULT_MODEL, len(classes)).eval()
            save_checkpoint(
                tmp / "best.pt",
                model=model,
                model_name=DEFAULT_MODEL,
                model_kwargs={},
                class_names=classes,
                run_name="bench",
            )
            onnx_path = export_model(tmp / "best.pt", tmp / "model.onnx").path

        drawings = parity_drawings(max(args.pngs, 2048), seed=1)
        x = drawings[:2048]
        batches = [x[i : i + BATCH] for i in range(0, len(x), BATCH)]
        int8_test = None
        if args.checkpoint:
            store = args.data or default_store(args.checkpoint)
            int8 = quantize_from_store(onnx_path, tmp / "model.int8.onnx", store)
            int8_test = test_agreement(onnx_path, int8.path, store, args.threads)
        else:
            # Random weights: agreement means nothing, so no gate; calibrated like export does, on
            # 1,024 of the drawings, the gate (still run) on the next 1,024.
            int8 = quantize_model(onnx_path, tmp / "model.int8.onnx", x[:1024], gate=x[1024:], min_agreement=0.0)

        # (a) PyTorch first: onnxruntime's worker threads spin for a moment after each run and
        # would steal its cores.
        tb = [torch.from_numpy(b).unsqueeze(1) for b in batches]

        def torch_run() -> None:
            with torch.inference_mode():
                for b in tb:
                    model(b)

        torch_rate = best_rate(torch_run, len(x))

        def predictor_rate(path: Path) -> float:
            # One session at a time: a live one's spinning worker threads would slow the next.
            predictor = Predictor(path, threads=args.threads, batch_size=BATCH)

            def ort_run() -> None:
                for b in batches:
                    predictor.logits(b)

            return best_rate(ort_run, len(x))

        ort_rate = predictor_rate(onnx_path)
        int8_rate = predictor_rate(int8.path)
        predictor = Predictor(onnx_path, threads=args.threads, batch_size=BATCH)

        # (c) one drawing at a time, through the public API.
        one = drawings[7]
        for _ in range(50):
            predictor.predict(one)
        times = []
        for i in range(1000):
            t = time.perf_counter()
            predictor.predict(drawings[i % 256])
            times.append(time.perf_counter() - t)
        p50, p90 = (float(np.percentile(times, q) * 1e3) for q in (50, 90))
        del predictor

        # (b) end to end over PNG files, in ten class folders like `qdkit convert` writes them.
        png_dir = tmp / "png"
        for i in range(args.pngs):
            folder = png_dir / classes[i % len(classes)]
            if i < len(classes):
                folder.mkdir(parents=True)
            write_png(drawings[i], folder / f"{i}.png")
        wall = predict_wall(png_dir, onnx_path, tmp / "out.csv", args.threads, args.pngs)
        wall_int8 = predict_wall(png_dir, int8.path, tmp / "out.csv", args.threads, args.pngs)

    result = {
        "ort_img_per_s": round(ort_rate, 1),
        "torch_img_per_s": round(torch_rate, 1),
        "speedup": round(ort_rate / torch_rate, 2),
        "ort_int8_img_per_s": round(int8_rate, 1),
        "int8_speedup": round(int8_rate / torch_rate, 2),
        "int8_test_agreement": int8_test["agreement"] if int8_test else None,
        "png_end_to_end_img_per_s": round(args.pngs / wall, 1),
        "latency_p50_ms": round(p50, 3),
        # context for reading the figures above
        "png_files": args.pngs,
        "png_end_to_end_s": round(wall, 3),
        "png_end_to_end_int8_s": round(wall_int8, 3),
        "latency_p90_ms": round(p90, 3),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "model": model_name,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "model_bytes_fp32": int8.fp32_bytes,
        "model_bytes_int8": int8.int8_bytes,
        "int8_test": int8_test,
    }
    print(
        f"(a) {model_name}, batch {BATCH}, {args.threads} threads: onnxruntime {ort_rate:,.0f} img/s, "
        f"PyTorch eager {torch_rate:,.0f} img/s -> {ort_rate / torch_rate:.2f}x; "
        f"int8 {int8_rate:,.0f} img/s -> {int8_rate / torch_rate:.2f}x"
    )
    if int8_test:
        print(
            f"    int8 on the test split: top-1 agreement with fp32 {int8_test['agreement']:.2%}, accuracy "
            f"{int8_test['int8_accuracy']:.2%} vs {int8_test['fp32_accuracy']:.2%} fp32"
        )
    print(
        f"(b) qdkit predict over {args.pngs:,} PNGs: {wall:.2f} s end to end ({args.pngs / wall:,.0f} img/s); "
        f"with the int8 model {wall_int8:.2f} s"
    )
    print(f"(c) one drawing through Predictor.predict: p50 {p50:.3f} ms, p90 {p90:.3f} ms")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
