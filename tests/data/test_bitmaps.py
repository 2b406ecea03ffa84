"""Finding, naming and validating Quick Draw bitmap files, and the one-line errors for bad ones."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from qdkit.cli import main
from qdkit.data.bitmaps import class_name_from_path, find_bitmap_files, open_bitmaps, safe_dirname, save_bitmaps
from qdkit.errors import QdkitError


def _npy(path, array):
    with open(path, "wb") as f:
        np.lib.format.write_array(f, array, allow_pickle=True)
    return path


def test_class_names_and_accepted_shapes(tmp_path):
    rng = np.random.default_rng(1)
    flat = rng.integers(0, 256, (5, 784), dtype=np.uint8)
    _npy(tmp_path / "full_numpy_bitmap_The Eiffel Tower.npy", flat)
    _npy(tmp_path / "cat.npy", flat.reshape(5, 28, 28))
    _npy(tmp_path / "dog.npy", flat.reshape(5, 1, 784))
    files = find_bitmap_files(tmp_path)
    assert [f.class_name for f in files] == ["The Eiffel Tower", "cat", "dog"]
    for f in files:
        assert f.rows == 5
        np.testing.assert_array_equal(open_bitmaps(f.path), flat)
    assert [f.class_name for f in find_bitmap_files(tmp_path, ["dog", "cat"])] == ["dog", "cat"]
    assert class_name_from_path("x/full_numpy_bitmap_hot dog.npy") == "hot dog"


@pytest.mark.parametrize("name", ["../../etc", "a/b", "con:x", "tab\there", "..\\win"])
def test_safe_dirname_never_escapes(name):
    d = safe_dirname(name)
    assert "/" not in d and "\\" not in d and "\t" not in d and not d.startswith(".")


def test_safe_dirname_rejects_dot_names():
    for name in ["..", ".", "  "]:
        with pytest.raises(QdkitError):
            safe_dirname(name)


def test_save_bitmaps_roundtrip(tmp_path):
    a = np.arange(784 * 3, dtype=np.uint64).astype(np.uint8).reshape(3, 28, 28)
    p = save_bitmaps(tmp_path / "full_numpy_bitmap_x.npy", a)
    np.testing.assert_array_equal(np.load(p, allow_pickle=False), a.reshape(3, 784))
    with pytest.raises(QdkitError, match="already exists"):
        save_bitmaps(p, a, overwrite=False)


BAD_FILES = {
    "html": (lambda p: p.write_text("<!DOCTYPE html><html><body>Access denied</body></html>"), "HTML page"),
    "pickle": (lambda p: _npy(p, np.array([{"a": 1}, None], dtype=object)), "pickled"),
    "raw_pickle": (lambda p: p.write_bytes(pickle.dumps([1, 2, 3])), "not a .npy file"),
    "dtype": (lambda p: _npy(p, np.zeros((4, 784), np.float32)), "dtype is float32"),
    "shape": (lambda p: _npy(p, np.zeros((4, 100), np.uint8)), r"shape is \(4, 100\)"),
    "truncated": (lambda p: p.write_bytes(_npy(p, np.zeros((10, 784), np.uint8)).read_bytes()[:2000]), "truncated"),
    "empty_file": (lambda p: p.write_bytes(b""), "not a .npy file"),
    # Issue 10 groups 5/13: crafted headers.
    "negative_shape": (
        lambda p: _raw_header(p, "{'descr': '|u1', 'fortran_order': False, 'shape': (-5, 784), }"),
        r"negative dimension in shape \(-5, 784\)",
    ),
    "huge_header": (
        lambda p: p.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**32 - 1) + b" " * 4096),
        "header claims 4294967295 bytes",
    ),
    "header_cut": (lambda p: p.write_bytes(b"\x93NUMPY\x01"), "unreadable .npy header"),
    "bad_version": (lambda p: p.write_bytes(b"\x93NUMPY\x09\x00" + b" " * 200), "unknown format version"),
}


def _raw_header(path, header: str, version: int = 1):
    text = header + " " * (127 - 10 - len(header)) + "\n"
    path.write_bytes(b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<H", len(text)) + text.encode())
    return path


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_bitmap_file_is_one_line_exit_2(tmp_path, case):
    make, message = BAD_FILES[case]
    raw = tmp_path / "raw"
    raw.mkdir()
    _npy(raw / "full_numpy_bitmap_good.npy", np.zeros((20, 784), np.uint8))
    bad = raw / "full_numpy_bitmap_bad.npy"
    make(bad)
    with pytest.raises(QdkitError, match=message):
        open_bitmaps(bad)
    result = CliRunner().invoke(
        main,
        [
            "convert",
            "--in",
            str(raw),
            "--out",
            str(tmp_path / "out"),
            "--h5",
            "--train",
            "5",
            "--validation",
            "1",
            "--test",
            "1",
        ],
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_input_folder_errors(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["convert", "--in", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "no such folder" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(main, ["convert", "--in", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert empty.exit_code == 2 and "no .npy bitmap files" in empty.stderr
    _npy(tmp_path / "empty" / "cat.npy", np.zeros((30, 784), np.uint8))
    unknown = runner.invoke(
        main, ["convert", "--in", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--classes", "cat,unicorn"]
    )
    assert unknown.exit_code == 2 and "unknown class 'unicorn'" in unknown.stderr
    few = runner.invoke(
        main,
        [
            "convert",
            "--in",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "o"),
            "--train",
            "25",
            "--validation",
            "5",
            "--test",
            "5",
        ],
    )
    assert few.exit_code == 2 and "has 30 drawings" in few.stderr and "need 35" in few.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_input_that_is_a_file_says_so(tmp_path):
    """Issue 10 group 18: `--in FILE` is not "no such folder"."""
    f = _npy(tmp_path / "cat.npy", np.zeros((30, 784), np.uint8))
    result = CliRunner().invoke(main, ["convert", "--in", str(f), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such folder" not in result.stderr
    assert (
        result.stderr == f"qdkit: error: {f}: is a file, not a folder (--in takes the folder holding the "
        ".npy bitmap files or .ndjson/.bin/.csv stroke files)\n"
    )


def test_fifo_among_inputs_is_skipped_with_a_warning(tmp_path):
    """Issue 10 group 8: a FIFO named like a class file must not hang convert (run as a subprocess with a
    timeout, so a regression fails instead of hanging the suite)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    _npy(raw / "full_numpy_bitmap_cat.npy", np.random.default_rng(0).integers(0, 256, (30, 784), np.uint8))
    os.mkfifo(raw / "full_numpy_bitmap_pipe.npy")
    os.symlink(raw / "full_numpy_bitmap_pipe.npy", raw / "link.npy")
    (raw / "folder.npy").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qdkit",
            "convert",
            "--in",
            str(raw),
            "--out",
            str(tmp_path / "o"),
            "--no-png",
            "--h5",
            "--train",
            "5",
            "--validation",
            "1",
            "--test",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("qdkit: warning:")]
    assert sorted(warnings) == sorted(
        [
            f"qdkit: warning: {raw / 'folder.npy'}: skipped: a folder, not a regular file",
            f"qdkit: warning: {raw / 'full_numpy_bitmap_pipe.npy'}: skipped: a FIFO, not a regular file",
            f"qdkit: warning: {raw / 'link.npy'}: skipped: a FIFO, not a regular file",
        ]
    )
    assert "converted 1 classes" in result.stdout
    with pytest.raises(QdkitError, match="not a regular file \\(a FIFO\\)"):
        open_bitmaps(raw / "full_numpy_bitmap_pipe.npy")
