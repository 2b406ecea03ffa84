"""`qdkit train --nproc N`: start torchrun for N training processes on this machine, and turn how
they ended (qdkit.train.run's exit codes) into this command's exit code."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from qdkit.train.distributed import cpu_cores
from qdkit.train.run import EXIT_CRASH, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK
from qdkit.workers import sigterm_as_interrupt

AGENT_MODULE = "qdkit.train.launcher"  # `python -m qdkit.train.launcher N ARGS...` runs torchrun's agent
_SAID_WHY = (EXIT_CRASH, EXIT_ERROR, EXIT_INTERRUPTED)  # the worker printed why it stopped


def launch(nproc: int, qdkit_args: list[str]) -> int:
    """Run `python -m qdkit <qdkit_args>` in `nproc` processes through torchrun on this machine and
    return the exit code for the caller to exit with.

    torchrun's agent runs in a child process (`python -m qdkit.train.launcher`, below), in a session of
    its own, with `--standalone` (it picks a free port); this process only waits for it. Ctrl-C (or
    SIGTERM) here is passed on as one SIGINT to the agent, which forwards it to each worker; they stop
    at the next sync point, save last.pt and exit 130. On CPU each worker gets OMP_NUM_THREADS =
    cores // nproc unless the variable is set. A worker that fails has printed its own one-line
    error; one that dies without saying why (a signal, a crash) is one error line from the agent.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpu_cores() // nproc)))
    agent = subprocess.Popen(
        [sys.executable, "-m", AGENT_MODULE, str(nproc), *qdkit_args], env=env, start_new_session=True
    )
    with sigterm_as_interrupt():
        while True:
            try:
                return agent.wait()
            except KeyboardInterrupt:
                agent.send_signal(signal.SIGINT)


def run_agent(nproc: int, qdkit_args: list[str]) -> int:
    """torchrun's agent for `launch` (its own process, so torchrun may own its signals and logging):
    the exit code of the first failing worker, when that worker has said why."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    _stop_with(os.getppid())
    if "LOGLEVEL" not in os.environ:  # torchrun's log lines stay off the console unless asked for
        for name in ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher"):
            logger = logging.getLogger(name)  # its children set their own levels: stop them here
            logger.addHandler(logging.NullHandler())
            logger.propagate = False
    try:
        run(
            parse_args(
                ["--standalone", "--nproc-per-node", str(nproc), "--max-restarts", "0", "-m", "qdkit", *qdkit_args]
            )
        )
        return EXIT_OK
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode in _SAID_WHY:
            return failure.exitcode
        how = (
            f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
        )
        hint = " (out of memory?)" if failure.exitcode == -signal.SIGKILL else ""
        print(
            f"qdkit: error: training process rank {rank} {how}{hint}; the other processes were stopped", file=sys.stderr
        )
        return EXIT_ERROR
    except SignalException as e:  # the workers got the signal too and have exited
        return 128 + int(e.sigval)


def _stop_with(launcher: int) -> None:
    """The agent runs in a session of its own, so nothing stops it when its launcher is killed
    (SIGKILL included): a thread watches the launcher and, once it is gone, stops the workers as a
    SIGTERM to this process does."""

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="qdkit-launcher-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(run_agent(int(sys.argv[1]), sys.argv[2:]))
