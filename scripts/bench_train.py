#!/usr/bin/env python
"""Training throughput of qdkit's epoch loop vs a bare PyTorch loop over in-memory tensors.

Both sides train the same model (same constructor, memory format, precision, optimizer, schedule,
augmentation and batch size) for the same number of steps; the only differences are what qdkit
adds: memory-mapped batches through BatchLoader, metric accumulation, NaN checks, the progress bar.
Epochs alternate between the two sides and the best epoch of each counts, which keeps other load
on the machine from deciding the result.

    python scripts/bench_train.py [--data STORE] [--json FILE]

Without --data it builds a synthetic store (10 classes x 600 train drawings) in a temp dir.
Prints and optionally writes {"qdkit_img_per_s", "bare_img_per_s", "overhead"}, overhead = 1 - qdkit/bare.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from _bench import synthetic_store  # scripts/ is on sys.path when a script runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="an existing HDF5 store [default: a synthetic one in a temp dir]")
    ap.add_argument("--model", default=None, help="qdnet or seed-cnn [default: qdnet]")
    ap.add_argument("--batch-size", type=int, default=None, help="[default: the model's recipe]")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per side (after one warm-up each)")
    ap.add_argument("--per-class", type=int, default=600, help="synthetic train drawings per class")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-amp", dest="amp", action="store_false")
    ap.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads [default: torch's]")
    ap.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show qdkit's progress bar as `qdkit train` does [default: on]",
    )
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F

    from qdkit.models import build_model
    from qdkit.train import TrainConfig
    from qdkit.train.devices import precision_name
    from qdkit.train.loop import Trainer
    from qdkit.train.recipes import augment_batch, lr_factor, make_optimizer, param_groups

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="qdkit-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = Path(args.data) if args.data else synthetic_store(tmp, classes=10, train=args.per_class, held_out=10)
        cfg = TrainConfig(
            data=str(data),
            model=args.model,
            batch_size=args.batch_size,
            device=args.device,
            amp=args.amp,
            augment=args.augment,
            runs_dir=str(tmp / "runs"),
            artifacts_dir=str(tmp / "artifacts"),
            run_name="bench",
            progress=args.progress,
        )
        trainer = Trainer(cfg, log=lambda s: None)  # creates no file; train_epoch() runs the loop's epoch
        cfg, device, amp = trainer.cfg, trainer.device, trainer.amp_dtype
        steps = trainer.parts.steps_per_epoch
        bs = cfg.batch_size

        # The bare side: the same model and optimisation, data already in memory as tensors.
        arrays = trainer.data.train
        x_all = torch.from_numpy(np.asarray(arrays.images)).unsqueeze(1).to(device)
        y_all = torch.from_numpy(arrays.labels).to(device)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, len(trainer.data.class_names), **cfg.model_kwargs())
        model = model.to(device, memory_format=torch.channels_last).train()  # type: ignore[call-overload]
        opt = make_optimizer(cfg.optimizer, param_groups(model, cfg.weight_decay), cfg.lr, cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg.schedule, 10**6))
        gen = torch.Generator(device=device).manual_seed(0)

        def bare_epoch() -> None:
            perm = torch.randperm(len(y_all), device=device)
            for i in range(steps):
                idx = perm[i * bs : (i + 1) * bs]
                x, y = x_all[idx].float(), y_all[idx]
                if cfg.augment:
                    x = augment_batch(x, gen)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = F.cross_entropy(model(x).float(), y, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()

        def timed(fn) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return steps * bs / (time.perf_counter() - t0)

        epoch = [0]

        def qdkit_epoch() -> None:
            epoch[0] += 1
            trainer.train_epoch(epoch[0])

        qdkit_epoch()  # warm-up: allocator, oneDNN kernels, page cache
        bare_epoch()
        q_rates, b_rates = [], []
        for _ in range(args.epochs):
            q_rates.append(timed(qdkit_epoch))
            b_rates.append(timed(bare_epoch))
    q, b = max(q_rates), max(b_rates)
    result = {
        "qdkit_img_per_s": round(q, 1),
        "bare_img_per_s": round(b, 1),
        "overhead": round(1.0 - q / b, 4),
        "model": cfg.model,
        "batch_size": bs,
        "augment": bool(cfg.augment),
        "device": str(device),
        "precision": precision_name(amp),
        "threads": torch.get_num_threads(),
        "steps_per_epoch": steps,
        "epochs_timed": args.epochs,
        "qdkit_epochs_img_per_s": [round(r, 1) for r in q_rates],
        "bare_epochs_img_per_s": [round(r, 1) for r in b_rates],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if math.isfinite(result["overhead"]) else 1


if __name__ == "__main__":
    sys.exit(main())
