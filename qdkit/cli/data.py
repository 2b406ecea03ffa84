"""Data commands: synth, download, convert, info, render."""

from __future__ import annotations

from pathlib import Path

import click

from qdkit.cli.base import csv_list, main
from qdkit.constants import DEFAULT_STORE
from qdkit.errors import QdkitError


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False), default="data/raw")
@click.option(
    "--classes",
    "num_classes",
    type=click.IntRange(1, 10),
    default=10,
    show_default=True,
    help="How many shape classes (up to 10).",
)
@click.option("--per-class", type=click.IntRange(1), default=2500, show_default=True, help="Drawings per class.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["bitmap", "ndjson"]),
    default="bitmap",
    show_default=True,
    help="numpy bitmaps, or the same drawings as simplified ndjson strokes.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
def synth(out_dir: str, num_classes: int, per_class: int, seed: int, fmt: str, overwrite: bool) -> None:
    """Write SYNTHETIC Quick-Draw-format files of simple shapes (the offline default data)."""
    from qdkit.data.synth import write_synth

    paths = write_synth(out_dir, num_classes=num_classes, per_class=per_class, seed=seed, overwrite=overwrite, fmt=fmt)
    click.echo(f"wrote {len(paths)} synthetic class files ({per_class} drawings each) to {out_dir}")


@main.command()
@click.option(
    "--in",
    "in_dir",
    type=click.Path(),
    default="data/raw",
    show_default=True,
    help="Folder of Quick Draw files, one per class: .npy bitmaps, .ndjson (simplified or raw), "
    ".bin or Kaggle .csv strokes.",
)
@click.option("--out", "out_dir", type=click.Path(), default="data", show_default=True)
@click.option("--h5/--no-h5", default=False, help="Also pack the splits into OUT/quickdraw.h5.")
@click.option("--png/--no-png", default=True, show_default=True, help="Write OUT/png/{split}/{class}/*.png.")
@click.option("--train", type=click.IntRange(1), default=2000, show_default=True, help="Drawings per class.")
@click.option("--validation", type=click.IntRange(0), default=400, show_default=True, help="Drawings per class.")
@click.option("--test", type=click.IntRange(0), default=100, show_default=True, help="Drawings per class.")
@click.option("--classes", help="Comma-separated class names (default: every file in --in).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the per-class shuffle.")
@click.option(
    "--workers", type=click.IntRange(1), default=None, help="Rasterizer and PNG writer processes [default: CPU count]."
)
@click.option("--recognized-only", is_flag=True, help="Stroke files: keep only drawings the game recognized.")
@click.option(
    "--skip-invalid", is_flag=True, help="Stroke files: skip bad drawings (and say how many) instead of failing."
)
@click.option("--overwrite", is_flag=True, help="Replace existing output.")
def convert(
    in_dir, out_dir, h5, png, train, validation, test, classes, seed, workers, recognized_only, skip_invalid, overwrite
) -> None:
    """Split each class into train/validation/test; write PNG folders and/or the HDF5 store."""
    from qdkit.data.convert import convert as run_convert

    if not h5 and not png:
        raise QdkitError("nothing to do: --no-png without --h5")
    summary = run_convert(
        in_dir,
        out_dir,
        h5=h5,
        png=png,
        per_class={"train": train, "validation": validation, "test": test},
        classes=csv_list(classes),
        seed=seed,
        workers=workers,
        overwrite=overwrite,
        recognized_only=recognized_only,
        skip_invalid=skip_invalid,
    )
    click.echo(summary)
    if h5:
        store = Path(out_dir) / "quickdraw.h5"
        given = "" if store == DEFAULT_STORE else f" --data {store}"
        click.echo(f"next: qdkit train{given}")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder for the PNGs.")
@click.option(
    "--size",
    type=click.IntRange(8, 1024),
    default=28,
    show_default=True,
    help="Side in pixels: 28 is exactly what the model sees; larger scales the same recipe.",
)
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N drawings of each file.")
@click.option("--skip-invalid", is_flag=True, help="Skip bad drawings (and say how many) instead of failing.")
@click.option("--overwrite", is_flag=True, help="Replace files of the same names that qdkit did not write.")
def render(
    files: tuple[str, ...], out_dir: str, size: int, limit: int | None, skip_invalid: bool, overwrite: bool
) -> None:
    """Render stroke files (.ndjson, .bin, .csv) to PNGs and a contact sheet: what the model sees.
    Only render's own files in OUT are written; nothing else there is touched."""
    from qdkit.data.render import render_files

    count, sheet = render_files(
        list(files),
        out_dir,
        size=size,
        limit=limit,
        overwrite=overwrite,
        skip_invalid=skip_invalid,
        warn=lambda m: click.echo(f"qdkit: warning: {m}", err=True),
    )
    click.echo(f"rendered {count} drawings to {out_dir} (contact sheet: {sheet})")


@main.command()
@click.argument("store", type=click.Path(), default=str(DEFAULT_STORE))
def info(store: str) -> None:
    """Classes, counts per split and class, memory-mappability and sources of an HDF5 store."""
    from qdkit.data.store import describe

    click.echo(describe(store))


@main.command()
@click.option("--classes", required=True, help="Comma-separated class names, e.g. bear,bee,cat.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Fetch only the first N drawings per class.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="data/raw", show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["bitmap", "simplified", "raw", "binary"]),
    default="bitmap",
    show_default=True,
    help="28x28 numpy bitmaps, simplified or raw ndjson strokes, or binary strokes.",
)
@click.option(
    "--base-url",
    default=None,
    help="Mirror of the dataset root, the folder holding full/ [default: Google's public bucket].",
)
def download(classes: str, limit: int | None, out_dir: str, fmt: str, base_url: str | None) -> None:
    """Fetch official Quick Draw per-class files (HTTP Range for --limit, resumable)."""
    from qdkit.data.download import DEFAULT_BASE_URL, download_classes

    paths = download_classes(
        csv_list(classes) or [], out_dir, limit=limit, base_url=base_url or DEFAULT_BASE_URL, fmt=fmt
    )
    click.echo(f"{len(paths)} files in {out_dir}")
