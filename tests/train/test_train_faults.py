"""Training and checkpoints against a careless or hostile user (issue 10): another store on resume,
corrupted or crafted checkpoints, a full disk, a crash before the first checkpoint. Every case is
one line naming the file, exit 2, no traceback, and nothing left behind that looks usable."""

from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import one_line_error, small_tmpfs
from _training import on_training_forward, train_config
from click.testing import CliRunner

from qdkit.checkpoint import FORMAT, load_checkpoint
from qdkit.cli import main
from qdkit.data.store import StoreWriter, open_store
from qdkit.errors import QdkitError
from qdkit.train import TrainConfig, train

STEPS = 12  # seed-cnn, batch 64 over 800 training drawings


def _config(store: Path, root: Path, **kw) -> TrainConfig:
    return train_config(store, root, **{"epochs": 1, "batch_size": 64, "model": "seed-cnn", "lr": 3e-3, **kw})


@pytest.fixture(scope="module")
def run(store_path, tmp_path_factory) -> Path:
    """One short seed-cnn run of two epochs: its folder holds best.pt and last.pt."""
    root = tmp_path_factory.mktemp("faults")
    train(_config(store_path, root, run_name="r", epochs=2), log=lambda s: None)
    return root / "artifacts" / "r"


def _cli(*args: str) -> str:
    return one_line_error(CliRunner().invoke(main, list(args)))


def _resume(last: Path, tmp: Path, *extra: str) -> str:
    return _cli(
        "train", "--resume", str(last), "--runs-dir", str(tmp / "runs"), "--no-progress", "--device", "cpu", *extra
    )


def _crafted(src: Path, dst: Path, change) -> Path:
    """A copy of checkpoint `src` with `change(ckpt)` applied, saved as a valid torch archive."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    change(ckpt)
    torch.save(ckpt, dst)
    return dst


# --------------------------------------------------------------------------- 1: resume with another store


def _store_like(src: Path, dst: Path, names=None, keep=None, images=None, labels=None) -> Path:
    """A store from `src`'s splits with other class names, fewer rows per split, or changed images/labels."""
    store = open_store(src)
    names = names or store.class_names
    splits = {s: store.split(s) for s in store.counts}
    rows = {s: np.arange(len(a) if keep is None else min(keep, len(a))) for s, a in splits.items()}
    w = StoreWriter(dst, names, {s: len(r) for s, r in rows.items()}, {"seed": 0})
    for split, a in splits.items():
        imgs = np.asarray(a.images)[rows[split]]
        labs = a.labels[rows[split]] % len(names)
        imgs = images(imgs) if images else imgs
        labs = labels(labs) if labels else labs
        for label in range(len(names)):
            sel = labs == label
            w.append(split, imgs[sel], label, a.source_index[rows[split]][sel])
    w.close()
    return dst


def _one_pixel_changed(images: np.ndarray) -> np.ndarray:
    images = images.copy()
    images[-1, 27, 27] ^= 1
    return images


OTHER_STORES = {  # case: (how the store differs, what the one line must say)
    "other-class-names": (dict(names=["ant", "bee", "cow", "dog"]), "classes ant,bee,cow,dog (4)"),
    "three-classes": (dict(names=["a", "b", "c"]), "(3)"),
    "fewer-drawings": (dict(keep=40), "drawings per split"),
    "other-drawings": (dict(images=lambda x: 255 - x), "fingerprint differs"),
    "other-labels": (dict(labels=lambda y: np.roll(y, 1)), "fingerprint differs"),
    "one-pixel": (dict(images=lambda x: _one_pixel_changed(x)), "fingerprint differs"),
}


@pytest.mark.parametrize("case", sorted(OTHER_STORES))
def test_resume_refuses_another_store(run, store_path, tmp_path, case):
    kwargs, expect = OTHER_STORES[case]
    if "names" not in kwargs:
        kwargs = {**kwargs, "names": open_store(store_path).class_names}
    other = _store_like(store_path, tmp_path / "other.h5", **kwargs)
    line = _resume(run / "last.pt", tmp_path, "--data", str(other))
    assert f"{other}: not the store the run being resumed" in line and expect in line, line
    # The same drawings under another path are the same store.
    same = shutil.copy(store_path, tmp_path / "same.h5")
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--resume",
            str(run / "last.pt"),
            "--data",
            str(same),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--no-progress",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- 2: corrupted checkpoints


def _flip(src: Path, dst: Path, member: str, offset: int = 64) -> Path:
    """Copy `src` with one bit flipped `offset` bytes into the data of zip member `member`."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member))
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    start = info.header_offset + 30 + name_len + extra_len  # the local header: 30 bytes, name, extra
    data[start + min(offset, info.file_size - 1)] ^= 0x01
    dst.write_bytes(bytes(data))
    return dst


def test_a_flipped_byte_in_a_weight_is_refused_everywhere(run, store_path, tmp_path):
    bad = _flip(run / "best.pt", tmp_path / "best.pt", "data/0")
    with pytest.raises(QdkitError, match="fails its CRC-32 check"):
        load_checkpoint(bad)
    assert "fails its CRC-32 check" in _cli("export", str(bad), "--out", str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()
    last = _flip(run / "last.pt", tmp_path / "last.pt", "data/3")
    assert f"{last}: damaged checkpoint" in _resume(last, tmp_path)


@pytest.mark.parametrize("damage", ["pickle-byte", "last-weight", "truncated", "central-directory", "empty"])
def test_damaged_checkpoints_are_one_line(run, tmp_path, damage):
    src, bad = run / "last.pt", tmp_path / "last.pt"
    raw = src.read_bytes()
    if damage == "pickle-byte":
        _flip(src, bad, "data.pkl", offset=10)
    elif damage == "last-weight":
        with zipfile.ZipFile(src) as z:
            last = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.header_offset)
        _flip(src, bad, last.filename, offset=10**9)  # its final byte
    elif damage == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "central-directory":
        data = bytearray(raw)
        data[raw.rindex(b"PK\x01\x02") + 20] ^= 0xFF  # a compressed-size field of the last entry
        bad.write_bytes(bytes(data))
    else:
        bad.write_bytes(b"")
    line = _resume(bad, tmp_path)
    assert str(bad) in line, line


# --------------------------------------------------------------------------- 6: disk full


@pytest.mark.parametrize("size, fails", [("256k", "best.pt"), ("1m", "last.pt")])
def test_disk_full_before_the_first_checkpoint_is_one_line_and_leaves_nothing(store_path, tmp_path, size, fails):
    with small_tmpfs(tmp_path / "disk", size) as disk:
        line = _cli(
            "train",
            "--data",
            str(store_path),
            "--model",
            "seed-cnn",
            "--epochs",
            "1",
            "--run-name",
            "full",
            "--artifacts-dir",
            str(disk),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--no-progress",
            "--device",
            "cpu",
        )
        assert line == f"qdkit: error: no space left on device while writing {disk / 'full' / fails}", line
        assert list(disk.iterdir()) == []  # no run folder, no temporary file
        assert not (tmp_path / "runs" / "full").exists()


def test_disk_full_later_keeps_the_last_good_checkpoint(store_path, tmp_path):
    with small_tmpfs(tmp_path / "disk", "3m") as disk:
        line = _cli(
            "train",
            "--data",
            str(store_path),
            "--model",
            "seed-cnn",
            "--epochs",
            "3",
            "--run-name",
            "full",
            "--artifacts-dir",
            str(disk),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--no-progress",
            "--device",
            "cpu",
        )
        assert line.startswith("qdkit: error: no space left on device while writing "), line
        names = {p.name for p in (disk / "full").iterdir()}
        assert "last.pt" in names and not [n for n in names if ".tmp-" in n], names
        assert load_checkpoint(disk / "full" / "last.pt")["epoch"] >= 1  # resumable


def test_disk_full_under_tensorboard_is_one_line(store_path, tmp_path):
    """TensorBoard writes from its own thread: its error is still one line, no thread traceback."""
    with small_tmpfs(tmp_path / "runs", "4k") as runs:
        line = _cli(
            "train",
            "--data",
            str(store_path),
            "--model",
            "seed-cnn",
            "--epochs",
            "2",
            "--run-name",
            "tb",
            "--artifacts-dir",
            str(tmp_path / "a"),
            "--runs-dir",
            str(runs),
            "--no-progress",
            "--device",
            "cpu",
        )
        assert line == f"qdkit: error: no space left on device while writing {runs / 'tb'}", line


# --------------------------------------------------------------------------- 11: a crash before the first checkpoint


@pytest.mark.parametrize("crash", ["diverged", "exception", "ctrl-c-twice"])
def test_a_crash_before_the_first_checkpoint_releases_the_run_folder(store_path, tmp_path, crash):
    def act(n, args):
        if crash == "diverged":
            return (torch.full_like(args[0], float("nan")),)
        if n == 2:
            raise RuntimeError("boom") if crash == "exception" else KeyboardInterrupt
        return None

    expected = {"diverged": QdkitError, "exception": RuntimeError, "ctrl-c-twice": KeyboardInterrupt}[crash]
    with on_training_forward(act), pytest.raises(expected):
        train(_config(store_path, tmp_path, run_name="early"), log=lambda s: None)
    assert not (tmp_path / "artifacts" / "early").exists() and not (tmp_path / "runs" / "early").exists()
    train(_config(store_path, tmp_path, run_name="early"), log=lambda s: None)  # the same name works again


def test_a_folder_without_a_checkpoint_is_not_offered_for_resume(store_path, tmp_path):
    (tmp_path / "artifacts" / "old").mkdir(parents=True)
    line = _cli(
        "train",
        "--data",
        str(store_path),
        "--run-name",
        "old",
        "--artifacts-dir",
        str(tmp_path / "artifacts"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--no-progress",
    )
    assert "run folder already exists" in line and "remove it (it holds no checkpoint)" in line
    assert "--resume" not in line


# --------------------------------------------------------------------------- 12, 13: crafted checkpoints


def _set(path: tuple, value):
    def change(ckpt):
        target = ckpt
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _drop(key):
    return lambda ckpt: ckpt.pop(key)


CRAFTED = {  # case: (change, what the one line must say)
    "run-name-escapes": (_set(("run_name",), "../../escape"), "--run-name '../../escape'"),
    "run-name-slash": (_set(("run_name",), "a/b"), "--run-name 'a/b'"),
    "run-name-number": (_set(("run_name",), 7), "--run-name 7"),
    "lr-text": (_set(("config", "lr"), "fast"), "--lr 'fast': expected float"),
    "batch-zero": (_set(("config", "batch_size"), 0), "--batch-size 0: must be at least 1"),
    "epochs-missing": (lambda c: c["config"].pop("epochs"), "--epochs None"),
    "model-other": (_set(("config", "model"), "qdnet"), "the weights are 'seed-cnn'"),
    "seed-huge": (_set(("config", "seed"), 2**70), "--seed 1180591620717411303424: must be in [0, 2**63)"),
    "dropout-nan": (_set(("config", "dropout"), float("nan")), "--dropout nan"),
    "optimizer-unknown": (_set(("config", "optimizer"), "lion"), "--optimizer 'lion'"),
    "runs-dir-number": (_set(("config", "runs_dir"), 3), "--runs-dir 3"),
    "config-list": (_set(("config",), [1, 2]), "'config' is not a mapping"),
    "model-kwargs": (_set(("model_kwargs",), {"dropout": "x"}), "malformed model_kwargs"),
    "class-names": (_set(("class_names",), "a,b,c,d"), "malformed class_names"),
    "weights-shape": (lambda c: c["model_state"].update({"classifier.4.bias": torch.zeros(7)}), "classifier.4.bias"),
    "progress-missing": (_drop("progress"), "no 'progress' mapping"),
    "partial-short": (_set(("progress", "partial"), [0.0, 1.0]), "'partial'"),
    "step-text": (_set(("progress", "step_in_epoch"), "5"), "step_in_epoch"),
    "step-too-far": (_set(("progress", "step_in_epoch"), STEPS), "step_in_epoch"),
    "best-epoch-negative": (_set(("progress", "best_epoch"), -1), "best_epoch"),
    "seconds-nan": (_set(("progress", "train_seconds"), float("nan")), "train_seconds"),
    "finished-text": (_set(("progress", "finished"), "no"), "finished"),
    "epoch-beyond": (_set(("epoch",), 9), "epoch is 9"),
    "history-text": (_set(("history",), "x"), "history"),
    "optimizer-empty": (_set(("optimizer",), {}), "malformed optimizer state"),
    "optimizer-buffer-shape": (
        lambda c: c["optimizer"]["state"][0].update({"exp_avg": torch.zeros(3)}),
        "malformed optimizer state (exp_avg",
    ),
    "scheduler-steps": (_set(("scheduler", "last_epoch"), 5), "malformed scheduler state"),
    "scheduler-text": (_set(("scheduler",), "x"), "malformed scheduler state"),
    "rng-text": (_set(("rng",), "x"), "malformed random-number state"),
    "rng-state-garbage": (_set(("rng", "torch"), torch.zeros(3, dtype=torch.uint8)), "malformed random-number state"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_checkpoints_are_one_line(run, tmp_path, case):
    change, expect = CRAFTED[case]
    (tmp_path / "artifacts" / "r").mkdir(parents=True)
    bad = _crafted(run / "last.pt", tmp_path / "artifacts" / "r" / "last.pt", change)
    line = _resume(bad, tmp_path)
    assert str(bad) in line and expect in line, line
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "escape").exists()


# --------------------------------------------------------------------------- 18: code in a checkpoint


@pytest.mark.parametrize("payload", ["object", "reduce"])
def test_a_checkpoint_holding_code_is_refused_in_qdkits_words(run, tmp_path, payload):
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    ckpt["extra"] = argparse.Namespace(a=1) if payload == "object" else _Touch(tmp_path / "pwned")
    bad = tmp_path / "best.pt"
    torch.save(ckpt, bad)
    expect = f"{bad}: holds Python code or objects, not only weights and plain values; qdkit will not load it"
    for line in (_cli("export", str(bad), "--out", str(tmp_path / "m.onnx")), _resume(bad, tmp_path)):
        assert expect in line, line
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(QdkitError, match="will not load it") as err:
        load_checkpoint(bad)
    assert err.value.__cause__ is not None  # the cause is kept for --debug


class _Touch:
    """Unpickling it would create a file: the code a hostile checkpoint could run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_the_format_tag_alone_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "tagged.pt"
    torch.save({"format": FORMAT, "model_name": "seed-cnn"}, bad)
    with pytest.raises(QdkitError, match="malformed model_kwargs"):
        load_checkpoint(bad)


def test_a_moved_run_folder_resumes_where_its_last_pt_is(run, tmp_path):
    moved = Path(shutil.copytree(run, tmp_path / "elsewhere"))
    (moved / "metrics.json").unlink()
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--resume",
            str(moved / "last.pt"),
            "--runs-dir",
            str(tmp_path / "r"),
            "--no-progress",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (moved / "metrics.json").is_file() and not (tmp_path / "r" / "elsewhere").exists()
