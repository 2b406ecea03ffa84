#!/usr/bin/env python
"""Training throughput of one process vs two DistributedDataParallel processes on this machine.

Three ways to train the same run (same model, recipe, global batch, data, seed), each a real
`qdkit train` in its own process(es):

  single          1 process  x 1 thread   (OMP_NUM_THREADS=1)
  ddp2            2 processes x 1 thread  (`qdkit train --nproc 2`, gloo; each rank half of every batch)
  single_2threads 1 process  x 2 threads  (OMP_NUM_THREADS=2)

Throughput is qdkit's own per-epoch training images/s (results.csv: drawings of the epoch over the
wall time of its training steps, all ranks together under DDP; validation, start-up and rendezvous
excluded). The first epoch of each run is a warm-up and is dropped; the configurations alternate for
--rounds rounds and the best epoch of each counts, which keeps other load on the machine from
deciding the result.

    python scripts/bench_ddp.py [--data STORE] [--json FILE]

Without --data it builds a synthetic store (10 classes x 1,000 train drawings) in a temp dir.
efficiency = ddp2 / (2 x single): 1.0 would be perfect scaling of the 1-thread process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import synthetic_store  # scripts/ is on sys.path when a script runs

CONFIGS = {  # name: (processes, threads per process)
    "single": (1, 1),
    "ddp2": (2, 1),
    "single_2threads": (1, 2),
}


def run_once(name: str, data: Path, tmp: Path, args: argparse.Namespace, round_no: int) -> dict:
    procs, threads = CONFIGS[name]
    run = f"{name}-r{round_no}"
    cmd = [
        sys.executable,
        "-m",
        "qdkit",
        "train",
        "--data",
        str(data),
        "--epochs",
        str(args.epochs),
        "--run-name",
        run,
        "--runs-dir",
        str(tmp / "runs"),
        "--artifacts-dir",
        str(tmp / "artifacts"),
        "--no-progress",
        "--device",
        "cpu",
    ]
    if args.model:
        cmd += ["--model", args.model]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if not args.amp:
        cmd.append("--no-amp")
    if procs > 1:
        cmd += ["--nproc", str(procs)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{name}: qdkit train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = list(csv.DictReader((tmp / "artifacts" / run / "results.csv").open()))
    metrics = json.loads((tmp / "artifacts" / run / "metrics.json").read_text())
    rates = [float(r["img_per_s"]) for r in rows]
    return {
        "epochs_img_per_s": [round(r, 1) for r in rates],
        "wall_s": round(wall, 1),
        "test_accuracy": metrics["test_accuracy"],
        "precision": metrics["precision"],
        "batch_size": metrics["batch_size"],
        "model": metrics["model"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="an existing HDF5 store [default: a synthetic one in a temp dir]")
    ap.add_argument("--model", default=None, help="qdnet or seed-cnn [default: qdnet]")
    ap.add_argument("--batch-size", type=int, default=None, help="global batch [default: the model's recipe]")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is a warm-up")
    ap.add_argument("--rounds", type=int, default=2, help="times each configuration runs, alternating")
    ap.add_argument("--per-class", type=int, default=1000, help="synthetic train drawings per class")
    ap.add_argument("--no-amp", dest="amp", action="store_false")
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first is a warm-up)")

    with tempfile.TemporaryDirectory(prefix="qdkit-bench-ddp-") as tmp_name:
        tmp = Path(tmp_name)
        data = Path(args.data) if args.data else synthetic_store(tmp, classes=10, train=args.per_class, held_out=20)
        runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
        for r in range(1, args.rounds + 1):
            for name in CONFIGS:
                runs[name].append(run_once(name, data, tmp, args, r))
                print(f"round {r} {name:<16} {runs[name][-1]['epochs_img_per_s']} img/s per epoch", file=sys.stderr)

    def best(name: str) -> float:
        return max(rate for run in runs[name] for rate in run["epochs_img_per_s"][1:])

    single, ddp2, single2 = best("single"), best("ddp2"), best("single_2threads")
    first = runs["single"][0]
    result = {
        "single_img_per_s": round(single, 1),
        "ddp2_img_per_s": round(ddp2, 1),
        "single_2threads_img_per_s": round(single2, 1),
        "speedup": round(ddp2 / single, 3),
        "efficiency": round(ddp2 / (2 * single), 3),
        "ddp2_vs_single_2threads": round(ddp2 / single2, 3),
        "model": first["model"],
        "batch_size_global": first["batch_size"],
        "precision": first["precision"],
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "epochs_per_run": args.epochs,
        "rounds": args.rounds,
        "test_accuracy": {name: [run["test_accuracy"] for run in rs] for name, rs in runs.items()},
        "runs": {
            name: [{k: run[k] for k in ("epochs_img_per_s", "wall_s")} for run in rs] for name, rs in runs.items()
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
