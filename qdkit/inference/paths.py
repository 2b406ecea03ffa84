"""What `qdkit predict` reads: file, folder and glob arguments expanded into input files (decoding
them is qdkit.inference.decode's job).

Inputs are image files (any format PIL reads) and `.ndjson` stroke files, where each line is one
drawing (a Quick Draw ndjson object with a "drawing" key, or a bare stroke list), named
`FILE:LINE` with lines counted from 1. Folders are searched recursively and globs (`*`, `?`, `[]`,
`**`) are expanded here, for patterns the shell left quoted. Both follow a symbolic link to a
folder, but never into a folder already searched, so a link loop neither hangs nor repeats a file.
Anything that cannot be read — a FIFO, socket or device among the files, a folder without
permission — is one problem line and the rest go on.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from qdkit.data.strokefiles import STROKE_SUFFIXES

IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".jpe",
    ".gif",
    ".bmp",
    ".dib",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".tga",
    ".ico",
    ".jp2",
    ".jfif",
    ".avif",
)
INPUT_SUFFIXES = IMAGE_SUFFIXES + STROKE_SUFFIXES


# ----------------------------------------------------------------------------- expansion

_DIGITS = re.compile(r"(\d+)")


def natural_key(p: str | os.PathLike) -> list:
    """`img2.png` before `img10.png`: digit runs compare as numbers."""
    parts: list = _DIGITS.split(os.fspath(p))
    parts[1::2] = [int(t) for t in parts[1::2]]
    return parts


def _wanted(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in INPUT_SUFFIXES


def _not_regular(path: str | os.PathLike) -> str:
    """Why `path` is not a regular file, for a problem line."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    kinds = [
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISDIR, "a folder"),
    ]
    return next((what for test, what in kinds if test(mode)), "not a regular file")


class _Walker:
    """Lists folders, each real folder (device, inode) at most once, collecting problem lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.seen: set[tuple[int, int]] = set()

    def entries(self, folder: Path) -> list[os.DirEntry] | None:
        """The entries of `folder` sorted by name; None if it was listed before or cannot be."""
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in self.seen:
                return None
            self.seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as e:
            self.problems.append(
                f"{folder}: cannot read folder ({e.strerror or type(e).__name__}); its files are skipped"
            )
            return None

    def inputs_under(self, folder: Path) -> list[Path]:
        """Every input file below `folder`, naturally sorted; non-regular ones are problems."""
        found: list[Path] = []
        stack = [folder]
        while stack:
            entries = self.entries(stack.pop())
            for entry in entries or ():
                if _is_dir(entry):
                    stack.append(Path(entry.path))
                elif _wanted(entry.name):
                    if _is_file(entry):
                        found.append(Path(entry.path))
                    else:
                        self.problems.append(f"{entry.path}: {_not_regular(entry.path)}, skipped")
        return sorted(found, key=natural_key)

    def folders_under(self, folder: Path) -> Iterator[Path]:
        """`folder` and every folder below it (not hidden ones), as `**` matches them."""
        stack = [folder]
        while stack:
            current = stack.pop()
            entries = self.entries(current)
            if entries is None:
                continue
            yield current
            stack += reversed([Path(e.path) for e in entries if not e.name.startswith(".") and _is_dir(e)])


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a symbolic link; the walker's `seen` set stops loops
    except OSError:
        return False


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _glob(pattern: str, walker: _Walker) -> list[Path]:
    """glob.glob(pattern, recursive=True), except that `**` lists each real folder once."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    rest = parts[fixed:]
    matches: list[Path] = []

    def match(folder: Path, k: int) -> None:
        part = rest[k]
        if part == "**":
            if not folder.is_dir():
                return  # a path that does not exist matches nothing, as in glob
            if k + 1 == len(rest):  # a trailing `**`: the folder search takes it from here
                matches.append(folder)
                return
            for sub in walker.folders_under(folder):
                match(sub, k + 1)
            return
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return  # a path that does not exist matches nothing, as in glob
        for name in names:
            if (name.startswith(".") and not part.startswith(".")) or not fnmatch.fnmatchcase(name, part):
                continue
            if k + 1 == len(rest):
                matches.append(folder / name)
            elif (folder / name).is_dir():
                match(folder / name, k + 1)

    match(Path(*parts[:fixed]) if fixed else Path("."), 0)
    return sorted(matches, key=natural_key)


def expand_paths(specs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Files, folders (searched recursively for image and .ndjson suffixes) and glob patterns ->
    (input files, problem lines).

    Each spec that yields nothing is one problem line, and so is each file or folder that cannot be
    read. Duplicates are dropped — the same file named twice, or reached again through a symbolic
    link or another spec; the order of first mention is kept.
    """
    files: list[Path] = []
    problems: list[str] = []
    for spec in (os.fspath(s) for s in specs):
        p = Path(spec)
        walker = _Walker(problems)  # per spec: `a/ a/sub/` both list sub/
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            before = len(problems)
            found = walker.inputs_under(p)
            if not found and len(problems) == before:
                problems.append(f"{spec}: folder has no images ({', '.join(IMAGE_SUFFIXES[:6])}, ...) or .ndjson files")
            files += found
        elif glob.has_magic(spec):
            found = []
            for m in _glob(spec, _Walker(problems)):  # its own walker: `**/test` then lists test/
                if m.is_file():
                    found.append(m)
                elif m.is_dir():
                    found += walker.inputs_under(m)
                else:
                    problems.append(f"{m}: {_not_regular(m)}, skipped")
            if not found:
                problems.append(f"{spec}: no file matches")
            files += found
        elif p.exists() or p.is_symlink():
            problems.append(f"{spec}: {_not_regular(p)}, not an image or .ndjson file")
        else:
            problems.append(f"{spec}: no such file or folder")
    return _distinct(files), list(dict.fromkeys(problems))


def _distinct(paths: list[Path]) -> list[Path]:
    """`paths` without second names of an entry already listed: the same name in the same real
    folder (device, inode), reached through another path. One stat per folder, not per file."""
    folders: dict[str, tuple[int, int] | str] = {}
    seen: set[tuple[tuple[int, int] | str, str]] = set()
    out = []
    for p in paths:
        parent = os.path.dirname(p) or "."
        if parent not in folders:
            try:
                st = os.stat(parent)
                folders[parent] = (st.st_dev, st.st_ino)
            except OSError:
                folders[parent] = parent  # reading the file will say what is wrong
        key = (folders[parent], p.name)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
