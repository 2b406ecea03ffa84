"""The `qdkit` command: each subcommand parses its options and calls one library function.

Heavy imports (torch, onnxruntime, h5py) happen inside the commands, so `qdkit --help` is instant.
"""
from __future__ import annotations

import click

from qdkit import __version__
from qdkit.constants import DEFAULT_STORE
from qdkit.errors import QdkitError


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


class _Group(click.Group):
    """Turns a QdkitError into one line on stderr and exit code 2, a Python warning into one
    `qdkit: warning:` line, Ctrl-C into `qdkit: interrupted` and exit code 130: a user never sees a
    traceback. With --debug (or QDKIT_DEBUG=1) the full traceback of an error comes first, and
    warnings keep Python's format (file and line): what a bug report needs."""

    def invoke(self, ctx: click.Context):
        import warnings

        debug = bool(ctx.params.get("debug"))
        try:
            with warnings.catch_warnings():
                if not debug:
                    warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except QdkitError as e:
            if debug:
                import traceback

                traceback.print_exception(e)
            click.echo(f"qdkit: error: {e}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("qdkit: interrupted", err=True)
            ctx.exit(130)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message).strip().splitlines()
    click.echo(f"qdkit: warning: {text[0] if text else category.__name__}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="qdkit")
@click.option("--debug", is_flag=True, envvar="QDKIT_DEBUG",
              help="On an error, print the full traceback before the one-line message (also QDKIT_DEBUG=1).")
def main(debug: bool) -> None:
    """Quick, Draw! doodles: numpy bitmaps -> PNG splits + HDF5 store -> CNN -> ONNX -> predictions."""


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False), default="data/raw")
@click.option("--classes", "num_classes", type=click.IntRange(1, 10), default=10, show_default=True,
              help="How many shape classes (up to 10).")
@click.option("--per-class", type=click.IntRange(1), default=2500, show_default=True,
              help="Drawings per class.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["bitmap", "ndjson"]), default="bitmap", show_default=True,
              help="numpy bitmaps, or the same drawings as simplified ndjson strokes.")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
def synth(out_dir: str, num_classes: int, per_class: int, seed: int, fmt: str, overwrite: bool) -> None:
    """Write SYNTHETIC Quick-Draw-format files of simple shapes (the offline default data)."""
    from qdkit.synth import write_synth

    paths = write_synth(out_dir, num_classes=num_classes, per_class=per_class, seed=seed, overwrite=overwrite,
                        fmt=fmt)
    click.echo(f"wrote {len(paths)} synthetic class files ({per_class} drawings each) to {out_dir}")


@main.command()
@click.option("--in", "in_dir", type=click.Path(), default="data/raw", show_default=True,
              help="Folder of Quick Draw files, one per class: .npy bitmaps, .ndjson (simplified or raw), "
                   ".bin or Kaggle .csv strokes.")
@click.option("--out", "out_dir", type=click.Path(), default="data", show_default=True)
@click.option("--h5/--no-h5", default=False, help="Also pack the splits into OUT/quickdraw.h5.")
@click.option("--png/--no-png", default=True, show_default=True, help="Write OUT/png/{split}/{class}/*.png.")
@click.option("--train", type=click.IntRange(1), default=2000, show_default=True, help="Drawings per class.")
@click.option("--validation", type=click.IntRange(0), default=400, show_default=True, help="Drawings per class.")
@click.option("--test", type=click.IntRange(0), default=100, show_default=True, help="Drawings per class.")
@click.option("--classes", help="Comma-separated class names (default: every file in --in).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the per-class shuffle.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Rasterizer and PNG writer processes [default: CPU count].")
@click.option("--recognized-only", is_flag=True, help="Stroke files: keep only drawings the game recognized.")
@click.option("--skip-invalid", is_flag=True,
              help="Stroke files: skip bad drawings (and say how many) instead of failing.")
@click.option("--overwrite", is_flag=True, help="Replace existing output.")
def convert(in_dir, out_dir, h5, png, train, validation, test, classes, seed, workers, recognized_only, skip_invalid,
            overwrite) -> None:
    """Split each class into train/validation/test; write PNG folders and/or the HDF5 store."""
    from qdkit.convert import convert as run_convert

    if not h5 and not png:
        raise QdkitError("nothing to do: --no-png without --h5")
    summary = run_convert(
        in_dir, out_dir, h5=h5, png=png, per_class={"train": train, "validation": validation, "test": test},
        classes=_csv(classes), seed=seed, workers=workers, overwrite=overwrite,
        recognized_only=recognized_only, skip_invalid=skip_invalid,
    )
    click.echo(summary)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder for the PNGs.")
@click.option("--size", type=click.IntRange(8, 1024), default=28, show_default=True,
              help="Side in pixels: 28 is exactly what the model sees; larger scales the same recipe.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N drawings of each file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT folder.")
def render(files: tuple[str, ...], out_dir: str, size: int, limit: int | None, overwrite: bool) -> None:
    """Render stroke files (.ndjson, .bin, .csv) to PNGs and a contact sheet: what the model sees."""
    from qdkit.render import render_files

    count, sheet = render_files(list(files), out_dir, size=size, limit=limit, overwrite=overwrite)
    click.echo(f"rendered {count} drawings to {out_dir} (contact sheet: {sheet})")


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
@click.option("--format", "fmt", type=click.Choice(["bitmap", "simplified", "raw", "binary"]), default="bitmap",
              show_default=True, help="28x28 numpy bitmaps, simplified or raw ndjson strokes, or binary strokes.")
@click.option("--base-url", default=None,
              help="Mirror of the dataset root, the folder holding full/ [default: Google's public bucket].")
def download(classes: str, limit: int | None, out_dir: str, fmt: str, base_url: str | None) -> None:
    """Fetch official Quick Draw per-class files (HTTP Range for --limit, resumable)."""
    from qdkit.download import DEFAULT_BASE_URL, download_classes

    paths = download_classes(_csv(classes), out_dir, limit=limit, base_url=base_url or DEFAULT_BASE_URL, fmt=fmt)
    click.echo(f"{len(paths)} files in {out_dir}")


# --- deploy: export / predict / evaluate / visualize ---------------------------------------------

# Options shared by the commands that run an exported model over a store's split.
_model_option = click.option("--model", type=click.Path(dir_okay=False), default=None,
                             help="ONNX model [default: newest artifacts/*/model.onnx].")
_store_option = click.option("--data", type=click.Path(), default=str(DEFAULT_STORE), show_default=True,
                             help="HDF5 store.")
_split_option = click.option("--split", default="test", show_default=True)

def _warn_line(message: str) -> None:
    click.echo(f"qdkit: warning: {message}", err=True)


_overwrite_option = click.option("--overwrite", is_flag=True,
                                 help="Replace existing files qdkit did not write (its own earlier outputs are "
                                      "always replaced).")


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False), required=False)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="The .onnx file to write [default: model.onnx beside the checkpoint].")
@click.option("--opset", type=click.IntRange(13, 20), default=17, show_default=True, help="ONNX opset version.")
@click.option("--int8", is_flag=True,
              help="Also write an int8 model beside it (model.int8.onnx, or OUT's stem + .int8.onnx).")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="With --int8: the store to calibrate on (train split) and gate on (validation split) "
                   "[default: the run's store from metrics.json, else data/quickdraw.h5].")
@click.option("--int8-min-agreement", type=click.FloatRange(0, 1), default=None,
              help="With --int8: least top-1 agreement with the fp32 model on held-out drawings [default: 0.98].")
@click.option("--triton", type=click.Path(file_okay=False), default=None,
              help="Also write a Triton model repository: TRITON/qdkit/{config.pbtxt,labels.txt,1/model.onnx}.")
@_overwrite_option
def export(checkpoint: str | None, out: str | None, opset: int, int8: bool, data: str | None,
           int8_min_agreement: float | None, triton: str | None, overwrite: bool) -> None:
    """Export CHECKPOINT [default: newest artifacts/*/best.pt] to a self-describing ONNX model.

    The graph takes raw uint8 drawings (N, 1, 28, 28), 0 = background, 255 = ink, and returns
    `logits` and `probabilities`; class names and the input convention are in its metadata. The
    file is written only if onnx.checker passes and onnxruntime agrees with PyTorch.

    --int8 also writes a statically quantized copy (int8 weights, uint8 activations, same inputs,
    outputs and metadata), calibrated on drawings of the store's train split and written only if
    its top-1 class agrees with the fp32 model's on held-out drawings.
    """
    from qdkit.export import export_models

    if not int8 and (data is not None or int8_min_agreement is not None):
        raise QdkitError("--data and --int8-min-agreement apply only with --int8")
    if triton:
        from qdkit.triton import check_target, write_repository

        check_target(triton, overwrite=overwrite)  # before anything is written
    result = export_models(checkpoint, out, opset=opset, int8=int8, data=data,
                           int8_min_agreement=int8_min_agreement, overwrite=overwrite, warn=_warn_line)
    click.echo(result.summary())
    if triton:
        click.echo(write_repository(result.fp32.path, triton, overwrite=overwrite).summary())


@main.command()
@click.argument("paths", nargs=-1, required=True)
@_model_option
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout.")
@click.option("--invert", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
              help="yes: images are dark ink on light (inverted to the drawing convention); "
                   "no: light ink on dark; auto: decide per image.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="onnxruntime intra-op threads [default: one per core].")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Decoding processes for images and .ndjson lines [default: CPU count, at most 8].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@click.pass_context
def predict(ctx: click.Context, paths: tuple[str, ...], model: str | None, top_k: int, batch_size: int,
            fmt: str, output: str | None, invert: str, threads: int | None, workers: int | None,
            overwrite: bool) -> None:
    """Top-k classes of images and drawings: files, folders (searched recursively) and glob patterns.

    Any image PIL reads is normalised to a 28x28 drawing (grayscale, ink polarity, cropped and fitted
    like Quick Draw). In a .ndjson file each line is a drawing (a Quick Draw ndjson object or a bare
    stroke list), rasterized exactly as the dataset's bitmaps and named FILE:LINE. An input that
    cannot be read (a bad file or line, a FIFO, a folder without permission) is one warning line and
    the rest go on; the exit code is 1 if any failed. SIGTERM stops it like Ctrl-C (exit code 130).
    """
    from qdkit.formatting import format_predictions
    from qdkit.outfiles import output_file, write_text
    from qdkit.predict import predict_files
    from qdkit.workers import sigterm_as_interrupt

    target = output_file(output, "predictions file", overwrite=overwrite, option="--output") if output else None
    with sigterm_as_interrupt():
        result = predict_files(paths, model, top_k=top_k, batch_size=batch_size, invert=invert, threads=threads,
                               workers=workers, warn=_warn_line)
    text = format_predictions(result.predictions, fmt, top_k)
    n, failed = len(result.predictions), len(result.errors)
    if target:
        write_text(target, text)
        rate = n / result.seconds if result.seconds > 0 else 0.0
        click.echo(f"wrote {n} predictions to {target} ({result.seconds:.2f} s, {rate:,.0f} images/s)", err=True)
    else:
        click.echo(text, nl=False)
    if failed:
        click.echo(f"qdkit: {failed} input(s) failed, {n} predicted", err=True)
        ctx.exit(1)


@main.command()
@_model_option
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="PyTorch checkpoint [default: the one the model's metadata names; its SHA-256 is verified].")
@_store_option
@_split_option
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for evaluation.json and confusion_matrix.png [default: the model's folder].")
@click.option("--batch-size", type=click.IntRange(1), default=512, show_default=True)
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help="Least top-1 agreement between onnxruntime and PyTorch "
                   "[default: 1.0; 0.98 for an int8 model].")
@click.option("--max-prob-delta", type=click.FloatRange(0), default=None,
              help="Largest |Δprobability| allowed [default: 1e-4; for an int8 model reported, not checked].")
@click.option("--threads", type=click.IntRange(1), default=None, help="Threads for both runtimes.")
@_overwrite_option
@click.pass_context
def evaluate(ctx: click.Context, model: str | None, checkpoint: str | None, data: str, split: str, out: str | None,
             batch_size: int, min_agreement: float | None, max_prob_delta: float | None,
             threads: int | None, overwrite: bool) -> None:
    """Run a split through onnxruntime and PyTorch: accuracies, agreement, largest differences.

    Writes evaluation.json and confusion_matrix.png; exits 1 when the two disagree beyond the
    tolerances.
    """
    from qdkit.evaluate import evaluate_model

    report = evaluate_model(model, checkpoint, data, split, out, batch_size=batch_size, min_agreement=min_agreement,
                            max_prob_delta=max_prob_delta, threads=threads, warn=_warn_line, overwrite=overwrite)
    click.echo(report.summary())
    if not report.passed:
        ctx.exit(1)


@main.command()
@_model_option
@_store_option
@_split_option
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="PNG to write [default: predictions.png beside the model].")
@click.option("--count", type=click.IntRange(1, 400), default=16, show_default=True, help="Drawings to show.")
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True, help="Bars per drawing.")
@click.option("--columns", type=click.IntRange(1, 20), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Which random drawings.")
@click.option("--mistakes", is_flag=True, help="Show only misclassified drawings.")
@click.option("--threads", type=click.IntRange(1), default=None)
@_overwrite_option
def visualize(model: str | None, data: str, split: str, out: str | None, count: int, top_k: int, columns: int,
              seed: int, mistakes: bool, threads: int | None, overwrite: bool) -> None:
    """A grid of drawings, each with a bar chart of its top class probabilities (mistakes in red)."""
    from qdkit.visualize import visualize as draw_grid

    _, summary = draw_grid(model, data, split, out, count=count, top_k=top_k, columns=columns, seed=seed,
                           mistakes=mistakes, threads=threads, warn=_warn_line, overwrite=overwrite)
    click.echo(summary)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens the service to other machines.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes sharing the port (each with its own model session and batcher).")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Most drawings per onnxruntime call when concurrent requests are batched.")
@click.option("--max-body-mb", type=click.FloatRange(0.01, 1024), default=4.0, show_default=True,
              help="Largest request body in MiB (larger ones get 413).")
@click.option("--name", default="qdkit", show_default=True, help="The model's name in the v2 API URLs.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="onnxruntime intra-op threads per worker [default: CPU count / workers].")
@click.option("--open", "open_page", is_flag=True, help="Open the drawing page in the default web browser.")
def serve(model: str | None, host: str, port: int, workers: int, max_batch: int, max_body_mb: float,
          name: str, threads: int | None, open_page: bool) -> None:
    """Serve MODEL [default: newest artifacts/*/model.onnx]: the drawing page at /, POST /predict,
    the Open Inference Protocol under /v2, the API docs at /docs. Ctrl-C stops it."""
    from qdkit.serve.server import serve as run_server

    run_server(model, host=host, port=port, workers=workers, max_batch=max_batch,
               max_body=int(max_body_mb * 1024 * 1024), name=name, threads=threads, open_page=open_page,
               echo=lambda line: click.echo(line, err=True))


# --- train / sweep --------------------------------------------------------------------------------


def _recipe(key: str) -> str:
    """The recipes' values of one setting, as --help shows them (qdkit.recipes imports no torch)."""
    from qdkit.recipes import recipe_values

    return recipe_values(key)


def _run_options(sweep: bool = False):
    """The options `train` and `sweep` share (sweep takes lists for --lr and --batch-size)."""
    from qdkit.recipes import OPTIMIZERS, RECIPES, SCHEDULES, SWEEP_BATCH_SIZES, SWEEP_LRS

    opts = [
        click.option("--data", type=click.Path(dir_okay=False), default=None,
                     help="The HDF5 store (qdkit convert --h5) [default: data/quickdraw.h5]."),
        click.option("--model", type=click.Choice(list(RECIPES)), default=None,
                     help="qdnet (default) or seed-cnn (the original architecture, trained its original way)."),
        click.option("--epochs", type=click.IntRange(1), default=None, help=f"[{_recipe('epochs')}]"),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None,
                     help=f"[{_recipe('optimizer')}]"),
        click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
                     help=f"[{_recipe('dropout')}]"),
        click.option("--weight-decay", type=click.FloatRange(0), default=None,
                     help=f"[{_recipe('weight_decay')}]"),
        click.option("--schedule", type=click.Choice(SCHEDULES), default=None,
                     help=f"Learning-rate schedule, per step [{_recipe('schedule')}]."),
        click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=None,
                     help=f"[{_recipe('label_smoothing')}]"),
        click.option("--augment/--no-augment", default=None,
                     help=f"Random affine (rotate, scale, shift, flip) on training batches [{_recipe('augment')}]."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--amp/--no-amp", default=True, show_default=True,
                     help="Mixed precision: bfloat16/float16 autocast on CUDA; bfloat16 on CPUs with native "
                          "bfloat16 (AVX512-BF16/AMX), float32 elsewhere."),
        click.option("--workers", type=click.IntRange(0), default=0, show_default=True,
                     help="0 = read batches in-process (memory-mapped, ~0.1 ms each); N = one background "
                          "thread reading N batches ahead."),
        click.option("--seed", type=int, default=None, help="Model init, shuffling, augmentation [default: 0]."),
        click.option("--patience", type=click.IntRange(0), default=None,
                     help="Stop after N epochs without a better validation accuracy [default: off]."),
        click.option("--runs-dir", type=click.Path(file_okay=False), default=None,
                     help="TensorBoard logs go to RUNS_DIR/<run-name>/ [default: runs; on --resume the run's]."),
        click.option("--artifacts-dir", type=click.Path(file_okay=False), default="artifacts", show_default=True,
                     help="Checkpoints and reports go to ARTIFACTS_DIR/<run-name>/."),
        click.option("--progress/--no-progress", default=True, show_default=True,
                     help="A progress bar per epoch on stderr."),
    ]
    if sweep:
        opts[:0] = [
            click.option("--lr", "lrs", default=",".join(f"{lr:g}" for lr in SWEEP_LRS), show_default=True,
                         help="Comma-separated learning rates (one table each)."),
            click.option("--batch-size", "batch_sizes", default=",".join(map(str, SWEEP_BATCH_SIZES)),
                         show_default=True,
                         help="Comma-separated batch sizes (the columns)."),
            click.option("--name", default=None,
                         help="Sweep folder name [default: <time>-sweep-<model>]; reuse it to continue a sweep."),
        ]
    else:
        opts[:0] = [
            click.option("--lr", type=float, default=None, help=f"Peak learning rate [{_recipe('lr')}]."),
            click.option("--batch-size", type=click.IntRange(1), default=None,
                         help="Global batch size: with several processes each trains on its share "
                              f"[{_recipe('batch_size')}]."),
            click.option("--run-name", default=None,
                         help="[default: <YYYYmmdd-HHMMSS>-<model>-lr<lr>-bs<batch>]; never overwrites a run."),
            click.option("--resume", type=click.Path(dir_okay=False), default=None,
                         help="Continue a run exactly from its last.pt (its settings are kept)."),
        ]

    def decorate(f):
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


def _train_numbers(value: str, kind: type, option: str) -> list:
    items = _csv(value) or []
    try:
        numbers = [kind(v) for v in items]
    except ValueError as err:
        raise QdkitError(f"{option} {value!r}: expected comma-separated {kind.__name__} values") from err
    if not numbers or any(n <= 0 for n in numbers):
        raise QdkitError(f"{option} {value!r}: expected positive values")
    return numbers


def _given_options(ctx: click.Context, skip: set[str]) -> list[str]:
    """The options given on the command line (defaults left out), as arguments again: what the
    processes `train --nproc` starts receive."""
    from click.core import ParameterSource

    args: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in skip:
            continue
        if ctx.get_parameter_source(param.name) in (None, ParameterSource.DEFAULT):
            continue
        value = ctx.params[param.name]
        if param.is_bool_flag:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return args


@main.command()
@_run_options()
@click.option("--nproc", type=click.IntRange(1), default=None,
              help="Train in N processes on this machine with DistributedDataParallel (starts torchrun): one "
                   "per GPU on CUDA, or N CPU processes sharing the cores. --batch-size stays the global batch.")
@click.pass_context
def train(ctx: click.Context, nproc: int | None, **options) -> None:
    """Train a model on the HDF5 store: TensorBoard in runs/<run>/, checkpoints in artifacts/<run>/.

    Settings not given take the model's recipe: `qdkit train` is the best default measured on real
    drawings, `qdkit train --model seed-cnn` the original project's best setting. Ctrl-C saves
    last.pt and prints the command that resumes the run exactly.

    Several processes: `--nproc N` on this machine; across M machines run `torchrun --nnodes M
    --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m qdkit train ...` on each
    (README: Scaling out). --batch-size is the GLOBAL batch, split across the processes; only the
    first process writes files and prints.
    """
    import os

    from qdkit.train import EXIT_OK, TrainConfig, TrainingInterrupted, exit_code, summary
    from qdkit.train import train as run_train

    config = TrainConfig(**options)
    if nproc is not None and nproc > 1:
        from qdkit.launcher import launch
        from qdkit.train import check_run

        if "RANK" in os.environ:
            raise QdkitError("--nproc: this process was started by torchrun already; drop --nproc")
        check_run(config, world_size=nproc)  # bad input is one line, before any process starts
        ctx.exit(launch(nproc, ["train", *_given_options(ctx, skip={"nproc"})]))

    rank = int(os.environ.get("RANK", "0"))  # under torchrun; rank 0 speaks for the job
    if rank != 0:
        import warnings

        warnings.simplefilter("ignore")
    try:
        metrics = run_train(config)
    except TrainingInterrupted as e:
        if rank == 0:
            click.echo(f"qdkit: {e}", err=True)
        ctx.exit(exit_code(e))
    except QdkitError as e:
        if rank != 0:  # every rank raised it together (qdkit.distributed.agree); rank 0 prints it
            ctx.exit(exit_code(e))
        raise
    except KeyboardInterrupt as e:
        if rank == 0:
            click.echo("qdkit: interrupted outside the training loop (or Ctrl-C twice); nothing more was saved",
                       err=True)
        ctx.exit(exit_code(e))
    if rank == 0:
        click.echo(summary(metrics))
    ctx.exit(EXIT_OK)


@main.command()
@_run_options(sweep=True)
@click.pass_context
def sweep(ctx: click.Context, lrs: str, batch_sizes: str, name: str | None, **options) -> None:
    """Train every (learning rate, batch size) pair and write a markdown table of test accuracy.

    The original grid is `qdkit sweep --model seed-cnn` (lr 1e-2,1e-3,1e-4 x batch 32..512). Runs go
    to artifacts/<name>/ and runs/<name>/ (one TensorBoard folder for the grid); the table to
    artifacts/<name>/sweep.md. Run it again with --name to continue an interrupted sweep.
    """
    from qdkit.sweep import sweep as run_sweep
    from qdkit.train import TrainConfig, TrainingInterrupted, exit_code

    lr_list = _train_numbers(lrs, float, "--lr")
    bs_list = _train_numbers(batch_sizes, int, "--batch-size")
    try:
        result = run_sweep(lr_list, bs_list, TrainConfig(**options), name=name)
    except TrainingInterrupted as e:
        click.echo(f"qdkit: {e}", err=True)
        ctx.exit(exit_code(e))
    click.echo(result.table)
    click.echo(f"wrote {result.folder / 'sweep.md'}")
