"""npy -> PNG splits + HDF5 store: exact pixels, disjoint deterministic splits, atomic output."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from qdkit.bitmaps import find_bitmap_files, open_bitmaps
from qdkit.cli import main
from qdkit.convert import convert, split_indices
from qdkit.errors import QdkitError
from qdkit.store import SPLITS, open_store

from conftest import CLASSES, PER_CLASS


def test_store_holds_exactly_the_source_rows(raw_dir, store_path):
    store = open_store(store_path)
    files = find_bitmap_files(raw_dir)
    assert store.class_names == [f.class_name for f in files]
    assert store.memory_mappable
    assert store.counts == {s: PER_CLASS[s] * CLASSES for s in SPLITS}
    seen = {label: set() for label in range(CLASSES)}
    for split in SPLITS:
        arrays = store.split(split)
        assert isinstance(arrays.images, np.memmap)
        for label, bf in enumerate(files):
            rows = arrays.source_index[arrays.labels == label]
            assert len(rows) == PER_CLASS[split]
            source = open_bitmaps(bf.path)
            np.testing.assert_array_equal(arrays.images[arrays.labels == label].reshape(-1, 784), source[rows])
            assert not seen[label] & set(rows.tolist()), "splits overlap"
            seen[label] |= set(rows.tolist())
    assert {s["file"] for s in store.attrs["sources"]} == {f.path.name for f in files}
    assert all(len(s["sha256"]) == 64 for s in store.attrs["sources"])
    assert store.attrs["seed"] == 0 and store.attrs["format_version"] == 1


def test_png_pixels_are_the_inverted_source(raw_dir, store_path, png_dir):
    arrays = open_store(store_path).split("validation")
    names = open_store(store_path).class_names
    pngs = sorted((png_dir / "validation").rglob("*.png"))
    assert len(pngs) == len(arrays)
    for i in range(0, len(arrays), 17):
        path = png_dir / "validation" / names[arrays.labels[i]] / f"{arrays.source_index[i]}.png"
        image = Image.open(path)
        assert image.mode == "L" and image.size == (28, 28)
        np.testing.assert_array_equal(255 - np.asarray(image), arrays.images[i])


def test_splits_are_deterministic_and_independent_of_other_classes():
    a = split_indices(1000, PER_CLASS, seed=3, class_name="cat")
    b = split_indices(1000, PER_CLASS, seed=3, class_name="cat")
    c = split_indices(1000, PER_CLASS, seed=4, class_name="cat")
    for s in SPLITS:
        np.testing.assert_array_equal(a[s], b[s])
    assert not all(np.array_equal(a[s], c[s]) for s in SPLITS)
    assert len(np.unique(np.concatenate(list(a.values())))) == sum(PER_CLASS.values())


def test_same_seed_gives_identical_store(raw_dir, store_path, tmp_path):
    convert(raw_dir, tmp_path, h5=True, png=False, per_class=PER_CLASS, seed=0, progress=False)
    a, b = open_store(store_path), open_store(tmp_path / "quickdraw.h5")
    for s in SPLITS:
        np.testing.assert_array_equal(a.split(s).images, b.split(s).images)
        np.testing.assert_array_equal(a.split(s).source_index, b.split(s).source_index)
    assert not (tmp_path / "png").exists()


def test_class_subset_keeps_each_class_split(raw_dir, store_path, tmp_path):
    full = open_store(store_path)
    name = full.class_names[2]
    convert(raw_dir, tmp_path, h5=True, png=False, per_class=PER_CLASS, classes=[name], seed=0, progress=False)
    sub = open_store(tmp_path / "quickdraw.h5")
    assert sub.class_names == [name]
    np.testing.assert_array_equal(sub.split("test").source_index,
                                  full.split("test").source_index[full.split("test").labels == 2])


def test_existing_output_needs_overwrite(raw_dir, tmp_path):
    args = ["convert", "--in", str(raw_dir), "--out", str(tmp_path), "--h5", "--train", "20",
            "--validation", "5", "--test", "5"]
    runner = CliRunner()
    assert runner.invoke(main, args).exit_code == 0
    stamp = (tmp_path / "quickdraw.h5").stat().st_mtime_ns
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and "--overwrite" in again.stderr and "Traceback" not in again.output
    assert (tmp_path / "quickdraw.h5").stat().st_mtime_ns == stamp
    assert runner.invoke(main, args + ["--overwrite", "--seed", "1"]).exit_code == 0
    assert open_store(tmp_path / "quickdraw.h5").attrs["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["png", "quickdraw.h5"]


def test_failure_midway_leaves_nothing_that_looks_complete(raw_dir, tmp_path, monkeypatch):
    import qdkit.convert as conv

    calls = {"n": 0}
    real = conv.write_png

    def flaky(drawing, path):  # forked PNG workers inherit this patch
        calls["n"] += 1
        if calls["n"] > 30:
            raise OSError("disk full")
        real(drawing, path)

    monkeypatch.setattr(conv, "write_png", flaky)
    with pytest.raises(OSError, match="disk full"):
        convert(raw_dir, tmp_path, h5=True, png=True, per_class=PER_CLASS, seed=0, workers=2, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_output_folder_that_is_a_file(raw_dir, tmp_path):
    target = tmp_path / "out"
    target.write_text("not a folder")
    result = CliRunner().invoke(main, ["convert", "--in", str(raw_dir), "--out", str(target), "--h5",
                                       "--train", "20", "--validation", "5", "--test", "5"])
    assert result.exit_code == 2 and str(target) in result.stderr and "Traceback" not in result.output
    assert target.read_text() == "not a folder"


def test_nothing_to_do_is_an_error(raw_dir, tmp_path):
    with pytest.raises(QdkitError):
        convert(raw_dir, tmp_path, h5=False, png=False)
