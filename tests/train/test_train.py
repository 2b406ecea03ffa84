"""The trainer: it learns, its checkpoints rebuild the model, resume is exact, TensorBoard holds the
scalars, the NaN guard fires, a sweep writes its table, and bad input is one line with exit 2."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from _training import on_training_forward, train_config
from click.testing import CliRunner

import qdkit.train.devices as devices
import qdkit.train.recipes as recipes
from qdkit.checkpoint import load_checkpoint, model_from_checkpoint
from qdkit.cli import main
from qdkit.data.store import StoreWriter, open_store
from qdkit.errors import QdkitError
from qdkit.train import TrainConfig, TrainingInterrupted, train
from qdkit.train.devices import choose_device
from qdkit.train.evaluation import evaluate
from qdkit.train.loop import Trainer
from qdkit.train.reporter import reserve_run

SCALARS = {
    "loss/train",
    "loss/validation",
    "accuracy/train",
    "accuracy/validation",
    "learning_rate",
    "throughput/img_per_s",
}


def _config(store_path: Path, root: Path, **kw) -> TrainConfig:
    return train_config(store_path, root, **{"epochs": 2, "batch_size": 32, **kw})


@pytest.fixture(scope="module")
def trained(store_path, tmp_path_factory):
    """One default-recipe qdnet run of two epochs, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("trained")
    metrics = train(_config(store_path, root, run_name="two-epochs"), log=lambda s: None)
    return root, metrics


def test_two_epochs_learn_and_write_reports(trained, store_path):
    root, m = trained
    art = root / "artifacts" / "two-epochs"
    assert m["test_accuracy"] > 0.7, m  # 4 classes: chance is 0.25
    assert m["epochs"] == 2 and m["model"] == "qdnet" and m["batch_size"] == 32
    on_disk = json.loads((art / "metrics.json").read_text())
    for key in (
        "test_accuracy",
        "best_val_accuracy",
        "epochs",
        "train_seconds",
        "model",
        "lr",
        "batch_size",
        "run_name",
        "seed",
        "data",
        "classes",
    ):
        assert key in on_disk, key
    assert on_disk["test_accuracy"] == pytest.approx(m["test_accuracy"])
    assert on_disk["classes"] == open_store(store_path).class_names
    rows = list(csv.DictReader((art / "results.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "img_per_s"} <= set(rows[0])


def test_checkpoints_load_safely_and_rebuild_the_model(trained, store_path):
    root, m = trained
    art = root / "artifacts" / "two-epochs"
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(art / name, map_location="cpu", weights_only=True)  # no code is unpickled
        assert ckpt["model_name"] == "qdnet" and ckpt["class_names"] == m["classes"]
        assert ckpt["input"]["dtype"] == "uint8" and ckpt["model_kwargs"] == TrainConfig().resolved().model_kwargs()
        assert "val_accuracy" in ckpt["metrics"] and ckpt["epoch"] >= 1
    last = load_checkpoint(art / "last.pt")
    for key in ("optimizer", "scheduler", "scaler", "rng", "progress"):
        assert key in last, key
    assert "optimizer" not in load_checkpoint(art / "best.pt")
    model, _ = model_from_checkpoint(art / "best.pt")
    _, acc = evaluate(model, open_store(store_path).split("test"), torch.device("cpu"))
    assert acc == pytest.approx(m["test_accuracy"])


def test_tensorboard_holds_the_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, m = trained
    acc = EventAccumulator(str(root / "runs" / "two-epochs"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert SCALARS | {"accuracy/test"} <= tags
    assert [e.step for e in acc.Scalars("accuracy/validation")] == [1, 2]
    assert acc.Scalars("accuracy/test")[0].value == pytest.approx(m["test_accuracy"])
    # add_hparams wrote the HParams plugin data into the same run folder.
    assert acc.PluginTagToContent("hparams")


def _interrupt_at(step_to_stop: int):
    """Send a real SIGINT to ourselves during the given global step (1-based): it ends after that step."""
    return on_training_forward(lambda n, args: os.kill(os.getpid(), signal.SIGINT) if n == step_to_stop else None)


@pytest.mark.parametrize("stop_step", [5, 25], ids=["mid-epoch-1", "end-of-epoch-1"])
def test_resume_continues_exactly(store_path, tmp_path, stop_step):
    # 800 training drawings / batch 32 = 25 steps per epoch.
    straight = train(_config(store_path, tmp_path, run_name="straight"), log=lambda s: None)
    with _interrupt_at(stop_step), pytest.raises(TrainingInterrupted, match="resume with: qdkit train --resume") as err:
        train(_config(store_path, tmp_path, run_name="cut"), log=lambda s: None)
    last = tmp_path / "artifacts" / "cut" / "last.pt"
    assert err.value.checkpoint == last
    saved = load_checkpoint(last)
    assert (saved["epoch"], saved["progress"]["step_in_epoch"]) == divmod(stop_step, 25)
    resumed = train(
        TrainConfig(resume=str(last), runs_dir=str(tmp_path / "runs"), progress=False, device="cpu", amp=False),
        log=lambda s: None,
    )
    assert resumed["run_name"] == "cut" and resumed["epochs"] == 2
    a = load_checkpoint(tmp_path / "artifacts" / "straight" / "last.pt")
    b = load_checkpoint(last)
    for key, value in a["model_state"].items():
        torch.testing.assert_close(b["model_state"][key], value, rtol=0, atol=0, msg=key)
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert resumed["best_val_accuracy"] == straight["best_val_accuracy"]
    rows = list(csv.DictReader((tmp_path / "artifacts" / "cut" / "results.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]


def test_resume_keeps_the_run_settings(trained):
    root, _ = trained
    last = root / "artifacts" / "two-epochs" / "last.pt"
    with pytest.raises(QdkitError, match="--lr 0.1: the run being resumed .* used 0.003"):
        train(TrainConfig(resume=str(last), lr=0.1, progress=False))
    with pytest.raises(QdkitError, match="no training state"):
        train(TrainConfig(resume=str(last.with_name("best.pt")), progress=False))


def test_existing_run_folder_is_never_overwritten(trained, store_path):
    root, _ = trained
    with pytest.raises(QdkitError, match="run folder already exists"):
        Trainer(_config(store_path, root, run_name="two-epochs"))
    cfg = _config(store_path, root).resolved()
    first, second = reserve_run(cfg), reserve_run(cfg)  # same second, same settings
    assert first != second and second.startswith(first)
    assert first.endswith("-qdnet-lr3e-03-bs32")


def _nan_from(step: int):
    """Feed NaN images to every training step from `step` on (1-based, global)."""
    return on_training_forward(lambda n, args: (torch.full_like(args[0], float("nan")),) if n >= step else None)


def test_nan_guard_keeps_the_last_good_checkpoint(store_path, tmp_path):
    with (
        _nan_from(26),
        pytest.raises(  # epoch 2 (25 steps per epoch)
            QdkitError, match=r"diverged.*epoch 2.*last good checkpoint is .*last.pt \(epoch 1\)"
        ),
    ):
        train(_config(store_path, tmp_path, run_name="nan", epochs=3), log=lambda s: None)
    last = load_checkpoint(tmp_path / "artifacts" / "nan" / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model_state"].values() if v.is_floating_point())


def test_absurd_lr_stops_with_one_line(store_path, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            str(store_path),
            "--model",
            "seed-cnn",
            "--optimizer",
            "sgd",
            "--lr",
            "1e6",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--runs-dir",
            str(tmp_path / "r"),
            "--artifacts-dir",
            str(tmp_path / "a"),
            "--no-progress",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("qdkit: error: training diverged") and "Traceback" not in result.output


def test_choose_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)
    assert choose_device("auto", True) == (torch.device("cpu"), None)
    assert choose_device("cpu", True) == (torch.device("cpu"), None)
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)
    assert choose_device("cpu", True) == (torch.device("cpu"), torch.bfloat16)
    assert choose_device("cpu", False) == (torch.device("cpu"), None)
    with pytest.raises(QdkitError, match="CUDA is not available"):
        choose_device("cuda", True)
    with pytest.raises(QdkitError, match="--device 'tpu'"):
        choose_device("tpu", True)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_device("auto", True) == (torch.device("cuda"), torch.bfloat16)
    assert choose_device("cuda:1", True) == (torch.device("cuda", 1), torch.bfloat16)
    assert choose_device("auto", False) == (torch.device("cuda"), None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_device("cuda", True) == (torch.device("cuda"), torch.float16)
    assert choose_device("cpu", True)[0] == torch.device("cpu")


def test_cpu_amp_path_trains(store_path, tmp_path, monkeypatch):
    """The CPU bfloat16 autocast path (where the CPU has it) trains and checkpoints float32 weights."""
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)
    m = train(
        _config(
            store_path,
            tmp_path,
            run_name="bf16",
            amp=True,
            epochs=1,
            batch_size=64,
            model="seed-cnn",
            lr=3e-3,
            workers=2,
        ),
        log=lambda s: None,
    )
    assert m["precision"] == "bfloat16 autocast" and m["test_accuracy"] > 0.4
    state = load_checkpoint(tmp_path / "artifacts" / "bf16" / "best.pt")["model_state"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_augment_and_schedule():
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 255.0
    g = torch.Generator().manual_seed(0)
    y = recipes.augment_batch(x, g)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 255.0 + 1e-3 and not torch.equal(y[0], y[1])
    assert (y[:, :, :3, :] == 0).all()  # background stays background
    still = recipes.augment_batch(x, g, {"rotate_deg": 0.0, "scale": (1.0, 1.0), "translate_px": 0.0, "hflip": 0.0})
    torch.testing.assert_close(still, x)
    f = recipes.lr_factor("onecycle", 100)
    assert f(0) == pytest.approx(0.04 + 0.96 / 25) and f(24) == pytest.approx(1.0) and f(99) < 0.01
    assert recipes.lr_factor("constant", 100)(57) == 1.0
    c = recipes.lr_factor("cosine", 100)
    assert c(4) == pytest.approx(1.0) and c(99) < 0.01


def test_sweep_writes_its_table(store_path, tmp_path):
    from qdkit.train.sweep import sweep

    base = _config(store_path, tmp_path, model="seed-cnn", epochs=1)
    result = sweep([3e-3, 1e-3], [64, 128], base, name="grid", log=lambda s: None)
    table = (tmp_path / "artifacts" / "grid" / "sweep.md").read_text()
    assert table == result.table
    assert "### Learning rate 0.003" in table and "### Learning rate 0.001" in table
    assert table.count("| Batch size | 64 | 128 |") == 2 and table.count("%") >= 4
    runs = sorted(p.name for p in (tmp_path / "runs" / "grid").iterdir())
    assert runs == ["lr1e-03-bs128", "lr1e-03-bs64", "lr3e-03-bs128", "lr3e-03-bs64"]
    assert all(list((tmp_path / "runs" / "grid" / r).glob("events.out.tfevents.*")) for r in runs)
    figures = sorted(p.name for p in (tmp_path / "artifacts" / "grid").glob("lr*.png"))  # one per lr, beside sweep.md
    assert figures == ["lr1e-03.png", "lr3e-03.png"]
    assert all((tmp_path / "artifacts" / "grid" / r / "curves.png").is_file() for r in runs)
    # Running the same sweep again keeps the finished runs (nothing is retrained or overwritten).
    again = sweep([3e-3, 1e-3], [64, 128], base, name="grid", log=lambda s: None)
    assert again.table == result.table


def test_cli_train_as_written(store_path, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--lr",
            "1e-4",
            "--batch-size",
            "64",
            "--data",
            str(store_path),
            "--epochs",
            "1",
            "--model",
            "seed-cnn",
            "--run-name",
            "cli",
            "--runs-dir",
            str(tmp_path / "r"),
            "--artifacts-dir",
            str(tmp_path / "a"),
            "--no-progress",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "run        cli" in result.output and "accuracy   test" in result.output
    m = json.loads((tmp_path / "a" / "cli" / "metrics.json").read_text())
    assert (m["lr"], m["batch_size"], m["model"], m["optimizer"]) == (1e-4, 64, "seed-cnn", "adam")


def _one_class_store(path: Path) -> Path:
    images = np.zeros((4, 28, 28), np.uint8)
    w = StoreWriter(path, ["cat"], {"train": 4, "validation": 4, "test": 4}, {"seed": 0})
    for split in ("train", "validation", "test"):
        w.append(split, images, 0, np.arange(4))
    w.close()
    return path


BAD_INPUT = {  # case: (arguments, what the one line must say)
    "missing-store": (lambda tmp, store: ["--data", str(tmp / "nope.h5")], "no such store"),
    "batch-too-big": (
        lambda tmp, store: ["--data", str(store), "--batch-size", "5000"],
        "larger than the 800 training drawings",
    ),
    "one-class": (lambda tmp, store: ["--data", str(_one_class_store(tmp / "one.h5"))], "training needs at least two"),
    "bad-lr": (lambda tmp, store: ["--data", str(store), "--lr", "-1"], "--lr -1.0: must be a positive number"),
    "bad-seed": (lambda tmp, store: ["--data", str(store), "--seed", "-1"], "--seed -1: must be in [0, 2**63)"),
    "bad-run-name": (lambda tmp, store: ["--data", str(store), "--run-name", "../escape"], "--run-name '../escape'"),
    "resume-missing": (lambda tmp, store: ["--resume", str(tmp / "gone" / "last.pt")], "no such checkpoint file"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_cli_bad_input_is_one_line(store_path, tmp_path, case):
    make_args, expect = BAD_INPUT[case]
    result = CliRunner().invoke(
        main,
        [
            "train",
            *make_args(tmp_path, store_path),
            "--runs-dir",
            str(tmp_path / "r"),
            "--artifacts-dir",
            str(tmp_path / "a"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qdkit: error:") and expect in lines[0], result.output
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_cli_ctrl_c_saves_and_prints_the_resume_command(store_path, tmp_path):
    with _interrupt_at(3):
        result = CliRunner().invoke(
            main,
            [
                "train",
                "--data",
                str(store_path),
                "--model",
                "seed-cnn",
                "--epochs",
                "1",
                "--run-name",
                "cc",
                "--runs-dir",
                str(tmp_path / "r"),
                "--artifacts-dir",
                str(tmp_path / "a"),
                "--no-progress",
                "--device",
                "cpu",
            ],
        )
    assert result.exit_code == 130, result.output
    last = tmp_path / "a" / "cc" / "last.pt"
    assert f"resume with: qdkit train --resume {last}" in result.output
    assert load_checkpoint(last)["progress"]["step_in_epoch"] == 3


def test_cli_sweep_rejects_bad_lists(store_path, tmp_path):
    result = CliRunner().invoke(main, ["sweep", "--data", str(store_path), "--lr", "1e-3,fast"])
    assert result.exit_code == 2 and "expected comma-separated float" in result.output
    result = CliRunner().invoke(
        main, ["sweep", "--data", str(store_path), "--batch-size", "64,9999", "--artifacts-dir", str(tmp_path / "a")]
    )
    assert result.exit_code == 2 and "9999: larger than the 800" in result.output
    result = CliRunner().invoke(
        main,
        [
            "sweep",
            "--data",
            str(store_path),
            "--model",
            "seed-cnn",
            "--lr",
            "3e-3",
            "--batch-size",
            "64",
            "--epochs",
            "1",
            "--name",
            "s",
            "--runs-dir",
            str(tmp_path / "r"),
            "--artifacts-dir",
            str(tmp_path / "a"),
            "--no-progress",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "### Learning rate 0.003" in result.output and (tmp_path / "a" / "s" / "sweep.md").is_file()
