"""Shared by the benchmark scripts: a synthetic HDF5 store in a folder, so each runs anywhere."""

from __future__ import annotations

from pathlib import Path


def synthetic_store(folder: Path, classes: int, train: int, held_out: int) -> Path:
    """`qdkit synth` + `qdkit convert --h5 --no-png`: `train` drawings per class for training and
    `held_out` each for validation and test."""
    from qdkit.data.convert import convert
    from qdkit.data.synth import write_synth

    write_synth(folder / "raw", num_classes=classes, per_class=train + 2 * held_out, seed=0)
    convert(
        folder / "raw",
        folder / "data",
        h5=True,
        png=False,
        per_class={"train": train, "validation": held_out, "test": held_out},
        seed=0,
        workers=1,
        progress=False,
    )
    return folder / "data" / "quickdraw.h5"
