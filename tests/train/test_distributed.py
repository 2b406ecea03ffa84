"""Distributed training: `qdkit train --nproc 2` really starts two CPU processes (gloo on 127.0.0.1)
through torchrun. Their shards are disjoint and cover the split, only rank 0 writes, the model
learns, the checkpoint loads in a single process, and Ctrl-C + --resume continue the run exactly."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import qdkit.train.distributed as D
import qdkit.train.launcher as L
from qdkit.checkpoint import load_checkpoint, model_from_checkpoint
from qdkit.cli import main
from qdkit.data.loader import BatchLoader
from qdkit.data.store import open_store
from qdkit.errors import QdkitError
from qdkit.train import EXIT_ERROR, EXIT_INTERRUPTED, TrainConfig, check_run
from qdkit.train.batches import epoch_indices
from qdkit.train.evaluation import evaluate

TIMEOUT = 120  # seconds per launch; a hung process group fails the test instead of the suite
BATCH, EPOCHS = 32, 2  # 800 train drawings: 25 global steps per epoch, 16 drawings per rank and step
OUTPUTS = {"best.pt", "last.pt", "results.csv", "metrics.json", "curves.png"}


def _args(store: Path, root: Path, name: str) -> list[str]:
    return [
        "train",
        "--nproc",
        "2",
        "--data",
        str(store),
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        str(BATCH),
        "--run-name",
        name,
        "--runs-dir",
        str(root / "runs"),
        "--artifacts-dir",
        str(root / "artifacts"),
        "--no-progress",
        "--device",
        "cpu",
    ]


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    return {**env, **extra}


def _qdkit(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qdkit", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.fixture(scope="module")
def ddp_run(store_path, tmp_path_factory):
    """One straight two-process run of two epochs."""
    root = tmp_path_factory.mktemp("ddp")
    result = _qdkit(_args(store_path, root, "ddp"), root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root, result


def test_two_processes_train_and_only_rank_0_writes(ddp_run, store_path):
    root, result = ddp_run
    out = result.stdout + result.stderr
    assert "Traceback" not in out and "ChildFailedError" not in out and "OMP_NUM_THREADS" not in out, out
    # Console: one run header, one line per epoch, one summary (rank 0 only).
    assert result.stdout.count("run        ddp") == 1, out
    assert result.stderr.count("run ddp: qdnet") == 1 and result.stderr.count("epoch   1/2") == 1, out
    art = root / "artifacts" / "ddp"
    assert {p.name for p in art.iterdir()} == OUTPUTS
    assert {p.name for p in (root / "artifacts").iterdir()} == {"ddp"}
    events = list((root / "runs" / "ddp").rglob("events.out.tfevents.*"))
    writers = {p.name.split(".")[-2] for p in events}  # events.out.tfevents.<time>.<host>.<pid>.<n>
    assert events and len(writers) == 1, events
    m = json.loads((art / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["batch_size"] == BATCH and m["epochs"] == EPOCHS
    assert m["test_accuracy"] > 0.8, m  # 4 classes: chance is 0.25
    last = load_checkpoint(art / "last.pt")
    assert len(last["rng"]["by_rank"]) == 2 and last["progress"]["finished"]


def test_shards_are_disjoint_cover_the_split_and_follow_the_single_process_shuffle(store_path):
    """The rows each rank's training loop reads in an epoch (qdkit.train.run.epoch_indices on its loader,
    as the trainer builds it for rank r of 2), compared with the single-process shuffle."""
    train = open_store(store_path).split("train")
    ranks = [BatchLoader(train, BATCH, shuffle=True, seed=0, drop_last=True, rank=r, world_size=2) for r in (0, 1)]
    for epoch in range(1, EPOCHS + 1):
        r0, r1 = (np.concatenate(list(epoch_indices(loader, epoch))) for loader in ranks)
        assert len(r0) == len(r1) == len(train) // 2
        assert not set(r0.tolist()) & set(r1.tolist())
        assert sorted(np.concatenate([r0, r1]).tolist()) == list(range(len(train)))
        # Step by step, rank 0's slice then rank 1's is the single-process global batch.
        single = BatchLoader(train, BATCH, shuffle=True, seed=0, drop_last=True)
        single.set_epoch(epoch)
        steps = len(single)
        interleaved = np.concatenate([r0.reshape(steps, -1), r1.reshape(steps, -1)], axis=1).ravel()
        np.testing.assert_array_equal(interleaved, single.global_order()[: steps * BATCH])
        # A resumed epoch continues with the same rows: the steps it skips are exactly those done.
        resumed = np.concatenate(list(epoch_indices(ranks[1], epoch, start_step=7)))
        np.testing.assert_array_equal(resumed, r1[7 * (BATCH // 2) :])


def test_the_checkpoint_loads_and_evaluates_in_a_single_process(ddp_run, store_path):
    root, _ = ddp_run
    art = root / "artifacts" / "ddp"
    m = json.loads((art / "metrics.json").read_text())
    ckpt = load_checkpoint(art / "best.pt")
    assert not any(k.startswith("module.") for k in ckpt["model_state"])  # saved unwrapped from DDP
    model, _ = model_from_checkpoint(ckpt)
    loss, acc = evaluate(model, open_store(store_path).split("test"), torch.device("cpu"))
    # The two ranks evaluated halves of each batch; one process gets the same count of correct drawings.
    assert acc == pytest.approx(m["test_accuracy"], abs=1 / 200 + 1e-9)
    assert loss == pytest.approx(m["test_loss"], rel=1e-3)


def test_ctrl_c_saves_and_resume_continues_exactly(ddp_run, store_path, tmp_path):
    """Ctrl-C reaches the launcher only; the ranks agree to stop at a sync point, rank 0 saves
    last.pt and prints the resume command; resuming with two processes ends on the straight run's
    weights, bit for bit."""
    root, _ = ddp_run
    proc = subprocess.Popen(
        [sys.executable, "-m", "qdkit", *_args(store_path, tmp_path, "cut")],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    err: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            err.append(line)
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:  # until the training loop has started
            try:
                if "run cut: qdnet" in lines.get(timeout=1):
                    break
            except queue.Empty:
                assert proc.poll() is None and time.monotonic() < deadline, "".join(err)
        proc.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C reaches the launcher
        code = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    text = "".join(err)
    assert code == 130, text
    last = tmp_path / "artifacts" / "cut" / "last.pt"
    assert f"resume with: qdkit train --resume {last} --nproc 2" in text and "Traceback" not in text, text
    assert "elastic" not in text and "death signal" not in text, text  # torchrun's own log lines stay quiet
    saved = load_checkpoint(last)
    # The ranks agree at sync points (every 20 steps, and at the end of an epoch): normally step 20 of
    # epoch 1; a later point only if the machine is very slow to deliver the signal.
    where = (saved["epoch"], saved["progress"]["step_in_epoch"])
    assert where in {(0, 20), (1, 0), (1, 20)} and not saved["progress"]["finished"], where

    resumed = _qdkit(["train", "--nproc", "2", "--resume", str(last), "--no-progress", "--device", "cpu"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming cut after epoch {where[0]}" in resumed.stderr
    straight = load_checkpoint(root / "artifacts" / "ddp" / "last.pt")["model_state"]
    after = load_checkpoint(last)["model_state"]
    for key, value in straight.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    a = json.loads((root / "artifacts" / "ddp" / "metrics.json").read_text())
    b = json.loads((tmp_path / "artifacts" / "cut" / "metrics.json").read_text())
    assert (b["test_accuracy"], b["best_val_accuracy"]) == (a["test_accuracy"], a["best_val_accuracy"])


# --------------------------------------------------------------------------- fast checks, one process


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [16, 33])
def test_every_rank_gets_a_disjoint_nonempty_slice_of_each_global_batch(store_path, world, batch):
    train = open_store(store_path).split("train")
    loaders = [
        BatchLoader(train, batch, shuffle=True, seed=3, drop_last=True, rank=r, world_size=world) for r in range(world)
    ]
    for lo in loaders:
        lo.set_epoch(2)
    order = loaders[0].global_order()
    assert all(len(lo) == len(train) // batch for lo in loaders)  # the same number of steps on every rank
    for b in range(len(loaders[0])):
        glob = order[b * batch : (b + 1) * batch]
        parts = [lo.shard(glob) for lo in loaders]
        assert all(len(p) >= 1 for p in parts) and max(map(len, parts)) - min(map(len, parts)) <= 1
        np.testing.assert_array_equal(np.concatenate(parts), glob)


def test_launcher_passes_the_given_options_on(store_path, tmp_path, monkeypatch):
    seen = {}

    def fake_launch(nproc, args):
        seen.update(nproc=nproc, args=args)
        return 0

    monkeypatch.setattr(L, "launch", fake_launch)
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--nproc",
            "2",
            "--data",
            str(store_path),
            "--lr",
            "0.002",
            "--no-augment",
            "--batch-size",
            "32",
            "--run-name",
            "x",
            "--no-progress",
            "--artifacts-dir",
            str(tmp_path / "a"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen["nproc"] == 2
    args = seen["args"]
    assert args[0] == "train" and "--nproc" not in args
    pairs = dict(zip(args[1::1], args[2::1], strict=False))
    assert pairs["--lr"] == "0.002" and pairs["--batch-size"] == "32" and pairs["--data"] == str(store_path)
    assert "--no-augment" in args and "--no-progress" in args and "--epochs" not in args  # defaults stay out
    assert not (tmp_path / "a").exists()  # the launcher checked, the workers create


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--batch-size", "3"], "--batch-size 3: too small for 2 processes"),
        (["--lr", "-1"], "--lr -1.0: must be a positive number"),
        (["--device", "cuda:1"], "--device cuda:1"),
    ],
)
def test_launcher_bad_input_is_one_line_before_any_process(store_path, tmp_path, monkeypatch, extra, expect):
    monkeypatch.setattr(L, "launch", lambda *a: pytest.fail("launched despite bad input"))
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--nproc",
            "2",
            "--data",
            str(store_path),
            *extra,
            "--artifacts-dir",
            str(tmp_path / "a"),
            "--runs-dir",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qdkit: error:") and expect in lines[0], result.output


def test_nproc_under_torchrun_is_refused(store_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(main, ["train", "--nproc", "2", "--data", str(store_path)])
    assert result.exit_code == 2 and "started by torchrun already" in result.output


def test_check_run_and_agree_in_one_process(store_path, tmp_path):
    cfg = check_run(TrainConfig(data=str(store_path), batch_size=4, artifacts_dir=str(tmp_path)), world_size=2)
    assert cfg.batch_size == 4 and cfg.model == "qdnet" and not any(tmp_path.iterdir())
    with pytest.raises(QdkitError, match="needs at least 2 drawings per step"):
        check_run(TrainConfig(data=str(store_path), batch_size=1))
    assert check_run(TrainConfig(data=str(store_path), batch_size=2, model="seed-cnn"), world_size=2)
    D.agree(None, D.DistInfo())
    with pytest.raises(QdkitError, match="boom"):
        D.agree(QdkitError("boom"), D.DistInfo())


def test_a_worker_that_dies_without_saying_why_is_one_line(tmp_path):
    """The launcher's agent, started as `launch` starts it: a worker killed by a signal becomes one
    error line and exit 2; a worker's own exit codes (2: its error, 130: interrupted) pass through."""
    script = tmp_path / "qdkit"  # a stand-in `qdkit` package whose __main__ ends as told
    script.mkdir()
    (script / "__init__.py").write_text("")
    (script / "__main__.py").write_text(
        "import os, signal, sys\nhow = sys.argv[1]\n"
        "os.kill(os.getpid(), signal.SIGKILL) if how == 'kill' else sys.exit(int(how))\n"
    )
    real = str(Path(L.__file__).parents[2])  # the agent is the real one; its workers run the stand-in
    agent = (
        f"import sys; sys.path.insert(0, {real!r}); from qdkit.train.launcher import run_agent; "
        "sys.exit(run_agent(1, sys.argv[1:]))"
    )
    for how, code in (("kill", EXIT_ERROR), ("2", EXIT_ERROR), ("130", EXIT_INTERRUPTED), ("0", 0)):
        done = subprocess.run(
            [sys.executable, "-c", agent, how],
            env={**_env(), "PYTHONPATH": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=tmp_path,
        )
        assert done.returncode == code, (how, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("qdkit: error:")]
        assert errors == (
            [
                "qdkit: error: training process rank 0 was killed by SIGKILL (out of memory?); "
                "the other processes were stopped"
            ]
            if how == "kill"
            else []
        ), done.stderr


def test_killing_the_launcher_stops_its_training_processes(store_path, tmp_path):
    """kill -9 of `qdkit train --nproc 2` leaves no agent or worker running on (they are in a session
    of their own, out of reach of the terminal's process group)."""
    from _helpers import alive, children_of

    proc = subprocess.Popen(
        [sys.executable, "-m", "qdkit", *_args(store_path, tmp_path, "orphans"), "--epochs", "50"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        for line in proc.stderr:  # until the workers train
            if "run orphans: qdnet" in line or time.monotonic() > deadline:
                break
        agents = children_of(proc.pid)
        family = agents + [w for a in agents for w in children_of(a)]
        assert len(family) >= 3, family  # the agent and two workers
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while any(alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in family if alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
