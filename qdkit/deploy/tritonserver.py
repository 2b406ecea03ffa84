"""`qdkit triton REPO`: a local Triton Inference Server on a repository `qdkit export --triton` wrote.

Which tritonserver: `tritonserver` on PATH (NVIDIA's build, with its own backends), else the one
the nvidia-pytriton wheel ships (Triton 2.51 with only its Python backend: the repository exported
with `--triton-backend python`). That build needs, and gets here:
- the server's Python: the interpreter whose environment runs the Python-backend models
  (`--python`, else $QDKIT_TRITON_PYTHON, else the Python running qdkit). Its environment needs
  qdkit, onnxruntime, orjson, cairocffi and numpy<2: Triton 2.51's Python backend stub is built
  against numpy 1.x, and with numpy 2 its tensors read wrong (a UINT8 input comes out garbled,
  a BYTES input crashes the stub). It is checked before the server starts, in one line;
- a backend folder holding libtriton_python.so, triton_python_backend_utils.py and the Python
  backend stub built for that Python's major.minor (the wheel has one per Python 3.8-3.13),
  made in a temporary folder: `--backend-directory`;
- that Python's bin folder first on PATH (the stub's embedded interpreter finds its `python3`
  there, and so its site-packages; it ignores PYTHONPATH), its libpython first on LD_LIBRARY_PATH.

The server listens on 127.0.0.1 only (HTTP and gRPC; no metrics port). Its log is read here:
errors are passed on (all of it with verbose), one line is logged when every model is ready, and
Ctrl-C or SIGTERM stops it (Triton finishes requests in flight, up to 5 s), exit code 0.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qdkit.errors import QdkitError

HOST = "127.0.0.1"
PYTRITON = "nvidia-pytriton==0.7.0"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
SERVER_PYTHON_HINT = (
    "make one: python3 -m venv triton-env && triton-env/bin/pip install 'numpy<2' onnxruntime orjson cairocffi "
    "&& triton-env/bin/pip install --no-deps qdkit; then qdkit triton REPO --python triton-env/bin/python"
)
_PROBE = """
import json, os, sys, sysconfig
out = {"version": "%d.%d" % sys.version_info[:2], "bin": os.path.dirname(sys.executable),
       "libdir": sysconfig.get_config_var("LIBDIR") or "", "missing": [], "numpy": None}
for name in ("numpy", "onnxruntime", "orjson", "cairocffi", "qdkit.deploy.tritonbackend"):
    try:
        module = __import__(name)
        if name == "numpy":
            out["numpy"] = module.__version__
    except Exception as e:
        out["missing"].append("%s (%s)" % (name, str(e).splitlines()[0][:80] if str(e) else type(e).__name__))
print(json.dumps(out))
"""
INSTALL_HINT = (
    f"no tritonserver found: `pip install --no-deps {PYTRITON}` (Triton 2.51 with its Python backend, "
    "Linux x86_64, Python 3.8-3.13; export with --triton-backend python), or put NVIDIA's tritonserver on PATH"
)


@dataclass(frozen=True)
class ServerPython:
    executable: str
    version: str  # major.minor
    bin: str
    libdir: str


def check_server_python(python: str | os.PathLike | None = None) -> ServerPython:
    """The Python whose environment runs the Python-backend models, checked (see the module docstring)."""
    exe = os.fspath(python or os.environ.get("QDKIT_TRITON_PYTHON") or sys.executable)
    try:
        # -I: as the stub, which ignores PYTHONPATH
        out = subprocess.run([exe, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True)
        facts = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        raise QdkitError(f"{exe}: not a Python that runs ({str(e).splitlines()[0][:120]})") from None
    if facts["missing"]:
        raise QdkitError(
            f"{exe}: the server's Python cannot import {', '.join(facts['missing'])}; {SERVER_PYTHON_HINT}"
        )
    if not str(facts["numpy"]).startswith("1."):
        raise QdkitError(
            f"{exe}: the server's Python has numpy {facts['numpy']}; Triton 2.51's Python backend needs numpy<2 "
            f"(it is built against numpy 1.x); {SERVER_PYTHON_HINT}"
        )
    return ServerPython(exe, facts["version"], facts["bin"], facts["libdir"])


@dataclass(frozen=True)
class TritonBinary:
    path: Path
    source: str  # "PATH" or "nvidia-pytriton <version>"
    dist: Path | None = None  # the wheel's tritonserver folder (None: a tritonserver with its own backends)


def find_tritonserver(search_path: str | None = None, packages: bool = True) -> TritonBinary | None:
    """`tritonserver` on `search_path` (default PATH), else (with `packages`) nvidia-pytriton's."""
    found = shutil.which("tritonserver", path=search_path)
    if found:
        return TritonBinary(Path(found), "PATH")
    if not packages:
        return None
    spec = importlib.util.find_spec("pytriton")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return None
    try:
        from importlib.metadata import version

        source = f"nvidia-pytriton {version('nvidia-pytriton')}"
    except Exception:  # importlib.metadata.PackageNotFoundError: an unusual install
        source = "nvidia-pytriton"
    return TritonBinary(binary, source, dist)


def check_repository(repo: str | os.PathLike) -> tuple[Path, list[str]]:
    """(the repository's absolute path, its model names), or a one-line QdkitError."""
    path = Path(repo)
    if not path.is_dir():
        raise QdkitError(f"{path}: no such folder (write a model repository with `qdkit export --triton {path}`)")
    models = sorted(p.parent.name for p in path.glob("*/config.pbtxt"))
    if not models:
        raise QdkitError(f"{path}: no model repository (no */config.pbtxt); write one with `qdkit export --triton`")
    return path.resolve(), models


def _backend_folder(dist: Path, into: Path, python: ServerPython) -> Path:
    """A --backend-directory for the wheel's Python backend and the server's Python (see the docstring)."""
    version = python.version
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (dist / "python_backend_stubs").iterdir() if p.is_dir())
        raise QdkitError(
            f"{dist}: nvidia-pytriton has Python backend stubs for Python {', '.join(have)}, not {version}; "
            "give --python one of those"
        )
    folder = into / "backends" / "python"
    folder.mkdir(parents=True)
    for source in (dist / "backends" / "python" / "libtriton_python.so", stub):
        (folder / source.name).symlink_to(source)
    utils = dist / "backends" / "python" / "triton_python_backend_utils.py"
    (folder / utils.name).symlink_to(utils)
    return into / "backends"


def _environment(binary: TritonBinary, python: ServerPython | None) -> dict[str, str]:
    env = dict(os.environ)
    if python is None:
        return env
    env["PATH"] = os.pathsep.join([python.bin, env.get("PATH", "")])
    libs = [python.libdir] + ([str(binary.dist.parent.parent / "nvidia_pytriton.libs")] if binary.dist else [])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return env


def command(binary: TritonBinary, repo: Path, http_port: int, grpc_port: int, backends: Path | None) -> list[str]:
    cmd = [
        str(binary.path),
        f"--model-repository={repo}",
        f"--http-address={HOST}",
        f"--http-port={http_port}",
        f"--grpc-address={HOST}",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--exit-timeout-secs=5",
    ]
    return cmd + ([f"--backend-directory={backends}"] if backends else [])


def _check_port(option: str, port: int) -> None:
    import socket

    with socket.socket() as s:
        s.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as servers do: old TIME_WAIT connections are no hindrance
        try:
            s.bind((HOST, port))
        except OSError as e:
            raise QdkitError(f"{option} {port}: {HOST}:{port} cannot be used ({e.strerror})") from None


def _die_with_parent() -> None:
    """In the child: SIGTERM when qdkit dies (even by SIGKILL), so no tritonserver outlives it."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (a 127.0.0.1 URL we built)
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, ValueError):
        return 0, b""


# What a CPU-only machine always logs as errors: Triton's CUDA runtime finding no driver
_NOISE = ("CudaDriverHelper", "CUDA driver version is insufficient")


def _noise(line: str) -> bool:
    return any(n in line for n in _NOISE)


def _error_summary(lines: collections.deque[str]) -> str:
    """The reason tritonserver gave for stopping, from its log: its error lines, and the failed models' rows."""
    errors = []
    for line in lines:
        text = line.strip()
        if text.startswith("E") and '"' in text:
            text = text.split("]", 1)[-1].strip().strip('"')
        elif text.startswith("error:") or "UNAVAILABLE" in text:
            text = " ".join(text.strip("|").split())
        else:
            continue
        if text and text not in errors and not _noise(text):
            errors.append(text)
    return "; ".join(errors[-4:])[:600].strip() or (list(lines)[-1].strip() if lines else "no output")


def _checked_start(path: Path, binary: TritonBinary | None, http_port: int, grpc_port: int) -> TritonBinary:
    """The tritonserver to run, once everything that would make it fail is ruled out (in one line each,
    before Triton spends seconds loading the models)."""
    binary = binary or find_tritonserver()
    if binary is None:
        raise QdkitError(INSTALL_HINT)
    if http_port == grpc_port:
        raise QdkitError(f"--http-port and --grpc-port are both {http_port}; give them different ports")
    for option, port in (("--http-port", http_port), ("--grpc-port", grpc_port)):
        _check_port(option, port)
    if binary.dist is not None:  # the wheel's build has the Python backend only
        for config in sorted(path.glob("*/config.pbtxt")):
            text = config.read_text(encoding="utf-8", errors="replace")
            if "onnxruntime_onnx" in text or 'backend: "onnxruntime"' in text:
                raise QdkitError(
                    f"{config}: runs on Triton's onnxruntime backend, which the tritonserver of {binary.source} "
                    "does not have; export with --triton-backend python"
                )
    return binary


def _wait_ready(proc: subprocess.Popen, url: str, binary: TritonBinary, log: collections.deque[str]) -> None:
    """Until every model answers ready; a server that stops or takes too long is one line with its error."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            time.sleep(0.2)  # let the pump read the last lines
            raise QdkitError(
                f"tritonserver ({binary.source}) stopped with exit code {proc.returncode} before it was ready: "
                f"{_error_summary(log)}"
            )
        if _get(f"{url}/v2/health/ready", timeout=1.0)[0] == 200:
            return
        if time.monotonic() > deadline:
            raise QdkitError(
                f"tritonserver ({binary.source}) not ready after {READY_TIMEOUT_S:.0f} s: {_error_summary(log)}"
            )
        time.sleep(0.2)


@contextmanager
def running_triton(
    repo: str | os.PathLike,
    http_port: int = 8000,
    grpc_port: int = 8001,
    *,
    verbose: bool = False,
    echo: Callable[[str], None] | None = None,
    binary: TritonBinary | None = None,
    python: str | os.PathLike | None = None,
) -> Iterator[dict]:
    """Start tritonserver on `repo`, wait until every model is ready, yield facts about it
    ({"http": URL, "grpc": "host:port", "models": [...], "version": ..., "source": ..., "process": Popen});
    stop it on leaving."""
    # One function on purpose: the process, its log pump and the cleanup share one try/finally.
    echo = echo or (lambda line: None)
    path, models = check_repository(repo)
    binary = _checked_start(path, binary, http_port, grpc_port)
    # NVIDIA's own tritonserver brings its Python; the wheel's runs the one given (or this one)
    server_python = check_server_python(python) if binary.dist is not None or python else None
    tmp = Path(tempfile.mkdtemp(prefix="qdkit-triton-"))
    proc: subprocess.Popen | None = None
    try:
        backends = None
        if binary.dist is not None:
            assert server_python is not None
            backends = _backend_folder(binary.dist, tmp, server_python)
        log: collections.deque[str] = collections.deque(maxlen=400)
        proc = subprocess.Popen(
            command(binary, path, http_port, grpc_port, backends),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_environment(binary, server_python),
            cwd=tmp,
            start_new_session=True,  # Ctrl-C reaches qdkit, which stops tritonserver once
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )
        ready = threading.Event()

        def pump() -> None:
            assert proc is not None and proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                log.append(line)
                if verbose or (ready.is_set() and line.startswith("E") and not _noise(line)):
                    echo(f"tritonserver: {line}")

        threading.Thread(target=pump, daemon=True).start()
        url = f"http://{HOST}:{http_port}"
        _wait_ready(proc, url, binary, log)
        ready.set()
        status, body = _get(f"{url}/v2")
        version = json.loads(body).get("version", "?") if status == 200 else "?"
        yield {
            "http": url,
            "grpc": f"{HOST}:{grpc_port}",
            "models": models,
            "repository": path,
            "version": version,
            "source": binary.source,
            "python": server_python.executable if server_python else None,
            "log": lambda: _error_summary(log),
            "process": proc,
        }
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM (Triton's graceful stop: it unloads the models and ends the stubs), SIGKILL after `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the stubs go with it
            proc.wait()
    return int(proc.returncode)


def run_triton(
    repo: str | os.PathLike,
    http_port: int = 8000,
    grpc_port: int = 8001,
    *,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
    python: str | os.PathLike | None = None,
) -> None:
    """`qdkit triton`: run until Ctrl-C or SIGTERM, then stop the server cleanly."""
    from qdkit.workers import sigterm_as_interrupt

    try:
        with (
            sigterm_as_interrupt(),
            running_triton(repo, http_port, grpc_port, verbose=verbose, echo=echo, python=python) as t,
        ):
            server_python = f", Python {t['python']}" if t["python"] else ""
            echo(
                f"qdkit triton: {t['http']}/v2 and gRPC {t['grpc']} ready (models {', '.join(t['models'])} "
                f"from {t['repository']}; Triton {t['version']}, {t['source']}{server_python}; Ctrl-C stops)"
            )
            proc: subprocess.Popen = t["process"]
            # Polled, not one blocking wait(): a signal the pump thread happens to receive would not
            # interrupt the main thread's waitpid, and Python runs its handlers in the main thread.
            while proc.poll() is None:
                time.sleep(0.2)
            raise QdkitError(f"tritonserver stopped by itself with exit code {proc.returncode}: {t['log']()}")
    except KeyboardInterrupt:
        echo("qdkit triton: stopped")
