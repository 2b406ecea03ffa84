"""The file helpers every stage needs: write-then-rename (an interrupted or failed write never
leaves a file that looks complete), a file's SHA-256, and the newest file matching a pattern."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

from qdkit.errors import QdkitError


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `final` (file or folder); rename it to `final` on success.

    On any exception the temporary is removed and `final` is untouched. With overwrite=False an
    existing `final` is an error, checked before any work starts.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise QdkitError(f"{final}: already exists (pass --overwrite to replace it)")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QdkitError(f"{final.parent}: cannot create folder ({e.strerror})") from None
    if not os.access(final.parent, os.W_OK):
        raise QdkitError(f"{final.parent}: folder is not writable")
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            # os.replace cannot replace a non-empty folder: move the old one aside first.
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def newest_file(patterns: Sequence[str], what: str, hint: str, exclude: str | None = None) -> Path:
    """The most recently modified file matching any of `patterns` (relative to the working folder)
    and not ending in `exclude`."""
    found = [Path(p) for pattern in patterns for p in glob.glob(pattern)
             if Path(p).is_file() and not (exclude and p.endswith(exclude))]
    if not found:
        raise QdkitError(f"no {what} found ({' or '.join(patterns)}); {hint}")
    return max(found, key=lambda p: (p.stat().st_mtime, str(p)))
