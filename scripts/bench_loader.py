"""Benchmark the data layer, competitor measured in the same run.

1. convert: 10 classes x 2,500 drawings (25,000) -> PNG splits + HDF5 store, wall time.
2. one epoch of shuffled batches (batch 256) over the train split:
   - qdkit: the memory-mapped store through BatchLoader (one sorted fancy index per batch);
   - the original project's way: PNG folders, decoded with PIL per item, turned into normalised
     float tensors (ToTensor + Normalize), batched by a torch DataLoader with 2 workers.
   Same images, same batch size. Prints img/s for each and the ratio.

    python scripts/bench_loader.py [--in ../shared/quickdraw/animals10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from qdkit.data.convert import convert
from qdkit.data.loader import BatchLoader
from qdkit.data.store import open_store
from qdkit.data.synth import write_synth


class PngFolderDataset(torch.utils.data.Dataset):
    """What the original project did per item: open a PNG, decode, ToTensor, Normalize."""

    def __init__(self, root: Path) -> None:
        classes = sorted(p.name for p in root.iterdir())
        self.items = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).glob("*.png"))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        with Image.open(path) as im:
            x = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)
        return (x.unsqueeze(0) - 0.5) / 0.5, label


def bench_png(root: Path, batch_size: int, workers: int) -> tuple[float, int]:
    loader = torch.utils.data.DataLoader(
        PngFolderDataset(root), batch_size=batch_size, shuffle=True, num_workers=workers
    )
    t0, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - t0), n


def bench_store(store: Path, batch_size: int, min_seconds: float = 2.0) -> tuple[float, int]:
    arrays = open_store(store).split("train")
    loader = BatchLoader(arrays, batch_size=batch_size, shuffle=True, seed=0)
    for _ in loader:  # warm the page cache, as the PNG path's files are after convert
        pass
    t0, n, epoch = time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < min_seconds:
        loader.set_epoch(epoch := epoch + 1)
        for x, _ in loader:
            n += len(x)
    return n / (time.perf_counter() - t0), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in", dest="in_dir", help="folder of .npy bitmaps (default: synthetic, 10 x 2,500)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--png-workers", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        raw = Path(args.in_dir) if args.in_dir else tmp / "raw"
        per_class = {"train": 2000, "validation": 400, "test": 100}
        if not args.in_dir:
            write_synth(raw, num_classes=10, per_class=2500, seed=0)
        else:  # the real set has 800 per class: keep the original 80/16/4 proportions
            per_class = {"train": 640, "validation": 128, "test": 32}
        t0 = time.perf_counter()
        convert(raw, tmp / "data", h5=True, png=True, per_class=per_class, seed=0, progress=False)
        convert_s = time.perf_counter() - t0
        drawings = sum(per_class.values()) * len(list(raw.glob("*.npy")))
        print(
            f"convert: {drawings:,} drawings -> PNGs + HDF5 in {convert_s:.2f} s "
            f"({drawings / convert_s:,.0f} drawings/s)"
        )
        png_rate, png_n = bench_png(tmp / "data" / "png" / "train", args.batch_size, args.png_workers)
        h5_rate, h5_n = bench_store(tmp / "data" / "quickdraw.h5", args.batch_size)
    result = {
        "hdf5_img_per_s": round(h5_rate),
        "png_img_per_s": round(png_rate),
        "speedup": round(h5_rate / png_rate, 1),
        "convert_seconds": round(convert_s, 2),
        "convert_drawings": drawings,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
    }
    print(f"PNG folders + PIL + DataLoader({args.png_workers} workers): {png_rate:>12,.0f} img/s  ({png_n:,} images)")
    print(f"qdkit memory-mapped store (BatchLoader):     {h5_rate:>12,.0f} img/s  ({h5_n:,} images)")
    print(f"speedup: {h5_rate / png_rate:,.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
