"""The file helpers every stage needs: write-then-rename (an interrupted or failed write never
leaves a file that looks complete; a full disk is one line), a lock on an output folder, a file's
SHA-256, and the newest file matching a pattern."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from qdkit.errors import QdkitError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# HDF5 reports a failed write as text (RuntimeError or OSError), with the C errno inside the message.
_DISK_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|errno = (28|122)\b")


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (an OSError, or HDF5's RuntimeError) says the disk or quota is full."""
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
        return True
    return isinstance(error, (OSError, RuntimeError)) and bool(_DISK_FULL_TEXT.search(str(error)))


@contextlib.contextmanager
def disk_full_is_error(what: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk inside the block into one line naming what was being written."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if is_disk_full(e):
            raise QdkitError(f"no space left on device while writing {what}") from None
        raise


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `final` (file or folder); rename it to `final` on success.

    On any exception the temporary is removed and `final` is untouched; a full disk becomes one
    line. With overwrite=False an existing `final` is an error, checked before any work starts.
    A folder is only ever replaced by a folder and a file by a file (a folder where a file is to be
    written is not qdkit's to delete), and an old folder that could not be removed is an error.
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
    if final.is_dir() and not final.is_symlink():
        _check_removable(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        with disk_full_is_error(final):
            yield tmp
        _replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def _replace(tmp: Path, final: Path) -> None:
    """Rename `tmp` over `final`, which must be of the same kind (file or folder) if it exists."""
    if final.is_symlink() and tmp.is_dir():
        final.unlink()  # a folder cannot be renamed over a link: drop the link (never its target)
    if final.is_symlink() or not final.exists():
        os.replace(tmp, final)
        return
    if final.is_dir() != tmp.is_dir():
        what, kind = ("a folder", "file") if final.is_dir() else ("not a folder", "folder")
        raise QdkitError(f"{final}: is {what}; qdkit will not replace it with a {kind} (move it away first)")
    if not final.is_dir():
        os.replace(tmp, final)
        return
    # os.replace cannot replace a non-empty folder: move the old one aside, the new one in, remove the old.
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, old)
    os.replace(tmp, final)
    failures: list[str] = []
    shutil.rmtree(old, onerror=lambda fn, path, exc_info: failures.append(f"{path}: {exc_info[1]}"))
    if failures:
        kept = final.with_name(f"{final.name}.old")
        kept = kept if not kept.exists() else final.with_name(f"{final.name}.old-{os.getpid()}")
        with contextlib.suppress(OSError):
            os.replace(old, kept)
        raise QdkitError(
            f"{final}: written, but the old folder could not be removed ({failures[0]}); "
            f"what is left of it is in {kept if kept.exists() else old}"
        )


def _check_removable(folder: Path) -> None:
    """Refuse before any work when the old folder to be replaced holds a folder we cannot empty."""
    for root, _, _ in os.walk(folder, onerror=lambda e: _unremovable(folder, e.filename, e.strerror)):
        if not os.access(root, os.W_OK | os.X_OK):
            _unremovable(folder, root, "not writable")


def _unremovable(folder: Path, where: str, why: str | None) -> None:
    raise QdkitError(f"{folder}: cannot replace it: {where} cannot be removed ({why}); nothing was written")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, names: Sequence[str], what: str = "qdkit convert") -> Iterator[None]:
    """Hold an exclusive lock on output `folder` (created if need be) while the block runs.

    A second run into the same folder fails at once with one line instead of racing the first
    (both would pass the "already exists" check, and the second rename would silently win).
    Under the lock, temporaries of `names` left by a run that was killed (their PID is gone) are
    removed; those of a live process that holds no lock (an older qdkit) are refused. A folder
    this call created is removed again when the block fails and leaves it empty.
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise QdkitError(f"{folder}: cannot create or open the output folder ({e.strerror})") from None
    try:
        if not _lock_within(fd, LOCK_GRACE_SECONDS):
            raise QdkitError(
                f"{folder}: another {what} is writing into this folder; wait for it to finish "
                "or choose another output folder"
            )
        _clear_stale_temporaries(folder, names)
        try:
            yield
        except BaseException:
            if created:  # a failed run leaves no empty folder (only the lock holder may remove it)
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
    finally:
        os.close(fd)  # releases the lock


LOCK_GRACE_SECONDS = 2.0  # how long a run waits for a lock that is being released


def _lock_within(fd: int, seconds: float) -> bool:
    """Take an exclusive flock on `fd`, waiting at most `seconds` for a holder to let go.

    The grace exists for a run that was just killed: the kernel may drop the flock its processes
    shared a moment after the last of them is gone (a deferred close), and the next run should not
    be refused for that. A live run holds it far longer, and the caller refuses then."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _clear_stale_temporaries(folder: Path, names: Sequence[str]) -> None:
    alternatives = "|".join(re.escape(n) for n in names)
    pattern = re.compile(rf"\.({alternatives})\.(tmp|old)-(\d+)")
    for entry in folder.iterdir():
        match = pattern.fullmatch(entry.name)
        if not match or int(match[3]) == os.getpid():
            continue
        if _alive(int(match[3])):
            raise QdkitError(
                f"{entry}: a temporary of a run still in progress (PID {match[3]}); wait for it "
                "or choose another output folder"
            )
        _remove(entry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def newest_file(patterns: Sequence[str], what: str, hint: str, exclude: str | None = None) -> Path:
    """The most recently modified file matching any of `patterns` (relative to the working folder)
    and not ending in `exclude`."""
    found = [
        Path(p)
        for pattern in patterns
        for p in glob.glob(pattern)
        if Path(p).is_file() and not (exclude and p.endswith(exclude))
    ]
    if not found:
        raise QdkitError(f"no {what} found ({' or '.join(patterns)}); {hint}")
    return max(found, key=lambda p: (p.stat().st_mtime, str(p)))
