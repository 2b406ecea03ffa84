"""Training commands: train, sweep."""

from __future__ import annotations

import click

from qdkit.cli.base import csv_list, main
from qdkit.errors import QdkitError

# --- train / sweep --------------------------------------------------------------------------------


def _recipe(key: str) -> str:
    """The recipes' values of one setting, as --help shows them (qdkit.train.recipes imports no torch)."""
    from qdkit.train.recipes import recipe_values

    return recipe_values(key)


def _run_options(sweep: bool = False):
    """The options `train` and `sweep` share (sweep takes lists for --lr and --batch-size), in
    --help's order: what names the run (or the sweep), the recipe, where and how it runs."""
    opts = (_sweep_options() if sweep else _single_run_options()) + _recipe_options() + _runtime_options()

    def decorate(f):
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


def _single_run_options() -> list:
    return [
        click.option("--lr", type=float, default=None, help=f"Peak learning rate [{_recipe('lr')}]."),
        click.option(
            "--batch-size",
            type=click.IntRange(1),
            default=None,
            help=f"Global batch size: with several processes each trains on its share [{_recipe('batch_size')}].",
        ),
        click.option(
            "--run-name",
            default=None,
            help="[default: <YYYYmmdd-HHMMSS>-<model>-lr<lr>-bs<batch>]; never overwrites a run.",
        ),
        click.option(
            "--resume",
            type=click.Path(dir_okay=False),
            default=None,
            help="Continue a run exactly from its last.pt (its settings are kept).",
        ),
    ]


def _sweep_options() -> list:
    from qdkit.train.recipes import SWEEP_BATCH_SIZES, SWEEP_LRS

    return [
        click.option(
            "--lr",
            "lrs",
            default=",".join(f"{lr:g}" for lr in SWEEP_LRS),
            show_default=True,
            help="Comma-separated learning rates (one table each).",
        ),
        click.option(
            "--batch-size",
            "batch_sizes",
            default=",".join(map(str, SWEEP_BATCH_SIZES)),
            show_default=True,
            help="Comma-separated batch sizes (the columns).",
        ),
        click.option(
            "--name",
            default=None,
            help="Sweep folder name [default: <time>-sweep-<model>]; reuse it to continue a sweep.",
        ),
    ]


def _recipe_options() -> list:
    """The settings a model's recipe fills where they are not given."""
    from qdkit.models import MODELS
    from qdkit.train.recipes import OPTIMIZERS, SCHEDULES

    return [
        click.option(
            "--data",
            type=click.Path(dir_okay=False),
            default=None,
            help="The HDF5 store (qdkit convert --h5) [default: data/quickdraw.h5].",
        ),
        click.option(
            "--model",
            type=click.Choice(list(MODELS)),
            default=None,
            help="qdnet (default) or seed-cnn (the original architecture, trained its original way).",
        ),
        click.option("--epochs", type=click.IntRange(1), default=None, help=f"[{_recipe('epochs')}]"),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help=f"[{_recipe('optimizer')}]"),
        click.option(
            "--dropout", type=click.FloatRange(0, 1, max_open=True), default=None, help=f"[{_recipe('dropout')}]"
        ),
        click.option("--weight-decay", type=click.FloatRange(0), default=None, help=f"[{_recipe('weight_decay')}]"),
        click.option(
            "--schedule",
            type=click.Choice(SCHEDULES),
            default=None,
            help=f"Learning-rate schedule, per step [{_recipe('schedule')}].",
        ),
        click.option(
            "--label-smoothing",
            type=click.FloatRange(0, 1, max_open=True),
            default=None,
            help=f"[{_recipe('label_smoothing')}]",
        ),
        click.option(
            "--augment/--no-augment",
            default=None,
            help=f"Random affine (rotate, scale, shift, flip) on training batches [{_recipe('augment')}].",
        ),
    ]


def _runtime_options() -> list:
    """Where and how the run goes: device, precision, reading, seed, stopping, output folders."""
    return [
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option(
            "--amp/--no-amp",
            default=True,
            show_default=True,
            help="Mixed precision: bfloat16/float16 autocast on CUDA; bfloat16 on CPUs with native "
            "bfloat16 (AVX512-BF16/AMX), float32 elsewhere.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(0),
            default=0,
            show_default=True,
            help="0 = read batches in-process (memory-mapped, ~0.1 ms each); N = one background "
            "thread reading N batches ahead.",
        ),
        click.option("--seed", type=int, default=None, help="Model init, shuffling, augmentation [default: 0]."),
        click.option(
            "--patience",
            type=click.IntRange(0),
            default=None,
            help="Stop after N epochs without a better validation accuracy [default: off].",
        ),
        click.option(
            "--runs-dir",
            type=click.Path(file_okay=False),
            default=None,
            help="TensorBoard logs go to RUNS_DIR/<run-name>/ [default: runs; on --resume the run's].",
        ),
        click.option(
            "--artifacts-dir",
            type=click.Path(file_okay=False),
            default="artifacts",
            show_default=True,
            help="Checkpoints and reports go to ARTIFACTS_DIR/<run-name>/.",
        ),
        click.option(
            "--progress/--no-progress", default=True, show_default=True, help="A progress bar per epoch on stderr."
        ),
    ]


def _train_numbers(value: str, kind: type, option: str) -> list:
    items = csv_list(value) or []
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
@click.option(
    "--nproc",
    type=click.IntRange(1),
    default=None,
    help="Train in N processes on this machine with DistributedDataParallel (starts torchrun): one "
    "per GPU on CUDA, or N CPU processes sharing the cores. --batch-size stays the global batch.",
)
@click.pass_context
def train(ctx: click.Context, nproc: int | None, **options) -> None:
    """Train a model on the HDF5 store: TensorBoard in runs/<run>/, checkpoints in artifacts/<run>/.

    Settings not given take the model's recipe: `qdkit train` is the best default measured on real
    drawings, `qdkit train --model seed-cnn` the original project's best setting. Ctrl-C saves
    last.pt and prints the command that resumes the run exactly.

    Several processes: `--nproc N` on this machine; across M machines run `torchrun --nnodes M
    --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m qdkit train ...` on each
    (docs/scaling.md). --batch-size is the GLOBAL batch, split across the processes; only the
    first process writes files and prints.
    """
    import os

    from qdkit.train import EXIT_OK, TrainConfig, TrainingInterrupted, exit_code, summary
    from qdkit.train import train as run_train

    config = TrainConfig(**options)
    if nproc is not None and nproc > 1:
        from qdkit.train import check_run
        from qdkit.train.launcher import launch

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
        if rank != 0:  # every rank raised it together (qdkit.train.distributed.agree); rank 0 prints it
            ctx.exit(exit_code(e))
        raise
    except KeyboardInterrupt as e:
        if rank == 0:
            click.echo(
                "qdkit: interrupted outside the training loop (or Ctrl-C twice); nothing more was saved", err=True
            )
        ctx.exit(exit_code(e))
    if rank == 0:
        click.echo(summary(metrics))
        click.echo(f"next: qdkit export {metrics['best_checkpoint']}")
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
    from qdkit.train import TrainConfig, TrainingInterrupted, exit_code
    from qdkit.train.sweep import sweep as run_sweep

    lr_list = _train_numbers(lrs, float, "--lr")
    bs_list = _train_numbers(batch_sizes, int, "--batch-size")
    try:
        result = run_sweep(lr_list, bs_list, TrainConfig(**options), name=name)
    except TrainingInterrupted as e:
        click.echo(f"qdkit: {e}", err=True)
        ctx.exit(exit_code(e))
    click.echo(result.table)
    click.echo(f"wrote {result.folder / 'sweep.md'}")
