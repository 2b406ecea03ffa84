"""Deploy commands: export, predict, evaluate, visualize, serve."""

from __future__ import annotations

import click

from qdkit.cli.base import main
from qdkit.constants import DEFAULT_STORE
from qdkit.errors import QdkitError

# --- deploy: export / predict / evaluate / visualize ---------------------------------------------

# Options shared by the commands that run an exported model over a store's split.
_model_option = click.option(
    "--model",
    type=click.Path(dir_okay=False),
    default=None,
    help="ONNX model [default: newest artifacts/*/model.onnx].",
)
_store_option = click.option(
    "--data", type=click.Path(), default=str(DEFAULT_STORE), show_default=True, help="HDF5 store."
)
_split_option = click.option("--split", default="test", show_default=True)


def _warn_line(message: str) -> None:
    click.echo(f"qdkit: warning: {message}", err=True)


_overwrite_option = click.option(
    "--overwrite",
    is_flag=True,
    help="Replace existing files qdkit did not write (its own earlier outputs are always replaced).",
)


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False), required=False)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="The .onnx file to write [default: model.onnx beside the checkpoint].",
)
@click.option("--opset", type=click.IntRange(13, 20), default=17, show_default=True, help="ONNX opset version.")
@click.option(
    "--int8", is_flag=True, help="Also write an int8 model beside it (model.int8.onnx, or OUT's stem + .int8.onnx)."
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --int8: the store to calibrate on (train split) and gate on (validation split) "
    "[default: the run's store from metrics.json, else data/quickdraw.h5].",
)
@click.option(
    "--int8-min-agreement",
    type=click.FloatRange(0, 1),
    default=None,
    help="With --int8: least top-1 agreement with the fp32 model on held-out drawings [default: 0.98].",
)
@click.option(
    "--triton",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write a Triton model repository: TRITON/qdkit/{config.pbtxt,labels.txt,1/model.onnx} "
    "and the strokes ensemble TRITON/qdkit_strokes (see docs/serve.md).",
)
@click.option(
    "--triton-backend",
    type=click.Choice(["onnxruntime", "python"]),
    default="onnxruntime",
    show_default=True,
    help="With --triton: run the model on Triton's onnxruntime backend (NGC containers), or in its "
    "Python backend through onnxruntime (what a pip-installed Triton, `qdkit triton`, runs).",
)
@_overwrite_option
def export(
    checkpoint: str | None,
    out: str | None,
    opset: int,
    int8: bool,
    data: str | None,
    int8_min_agreement: float | None,
    triton: str | None,
    triton_backend: str,
    overwrite: bool,
) -> None:
    """Export CHECKPOINT [default: newest artifacts/*/best.pt] to a self-describing ONNX model.

    The graph takes raw uint8 drawings (N, 1, 28, 28), 0 = background, 255 = ink, and returns
    `logits` and `probabilities`; class names and the input convention are in its metadata. The
    file is written only if onnx.checker passes and onnxruntime agrees with PyTorch.

    --int8 also writes a statically quantized copy (int8 weights, uint8 activations, same inputs,
    outputs and metadata), calibrated on drawings of the store's train split and written only if
    its top-1 class agrees with the fp32 model's on held-out drawings.
    """
    from qdkit.deploy.export import export_models

    if not int8 and (data is not None or int8_min_agreement is not None):
        raise QdkitError("--data and --int8-min-agreement apply only with --int8")
    if triton_backend != "onnxruntime" and not triton:
        raise QdkitError("--triton-backend applies only with --triton")
    if triton:
        from qdkit.deploy.triton import check_target, write_repository

        check_target(triton, overwrite=overwrite, backend=triton_backend)  # before anything is written
    result = export_models(
        checkpoint,
        out,
        opset=opset,
        int8=int8,
        data=data,
        int8_min_agreement=int8_min_agreement,
        overwrite=overwrite,
        warn=_warn_line,
    )
    click.echo(result.summary())
    if triton:
        click.echo(write_repository(result.fp32.path, triton, overwrite=overwrite, backend=triton_backend).summary())
    click.echo(
        f"next: qdkit predict --model {result.fp32.path} IMAGES_OR_NDJSON, or: qdkit serve {result.fp32.path} --open"
    )


@main.command()
@click.argument("paths", nargs=-1, required=True)
@_model_option
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout.")
@click.option(
    "--invert",
    type=click.Choice(["auto", "yes", "no"]),
    default="auto",
    show_default=True,
    help="yes: images are dark ink on light (inverted to the drawing convention); "
    "no: light ink on dark; auto: decide per image.",
)
@click.option(
    "--threads", type=click.IntRange(1), default=None, help="onnxruntime intra-op threads [default: one per core]."
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="Decoding processes for images and .ndjson lines [default: CPU count, at most 8].",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@click.pass_context
def predict(
    ctx: click.Context,
    paths: tuple[str, ...],
    model: str | None,
    top_k: int,
    batch_size: int,
    fmt: str,
    output: str | None,
    invert: str,
    threads: int | None,
    workers: int | None,
    overwrite: bool,
) -> None:
    """Top-k classes of images and drawings: files, folders (searched recursively) and glob patterns.

    Any image PIL reads is normalised to a 28x28 drawing (grayscale, ink polarity, cropped and fitted
    like Quick Draw). In a .ndjson file each line is a drawing (a Quick Draw ndjson object or a bare
    stroke list), rasterized exactly as the dataset's bitmaps and named FILE:LINE. An input that
    cannot be read (a bad file or line, a FIFO, a folder without permission) is one warning line and
    the rest go on; the exit code is 1 if any failed. SIGTERM stops it like Ctrl-C (exit code 130).
    """
    from qdkit.cli.formatting import format_predictions
    from qdkit.inference.batch import predict_files
    from qdkit.inference.labels import folder_accuracy, prediction_summary
    from qdkit.outputs import output_file, write_text
    from qdkit.workers import sigterm_as_interrupt

    target = output_file(output, "predictions file", overwrite=overwrite, option="--output") if output else None
    with sigterm_as_interrupt():
        result = predict_files(
            paths,
            model,
            top_k=top_k,
            batch_size=batch_size,
            invert=invert,
            threads=threads,
            workers=workers,
            warn=_warn_line,
        )
    if model is None and result.model is not None:
        click.echo(f"model: {result.model} (the newest export; --model picks another)", err=True)
    text = format_predictions(result.predictions, fmt, top_k)
    n, failed = len(result.predictions), len(result.errors)
    if target:
        write_text(target, text)
        rate = n / result.seconds if result.seconds > 0 else 0.0
        click.echo(f"wrote {n} predictions to {target} ({result.seconds:.2f} s, {rate:,.0f} images/s)", err=True)
        click.echo(prediction_summary(result.predictions), err=True)
    else:
        click.echo(text, nl=False)
    # Beside a table or a written file; json and csv on stdout are for programs and stay alone.
    accuracy = folder_accuracy(result.predictions, result.class_names) if target or fmt == "table" else None
    if accuracy is not None:
        click.echo(accuracy.summary(), err=True)
    if failed:
        click.echo(f"qdkit: {failed} input(s) failed, {n} predicted", err=True)
        ctx.exit(1)


@main.command()
@_model_option
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    default=None,
    help="PyTorch checkpoint [default: the one the model's metadata names; its SHA-256 is verified].",
)
@_store_option
@_split_option
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for evaluation.json and confusion_matrix.png [default: the model's folder].",
)
@click.option("--batch-size", type=click.IntRange(1), default=512, show_default=True)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    default=None,
    help="Least top-1 agreement between onnxruntime and PyTorch [default: 1.0; 0.98 for an int8 model].",
)
@click.option(
    "--max-prob-delta",
    type=click.FloatRange(0),
    default=None,
    help="Largest |Δprobability| allowed [default: 1e-4; for an int8 model reported, not checked].",
)
@click.option("--threads", type=click.IntRange(1), default=None, help="Threads for both runtimes.")
@_overwrite_option
@click.pass_context
def evaluate(
    ctx: click.Context,
    model: str | None,
    checkpoint: str | None,
    data: str,
    split: str,
    out: str | None,
    batch_size: int,
    min_agreement: float | None,
    max_prob_delta: float | None,
    threads: int | None,
    overwrite: bool,
) -> None:
    """Run a split through onnxruntime and PyTorch: accuracies, agreement, largest differences.

    Writes evaluation.json and confusion_matrix.png; exits 1 when the two disagree beyond the
    tolerances.
    """
    from qdkit.deploy.evaluate import evaluate_model

    report = evaluate_model(
        model,
        checkpoint,
        data,
        split,
        out,
        batch_size=batch_size,
        min_agreement=min_agreement,
        max_prob_delta=max_prob_delta,
        threads=threads,
        warn=_warn_line,
        overwrite=overwrite,
    )
    click.echo(report.summary())
    if not report.passed:
        ctx.exit(1)


@main.command()
@_model_option
@_store_option
@_split_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="PNG to write [default: predictions.png beside the model].",
)
@click.option("--count", type=click.IntRange(1, 400), default=16, show_default=True, help="Drawings to show.")
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True, help="Bars per drawing.")
@click.option("--columns", type=click.IntRange(1, 20), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Which random drawings.")
@click.option("--mistakes", is_flag=True, help="Show only misclassified drawings.")
@click.option("--threads", type=click.IntRange(1), default=None)
@_overwrite_option
def visualize(
    model: str | None,
    data: str,
    split: str,
    out: str | None,
    count: int,
    top_k: int,
    columns: int,
    seed: int,
    mistakes: bool,
    threads: int | None,
    overwrite: bool,
) -> None:
    """A grid of drawings, each with a bar chart of its top class probabilities (mistakes in red)."""
    from qdkit.deploy.visualize import visualize as draw_grid

    _, summary = draw_grid(
        model,
        data,
        split,
        out,
        count=count,
        top_k=top_k,
        columns=columns,
        seed=seed,
        mistakes=mistakes,
        threads=threads,
        warn=_warn_line,
        overwrite=overwrite,
    )
    click.echo(summary)
