"""Write-then-rename, so an interrupted or failed write never leaves a file that looks complete."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

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
