"""The `qdkit` command: each subcommand parses its options and calls one library function.

Heavy imports (torch, onnxruntime, h5py) happen inside the commands, so `qdkit --help` is instant.
"""
from __future__ import annotations

import click

from qdkit import __version__
from qdkit.errors import QdkitError


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


class _Group(click.Group):
    """Turns a QdkitError into one line on stderr and exit code 2: a user never sees a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except QdkitError as e:
            click.echo(f"qdkit: error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="qdkit")
def main() -> None:
    """Quick, Draw! doodles: numpy bitmaps -> PNG splits + HDF5 store -> CNN -> ONNX -> predictions."""


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False), default="data/raw")
@click.option("--classes", "num_classes", type=click.IntRange(1, 10), default=10, show_default=True,
              help="How many shape classes (up to 10).")
@click.option("--per-class", type=click.IntRange(1), default=2500, show_default=True,
              help="Drawings per class.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
def synth(out_dir: str, num_classes: int, per_class: int, seed: int, overwrite: bool) -> None:
    """Write SYNTHETIC Quick-Draw-format files of simple shapes (the offline default data)."""
    from qdkit.synth import write_synth

    paths = write_synth(out_dir, num_classes=num_classes, per_class=per_class, seed=seed, overwrite=overwrite)
    click.echo(f"wrote {len(paths)} synthetic class files ({per_class} drawings each) to {out_dir}")


@main.command()
@click.option("--in", "in_dir", type=click.Path(), default="data/raw", show_default=True,
              help="Folder of Quick Draw .npy bitmap files.")
@click.option("--out", "out_dir", type=click.Path(), default="data", show_default=True)
@click.option("--h5/--no-h5", default=False, help="Also pack the splits into OUT/quickdraw.h5.")
@click.option("--png/--no-png", default=True, show_default=True, help="Write OUT/png/{split}/{class}/*.png.")
@click.option("--train", type=click.IntRange(1), default=2000, show_default=True, help="Drawings per class.")
@click.option("--validation", type=click.IntRange(0), default=400, show_default=True, help="Drawings per class.")
@click.option("--test", type=click.IntRange(0), default=100, show_default=True, help="Drawings per class.")
@click.option("--classes", help="Comma-separated class names (default: every file in --in).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the per-class shuffle.")
@click.option("--workers", type=click.IntRange(1), default=None, help="PNG writer processes [default: CPU count].")
@click.option("--overwrite", is_flag=True, help="Replace existing output.")
def convert(in_dir, out_dir, h5, png, train, validation, test, classes, seed, workers, overwrite) -> None:
    """Split each class into train/validation/test; write PNG folders and/or the HDF5 store."""
    from qdkit.convert import convert as run_convert

    if not h5 and not png:
        raise QdkitError("nothing to do: --no-png without --h5")
    summary = run_convert(
        in_dir, out_dir, h5=h5, png=png, per_class={"train": train, "validation": validation, "test": test},
        classes=_csv(classes), seed=seed, workers=workers, overwrite=overwrite,
    )
    click.echo(summary)


@main.command()
@click.argument("store", type=click.Path(), default="data/quickdraw.h5")
def info(store: str) -> None:
    """Classes, counts per split and class, memory-mappability and sources of an HDF5 store."""
    from qdkit.store import describe

    click.echo(describe(store))


@main.command()
@click.option("--classes", required=True, help="Comma-separated class names, e.g. bear,bee,cat.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Fetch only the first N drawings per class.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="data/raw", show_default=True)
@click.option("--base-url", default=None, help="Mirror of the numpy_bitmap folder [default: Google's public bucket].")
def download(classes: str, limit: int | None, out_dir: str, base_url: str | None) -> None:
    """Fetch official Quick Draw numpy-bitmap files (HTTP Range for --limit, resumable)."""
    from qdkit.download import DEFAULT_BASE_URL, download_classes

    paths = download_classes(_csv(classes), out_dir, limit=limit, base_url=base_url or DEFAULT_BASE_URL)
    click.echo(f"{len(paths)} files in {out_dir}")
