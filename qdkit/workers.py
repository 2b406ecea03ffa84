"""Worker processes that never outlive their parent, and SIGTERM treated like Ctrl-C.

A pool worker blocked on its task queue would otherwise live on (re-parented to PID 1) after its
parent is killed with SIGKILL, which no handler in the parent can see. `die_with_parent` — run it
as the pool's `initializer` — asks Linux to SIGKILL the worker when its parent dies
(prctl PR_SET_PDEATHSIG) and, on every platform, starts a daemon thread that exits the worker once
its parent PID changes (the fallback where prctl is missing, and a guard for the race of a parent
that died before prctl ran). Workers also ignore SIGINT: Ctrl-C reaches the whole process group,
and the parent, not each worker, decides what an interrupt means (it shuts the pool down).

    pool = ProcessPoolExecutor(n, mp_context=..., initializer=die_with_parent, initargs=(os.getpid(),))

PR_SET_PDEATHSIG fires when the *thread* that forked the worker exits: start pools from a thread
that outlives them (the main thread; ProcessPoolExecutor forks from the thread that submits).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
POLL_SECONDS = 0.5  # how often the fallback thread looks at the parent PID


def _set_parent_death_signal() -> bool:
    """Linux: SIGKILL this process when its parent dies. False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    os._exit(1)  # the parent is gone: nobody will read our results


def die_with_parent(parent_pid: int | None = None) -> None:
    """Pool initializer: make this worker exit when the process `parent_pid` (default: the
    current parent) dies, however it dies; ignore Ctrl-C (the parent handles it)."""
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="qdkit-parent-watch", daemon=True).start()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread, so `kill PID` takes
    the same clean-up path as Ctrl-C (pools shut down, temporary files removed). A no-op outside
    the main thread, where Python cannot install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
