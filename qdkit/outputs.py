"""The replace rule for the files qdkit writes (export's models, predict --output, evaluate's reports,
visualize's picture, render's PNGs, convert's PNG folder), checked before any work starts:

- a path with a trailing slash names a folder, so it is refused where a file is meant;
- an existing folder is never replaced by a file (nor anything in it deleted);
- an existing file is replaced only if qdkit wrote it — recognised by its content: an ONNX model
  with qdkit metadata, a report JSON with qdkit's keys, a PNG whose Software text says qdkit — or
  with --overwrite. Re-running a command therefore refreshes its own outputs, and nothing a user
  had is lost.
The write itself goes through qdkit.files.atomic_path (a temporary name, then a rename).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from qdkit.constants import QDKIT_VERSION
from qdkit.errors import QdkitError
from qdkit.files import atomic_path

PNG_SOFTWARE = f"qdkit {QDKIT_VERSION}"  # the Software text of every PNG report qdkit writes


def output_file(
    path: str | os.PathLike,
    what: str,
    *,
    overwrite: bool = False,
    ours: Callable[[Path], bool] | None = None,
    option: str = "--out",
) -> Path:
    """`path` as a file qdkit may write `what` to, or a one-line QdkitError saying why not."""
    raw = os.fspath(path)
    if raw.endswith(("/", os.sep)):
        raise QdkitError(f"{raw}: ends with a slash, so it names a folder; {option} names the {what} to write")
    p = Path(raw)
    if p.is_dir():
        raise QdkitError(f"{p}: is a folder; {option} names the {what} to write")
    if p.exists() or p.is_symlink():
        if not p.is_file():
            raise QdkitError(f"{p}: exists and is not a regular file; {option} names the {what} to write")
        if not overwrite and not (ours is not None and ours(p)):
            raise QdkitError(f"{p}: already exists and was not written by qdkit (pass --overwrite to replace it)")
    return p


def output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """`path` as a folder to write reports into (created when missing), or a one-line QdkitError."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise QdkitError(f"{p}: is a file; {option} names a folder")
    return p


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def is_qdkit_png(path: Path) -> bool:
    """Whether `path` is a PNG report qdkit wrote (its Software text)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.format == "PNG" and str(getattr(im, "text", {}).get("Software", "")).startswith("qdkit")
    except Exception:  # not an image at all: not ours
        return False


def is_qdkit_json(path: Path, key: str) -> bool:
    """Whether `path` is a JSON object with qdkit's `key` (a report qdkit wrote)."""
    try:
        if path.stat().st_size > 256 << 20:
            return False
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and key in data


def mark_folder(folder: Path, marker: str, command: str) -> None:
    """Leave `marker` in a folder qdkit is writing, so the next run knows the folder is its own."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / marker).write_text(f"written by qdkit {QDKIT_VERSION} {command}; refreshed by the next one\n")


def marked_folder(folder: Path, marker: str, contents: Iterable[str]) -> bool:
    """Whether `folder` is one qdkit wrote: its marker, and nothing in it but `contents` (a folder the
    user put files into needs --overwrite, as any other)."""
    try:
        names = {p.name for p in folder.iterdir()} if folder.is_dir() and not folder.is_symlink() else set()
    except OSError:
        return False
    return marker in names and names <= {marker, *contents}
