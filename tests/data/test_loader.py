"""The memory-mapped readers: exact rows, DataLoader workers under fork and spawn, batch path,
sharding, and stores the reader must not trust."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qdkit.cli import main
from qdkit.data.loader import BatchLoader, QuickDrawDataset, fetch
from qdkit.data.store import open_store
from qdkit.errors import QdkitError


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_dataloader_with_two_workers(store_path, start_method):
    ds = QuickDrawDataset(store_path, "validation")
    loader = torch.utils.data.DataLoader(
        ds, batch_size=32, shuffle=False, num_workers=2, multiprocessing_context=start_method
    )
    images, labels = zip(*loader, strict=True)
    images, labels = torch.cat(images), torch.cat(labels)
    arrays = open_store(store_path).split("validation")
    assert images.dtype == torch.uint8 and images.shape == (len(arrays), 1, 28, 28)
    np.testing.assert_array_equal(images.squeeze(1).numpy(), arrays.images)
    np.testing.assert_array_equal(labels.numpy(), arrays.labels)


def test_dataset_item_and_unknown_split(store_path):
    ds = QuickDrawDataset(store_path, "test")
    image, label = ds[5]
    arrays = open_store(store_path).split("test")
    assert image.shape == (1, 28, 28) and label == arrays.labels[5]
    np.testing.assert_array_equal(image[0].numpy(), arrays.images[5])
    with pytest.raises(QdkitError, match="no split 'holdout'"):
        QuickDrawDataset(store_path, "holdout")


def test_fetch_keeps_requested_order(store_path):
    arrays = open_store(store_path).split("train")
    idx = np.array([7, 3, 150, 0, 3])
    images, labels = fetch(arrays, idx)
    np.testing.assert_array_equal(images[:, 0].numpy(), arrays.images[idx])
    np.testing.assert_array_equal(labels.numpy(), arrays.labels[idx])


def test_batch_loader_covers_the_split_once_per_epoch(store_path):
    arrays = open_store(store_path).split("train")
    loader = BatchLoader(arrays, batch_size=64, shuffle=True, seed=1)
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == -(-len(arrays) // 64)
        images = torch.cat([b[0] for b in batches]).reshape(len(arrays), -1).numpy()
        epochs.append(images)
        # Same multiset of drawings as the split, in a shuffled order.
        assert sorted(map(bytes, images)) == sorted(map(bytes, np.asarray(arrays.images).reshape(len(arrays), -1)))
    assert not np.array_equal(epochs[0], epochs[1])


def test_rank_shards_are_disjoint_and_cover_each_global_batch(store_path):
    arrays = open_store(store_path).split("train")
    single = BatchLoader(arrays, batch_size=48, seed=2)
    ranks = [BatchLoader(arrays, batch_size=48, seed=2, rank=r, world_size=2) for r in range(2)]
    order = single.global_order()
    for b in range(len(single)):
        batch = order[b * 48 : (b + 1) * 48]
        shards = [r.shard(batch) for r in ranks]
        assert not set(shards[0]) & set(shards[1])
        np.testing.assert_array_equal(np.concatenate(shards), batch)


def test_chunked_compressed_store_loads_with_warning(store_path, tmp_path, capsys):
    other = tmp_path / "chunked.h5"
    with h5py.File(store_path) as src, h5py.File(other, "w") as dst:
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        for split in src:
            g = dst.create_group(split)
            for name, ds in src[split].items():
                g.create_dataset(name, data=ds[()], chunks=True, compression="gzip")
    store = open_store(other)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"qdkit: warning: {other}: images are chunked or compressed"), err
    assert not store.memory_mappable
    np.testing.assert_array_equal(store.split("test").images, open_store(store_path).split("test").images)
    ds = QuickDrawDataset(other, "test")
    assert ds[0][0].shape == (1, 28, 28)
    info = CliRunner().invoke(main, ["info", str(other)])
    assert info.exit_code == 0 and "mappable   no" in info.output
    assert "UserWarning" not in info.output and "Warning:" not in info.output


def test_truncated_store_is_one_line_error(store_path, tmp_path):
    cut = tmp_path / "cut.h5"
    data = store_path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(QdkitError, match="truncated|corrupt"):
        QuickDrawDataset(cut, "train")
    result = CliRunner().invoke(main, ["info", str(cut)])
    assert result.exit_code == 2 and str(cut) in result.stderr and "Traceback" not in result.output


def test_not_a_store(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(QdkitError, match="not a qdkit store"):
        open_store(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(QdkitError, match="text.h5"):
        open_store(tmp_path / "text.h5")


def test_info_lists_classes_counts_and_sources(store_path, tmp_path):
    result = CliRunner().invoke(main, ["info", str(store_path)])
    assert result.exit_code == 0
    store = open_store(store_path)
    for name in store.class_names:
        assert name in result.output
    assert "mappable   yes" in result.output and "sha256=" in result.output
    assert "total" in result.output and str(store.counts["train"]) in result.output
    copy = tmp_path / "copy.h5"
    shutil.copy(store_path, copy)
    assert CliRunner().invoke(main, ["info", str(copy)]).exit_code == 0


def _edited_copy(store_path, tmp_path, edit):
    """A copy of the session store with `edit(h5py.File)` applied."""
    copy = tmp_path / "edited.h5"
    shutil.copy(store_path, copy)
    with h5py.File(copy, "r+") as f:
        edit(f)
    return copy


def _refused(path, match: str) -> str:
    """open_store and `qdkit info` both fail with the same one line naming the file."""
    with pytest.raises(QdkitError, match=match) as err:
        open_store(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("qdkit: error: "), result.stderr
    return str(err.value)


def _set_label(f, value):
    f["test/labels"][3] = value


@pytest.mark.parametrize(
    "value, shown", [(4, "label 4, outside 0..3"), (-1, "label -1, outside 0..3"), (999, "label 999")]
)
def test_labels_out_of_range_are_refused(store_path, tmp_path, value, shown):
    """Issue 10 group 3: a label >= the class count or negative is refused where the store is opened."""
    _refused(_edited_copy(store_path, tmp_path, lambda f: _set_label(f, value)), shown)


def _replace(split: str, name: str, data):
    def edit(f):
        del f[split][name]
        if data is not None:
            f[split][name] = data

    return edit


def _attr(name: str, value):
    def edit(f):
        if value is None:
            del f.attrs[name]
        else:
            f.attrs[name] = value

    return edit


def _split_as_dataset(f):
    del f["validation"]
    f["validation"] = np.zeros((3, 28, 28), np.uint8)


@pytest.mark.parametrize(
    "edit, match",
    [
        (_replace("train", "source_index", None), "split 'train' lacks source_index"),
        (_attr("class_names", None), "no class_names attribute"),
        (_attr("class_names", "a,b,c,d"), "class_names is not a JSON list"),
        (_attr("class_names", "[1, 2, 3, 4]"), "class_names is not a JSON list"),
        (_attr("class_names", '["a", "b", "a", "c"]'), "lists 'a' twice"),
        (_attr("class_names", "[]"), "class_names is empty"),
        (_attr("sources", '"not a list"'), "malformed 'sources'"),
        (_attr("sources", '[{"rows": 3}]'), "malformed 'sources'"),
        (_attr("format_version", "one"), "format_version is 'one'"),
        (_attr("format_version", 99), "store format 99 is newer"),
        (_split_as_dataset, "split 'validation' is a dataset"),
        (_replace("test", "labels", np.array(["cat"] * 200, dtype="S3")), r"labels \(200,\) \|S3"),
        (_replace("test", "labels", np.zeros((200, 2), np.int16)), r"labels \(200, 2\) int16"),
        (_replace("test", "labels", np.zeros(199, np.int16)), r"labels \(199,\) int16, expected \(200,\)"),
        (_replace("test", "labels", np.zeros(200, np.float32)), r"labels \(200,\) float32"),
    ],
    ids=[
        "no-source-index",
        "no-class-names",
        "comma-string",
        "numbers",
        "duplicate",
        "empty",
        "sources-string",
        "sources-no-file",
        "version-string",
        "version-newer",
        "split-dataset",
        "string-labels",
        "2d-labels",
        "short-labels",
        "float-labels",
    ],
)
def test_malformed_stores_are_refused(store_path, tmp_path, edit, match):
    """Issue 10 group 4."""
    _refused(_edited_copy(store_path, tmp_path, edit), match)


def test_external_storage_and_links_are_refused(store_path, tmp_path):
    """Issue 10 group 4: a dataset may not read from another file (this one pointed at /etc/passwd)."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(256)) * 200)

    def external(f):
        del f["test/images"]
        f["test"].create_dataset("images", shape=(200, 28, 28), dtype=np.uint8, external=[(str(secret), 0, 200 * 784)])

    _refused(_edited_copy(store_path, tmp_path, external), "reads its data from another file")

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["labels"] = np.zeros(200, np.int16)

    def external_link(f):
        del f["test/labels"]
        f["test/labels"] = h5py.ExternalLink(str(other), "/labels")

    _refused(_edited_copy(store_path, tmp_path, external_link), r"/test/labels is a ExternalLink")


def test_store_rewritten_in_place_while_mapped_is_one_line(store_path, tmp_path):
    """Issue 10 group 9: truncating a mapped store in place would end in SIGBUS; the reader stops first."""
    copy = tmp_path / "live.h5"
    shutil.copy(store_path, copy)
    arrays = open_store(copy).split("train")
    loader = BatchLoader(arrays, batch_size=64, shuffle=False)
    next(iter(loader))
    with open(copy, "r+b") as f:  # what `cp other.h5 live.h5` does: same inode, truncated, rewritten
        f.truncate(4096)
    with pytest.raises(QdkitError, match="the store changed on disk while in use") as err:
        next(iter(loader))
    assert str(copy) in str(err.value) and "\n" not in str(err.value)


def test_store_replaced_by_rename_keeps_serving_the_old_data(store_path, tmp_path):
    """The way qdkit writes a store (temp + rename) never disturbs a reader that has it mapped."""
    copy = tmp_path / "live.h5"
    shutil.copy(store_path, copy)
    arrays = open_store(copy).split("train")
    expected = np.array(arrays.images[:10])
    new = tmp_path / "new.h5"
    new.write_bytes(b"\0" * 100)
    new.replace(copy)
    images, _ = fetch(arrays, np.arange(10))
    np.testing.assert_array_equal(images[:, 0].numpy(), expected)


def test_training_on_a_store_truncated_under_it_stops_with_one_line(store_path, tmp_path):
    """Issue 10 group 9 end to end: `qdkit train` used to die of SIGBUS ("Bus error", nothing else) when
    the store was rewritten in place mid-run; now it stops with one line and exit 2."""
    import os
    import subprocess
    import sys
    import time

    live = tmp_path / "live.h5"
    shutil.copy(store_path, live)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qdkit",
            "train",
            "--data",
            str(live),
            "--model",
            "seed-cnn",
            "--epochs",
            "200",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--artifacts-dir",
            str(tmp_path / "artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, QDKIT_PROGRESS="bar"),  # the bar names epoch 2 as it starts (a pipe gets no bar)
    )
    seen, deadline = b"", time.monotonic() + 240
    while b"epoch 2/" not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += os.read(proc.stderr.fileno(), 4096)
    assert b"epoch 2/" in seen, seen[-2000:]
    with open(live, "r+b") as f:
        f.truncate(8192)
    rest = proc.communicate(timeout=240)[1]
    err = (seen + rest).decode(errors="replace")
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("qdkit: error:")]
    assert errors == [
        f"qdkit: error: {live}: the store changed on disk while in use (rewritten in place: "
        f"{store_path.stat().st_size} -> 8192 bytes); replace a store in use by renaming a new "
        "file over it, as `qdkit convert` does"
    ], err[-2000:]
