"""Shared by test_export / test_predict / test_evaluate: small trained checkpoints and their ONNX
exports, made once per test session (independent of qdkit.train.run, built with the model registry)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

_CACHE: dict[tuple, tuple[Path, Path]] = {}


FIXTURES = Path(__file__).parent / "fixtures"  # small embedded real data (CC BY 4.0, see its README)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "quickdraw"  # optional real data beside the checkout


class one_thread:
    """torch on one thread for tiny test batches: two OpenMP threads on a busy 2-core machine spin
    against each other (measured 15x slower), and the tests run beside other work."""

    def __enter__(self):
        import torch

        self.prev = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.prev)


def train_checkpoint(
    path: Path,
    store_path: Path,
    model_name: str = "qdnet",
    steps: int = 40,
    seed: int = 0,
    model_kwargs: dict | None = None,
) -> Path:
    """A few Adam steps on the store's train split (enough for confident, stable top-1 classes)."""
    with one_thread():
        return _train(path, store_path, model_name, steps, seed, model_kwargs)


def _train(path: Path, store_path: Path, model_name: str, steps: int, seed: int, model_kwargs: dict | None) -> Path:
    import torch

    from qdkit.checkpoint import save_checkpoint
    from qdkit.data.store import open_store
    from qdkit.models import build_model

    store = open_store(store_path)
    train = store.split("train")
    kwargs = dict(model_kwargs or ({"width": 16} if model_name == "qdnet" else {}))
    torch.manual_seed(seed)
    model = build_model(model_name, len(store.class_names), **kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    images, labels = np.asarray(train.images), np.asarray(train.labels)
    model.train()
    for _ in range(steps):
        idx = rng.choice(len(labels), 64, replace=False)
        x = torch.from_numpy(images[idx]).unsqueeze(1)
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(labels[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    val = store.split("validation")
    with torch.inference_mode():
        pred = model(torch.from_numpy(np.array(val.images)).unsqueeze(1)).argmax(1).numpy()
    val_acc = float((pred == val.labels).mean())
    save_checkpoint(
        path,
        model=model,
        model_name=model_name,
        model_kwargs=kwargs,
        class_names=store.class_names,
        epoch=1,
        metrics={"val_accuracy": val_acc, "test_accuracy": 0.5},
        run_name="test-run",
    )
    return path


def exported(tmp_path_factory, store_path: Path, model_name: str = "qdnet") -> tuple[Path, Path]:
    """(checkpoint, model.onnx) in their own run folder; made once per session and model."""
    key = (str(store_path), model_name)
    if key not in _CACHE:
        from qdkit.deploy.export import export_model

        run = tmp_path_factory.mktemp(f"run-{model_name}")
        ckpt = train_checkpoint(run / "best.pt", store_path, model_name)
        with one_thread():
            report = export_model(ckpt, run / "model.onnx")
        _CACHE[key] = (ckpt, report.path)
    return _CACHE[key]


def torch_logits(checkpoint: Path, drawings: np.ndarray) -> np.ndarray:
    import torch

    from qdkit.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(checkpoint)
    with one_thread(), torch.inference_mode():
        return model(torch.from_numpy(np.array(drawings, np.uint8)).reshape(-1, 1, 28, 28)).numpy()


def one_line_error(result, code: int = 2) -> str:
    """Assert a CliRunner result is a clean failure: the exit code, no traceback, one error line."""
    out = result.output  # click >= 8.2: stdout and stderr interleaved
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("qdkit: error:")]
    assert len(errors) == 1, out
    return errors[0]


def clean_run(result, code: int = 0) -> str:
    """Assert a CliRunner result ran to `code` without an unexpected exception; its output."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def small_tmpfs(path: Path, size: str = "1m"):
    """Mount a tiny tmpfs at `path` (a real full disk); skips the test, saying why, where mounting is
    not permitted (not root, or no CAP_SYS_ADMIN in a container). Use as a context manager."""
    import contextlib
    import subprocess

    import pytest

    @contextlib.contextmanager
    def mounted():
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"disk-full test needs a small tmpfs and cannot mount one here: {done.stderr.strip()}")
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)

    return mounted()


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- a local HTTP "bucket" that honours Range and If-Range (and, on request, misbehaves) ----------------


@dataclass
class FakeBucket:
    """A folder served over HTTP; records each request's path and Range, and the bytes sent."""

    root: Path
    url: str = ""
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    bytes_sent: int = 0
    # "ignore-range", "html", "cut" (Content-Length promises more than is sent), "ignore-if-range"
    mode: str = "normal"
    validators: bool = True  # send an ETag, and honour If-Range
    weak_etag: bool = False  # send W/"..." (not allowed in If-Range)
    before_request: object = None  # called with the request count before each answer (to change a file)

    def add(self, name: str, rows: int, seed: int = 0, dtype=np.uint8) -> np.ndarray:
        data = np.random.default_rng(seed).integers(0, 256, (rows, 784)).astype(dtype)  # 784: a 28x28 bitmap row
        path = self.root / "full" / "numpy_bitmap" / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, data)
        return data

    def add_file(self, folder: str, filename: str, data: bytes) -> Path:
        path = self.root / "full" / folder / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def bitmap(self, name: str) -> Path:
        return self.root / "full" / "numpy_bitmap" / f"{name}.npy"

    def ranges(self) -> list[str | None]:
        return [r for _, r in self.requests]


def _handler(bucket: FakeBucket) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            ranged = self.headers.get("Range")
            bucket.requests.append((self.path, ranged))
            if bucket.before_request is not None:
                bucket.before_request(len(bucket.requests))
            if bucket.mode == "html":
                return self._send(200, b"<!doctype html><html><body>Sign in</body></html>", "text/html")
            path = bucket.root / urllib.parse.unquote(self.path.lstrip("/"))
            if not path.is_file():
                return self.send_error(404)
            data = path.read_bytes()
            self.etag = ("W/" if bucket.weak_etag else "") + '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
            if_range = self.headers.get("If-Range")
            stale = bucket.validators and bucket.mode != "ignore-if-range" and if_range not in (None, self.etag)
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", ranged or "")
            if not match or bucket.mode == "ignore-range" or stale:
                return self._send(200, data)
            start = int(match[1])
            end = min(int(match[2]) + 1, len(data)) if match[2] else len(data)
            if start >= len(data):
                return self._send(416, b"", extra={"Content-Range": f"bytes */{len(data)}"})
            self._send(206, data[start:end], extra={"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"})

        def _send(self, status: int, body: bytes, ctype: str = "application/octet-stream", extra=None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            if bucket.validators and getattr(self, "etag", None):
                self.send_header("ETag", self.etag)
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if bucket.mode == "cut":
                body = body[: len(body) // 2]
            try:
                self.wfile.write(body)
                bucket.bytes_sent += len(body)
            except (BrokenPipeError, ConnectionResetError):  # a client that stopped reading early
                pass

    return Handler


@contextlib.contextmanager
def serve_bucket(root: Path):
    """A FakeBucket serving folder `root` on 127.0.0.1 for the duration of the block."""
    root.mkdir(parents=True, exist_ok=True)
    fake = FakeBucket(root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


# Synthetic stroke files in the official layouts (random strokes; download tests and hostile variants)
def synthetic_ndjson(n: int, seed: int = 0, word: str = "cat", raw: bool = False) -> bytes:
    import json

    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        strokes = []
        for _ in range(int(rng.integers(1, 6))):
            k = int(rng.integers(2, 40))
            stroke = [rng.integers(0, 256, k).tolist(), rng.integers(0, 256, k).tolist()]
            if raw:
                stroke.append(sorted(rng.integers(0, 10000, k).tolist()))
            strokes.append(stroke)
        lines.append(
            json.dumps(
                {
                    "word": word,
                    "countrycode": "US",
                    "timestamp": "2017-03-01 12:00:00.00000 UTC",
                    "recognized": bool(i % 3),
                    "key_id": str(5000000000000000 + i),
                    "drawing": strokes,
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()


def synthetic_binary(n: int, seed: int = 0) -> list[bytes]:
    """n records in the published binary layout."""
    import struct

    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        strokes = [int(rng.integers(1, 60)) for _ in range(int(rng.integers(1, 7)))]
        rec = struct.pack("<Q2sbIH", 4000000000000000 + i, b"DE", i % 2, 1490000000 + i, len(strokes))
        for k in strokes:
            rec += struct.pack("<H", k) + rng.integers(0, 256, 2 * k).astype(np.uint8).tobytes()
        records.append(rec)
    return records
