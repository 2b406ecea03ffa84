"""Checkpoint -> a self-describing ONNX model, accepted only if onnxruntime agrees with PyTorch.

The graph (decided in DESIGN.md: normalisation is the model's first layer):
  input  `pixels`         uint8 (N, 1, 28, 28), dynamic N; 0 = background, 255 = ink, raw pixels —
                          a client (a browser, a phone) hands over a drawing and nothing else
  output `logits`         float32 (N, classes)
  output `probabilities`  float32 (N, classes), their softmax — so a client needs no maths either;
                          a caller that only wants logits names that output and skips the softmax
metadata_props (strings; JSON where structured), read back by qdkit.inference.onnxmodel.parse_metadata:
  format            "qdkit-onnx/1"
  class_names       JSON list, index = output column
  input, outputs    JSON: the input convention (shape, layout, dtype, ink/background values) and
                    what each output holds
  qdkit_version, model_name, model_kwargs (JSON), run_name, epoch,
  val_accuracy, test_accuracy   ("" where unknown),
  checkpoint_sha256, checkpoint_path (absolute), checkpoint_file,
  opset, torch_version, exporter, exported_at, parity (JSON: the gate's figures)

Order of work: export to memory, add metadata, onnx.checker (full), run a batch of drawings through
onnxruntime and PyTorch, and only if they agree write the file (atomically). A refusal leaves no file.

`export_models` is what `qdkit export` runs: the fp32 model and, with int8, its quantized copy
(qdkit.deploy.quantize, a step of this stage), with every input checked before anything is written.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch  # the module is imported only to export (by the CLI inside its command), so no lazy import

from qdkit.constants import QDKIT_VERSION, SIDE
from qdkit.deploy.compare import Parity, torch_outputs
from qdkit.errors import QdkitError, first_line
from qdkit.files import atomic_path, newest_file, sha256_file
from qdkit.inference import onnxmodel  # make_session through the module: the seam tests patch
from qdkit.inference.onnxmodel import (
    INPUT_NAME,
    OUTPUT_NAMES,
    check_graph,
    contract_metadata,
    is_qdkit_model,
)
from qdkit.outputs import output_file

if TYPE_CHECKING:
    import onnx

    from qdkit.deploy.quantize import QuantizeReport

DEFAULT_OPSET = 17  # onnxruntime >= 1.12 and onnxruntime-web run it
LOGIT_TOLERANCE = 1e-3  # |Δlogit| <= tol * max(1, |logit|)
PROB_TOLERANCE = 1e-4  # |Δprobability|
PARITY_DRAWINGS = 128


@dataclass
class ExportReport:
    path: Path
    checkpoint: Path
    metadata: dict[str, str]
    max_abs_logit_delta: float
    max_abs_prob_delta: float
    parity_drawings: int
    seconds: float

    def summary(self) -> str:
        names = json.loads(self.metadata["class_names"])
        acc = ", ".join(
            f"{k.split('_')[0]} acc {float(self.metadata[k]):.2%}"
            for k in ("val_accuracy", "test_accuracy")
            if self.metadata.get(k)
        )
        return (
            f"exported {self.checkpoint} -> {self.path} ({self.path.stat().st_size / 2**20:.2f} MiB, "
            f"{self.metadata['model_name']}, {len(names)} classes{', ' + acc if acc else ''}, "
            f"opset {self.metadata['opset']}) in {self.seconds:.1f} s\n"
            f"parity on {self.parity_drawings} drawings: max |Δlogit| {self.max_abs_logit_delta:.2e}, "
            f"max |Δprobability| {self.max_abs_prob_delta:.2e}"
        )


def default_checkpoint() -> Path:
    return newest_file(["artifacts/*/best.pt"], "checkpoint", "train one with `qdkit train` or pass CHECKPOINT")


def parity_drawings(n: int = PARITY_DRAWINGS, seed: int = 0) -> np.ndarray:
    """Deterministic doodle-like drawings for the parity gate: random antialiased pen strokes (as
    Quick Draw bitmaps look), plus the extremes — an empty frame and a full one."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = np.zeros((n, SIDE, SIDE), np.uint8)
    for i in range(n):
        im = Image.new("L", (4 * SIDE, 4 * SIDE), 0)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 5))):
            pts = rng.uniform(6, 4 * SIDE - 6, (int(rng.integers(2, 7)), 2))
            draw.line(pts.ravel().tolist(), fill=255, width=int(rng.integers(5, 11)))
        out[i] = np.asarray(im.resize((SIDE, SIDE), Image.Resampling.BOX))
    if n >= 2:
        out[0] = 0
        out[1] = 255
    return out


def _accuracies(ckpt: dict[str, Any], ckpt_path: Path) -> tuple[float | None, float | None]:
    """Validation accuracy from the checkpoint; test accuracy from it or from the run's metrics.json."""
    metrics = ckpt.get("metrics") or {}
    val = metrics.get("val_accuracy", metrics.get("best_val_accuracy"))
    test = metrics.get("test_accuracy")
    side = ckpt_path.parent / "metrics.json"
    if (test is None or val is None) and side.is_file():
        try:
            run = json.loads(side.read_text())
        except (OSError, ValueError):
            run = {}
        if isinstance(run, dict) and run.get("run_name") in (None, ckpt.get("run_name")):
            test = run.get("test_accuracy") if test is None else test
            val = run.get("best_val_accuracy") if val is None else val
    as_float = lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None  # noqa: E731
    return as_float(val), as_float(test)


def model_path(checkpoint: Path, out: str | os.PathLike | None, overwrite: bool = False) -> Path:
    """Where the fp32 model goes: `out`, default model.onnx beside the checkpoint, checked by the
    replace rule (qdkit.outputs: an earlier qdkit model is replaced, anything else needs overwrite)."""
    target = out if out is not None else checkpoint.parent / "model.onnx"
    return output_file(target, ".onnx model", overwrite=overwrite, ours=is_qdkit_model)


class Exportable(torch.nn.Module):
    """The exported graph: a classifier's logits and, beside them, their softmax."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(pixels)
        return logits, torch.softmax(logits, dim=1)


def export_model(
    checkpoint: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    logit_tolerance: float = LOGIT_TOLERANCE,
    prob_tolerance: float = PROB_TOLERANCE,
    drawings: np.ndarray | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    loaded: dict[str, Any] | None = None,
) -> ExportReport:
    """Export `checkpoint` (default: the newest artifacts/*/best.pt) to `out` (default: model.onnx
    beside it); raise QdkitError, writing nothing, if the checker or the parity gate fails.
    `loaded` is the checkpoint's contents where the caller has loaded it already (export_models)."""
    import time

    import onnx

    from qdkit.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    ckpt_path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    out = model_path(ckpt_path, out, overwrite)
    model, ckpt = _rebuild(ckpt_path, loaded if loaded is not None else load_checkpoint(ckpt_path))
    onnx_bytes = _to_onnx(model, ckpt_path, opset)
    proto = onnx.load_from_string(onnx_bytes)
    meta = _metadata(ckpt, ckpt_path, opset)
    _describe(proto, meta, len(ckpt["class_names"]))
    check_graph(proto, ckpt_path, "exported graph")

    x = parity_drawings() if drawings is None else np.ascontiguousarray(drawings, np.uint8).reshape(-1, SIDE, SIDE)
    parity = _parity_gate(model, onnx_bytes, x, ckpt_path, logit_tolerance, prob_tolerance, threads)
    d_logit, d_prob = parity.max_abs_logit_delta, parity.max_abs_prob_delta
    meta["parity"] = json.dumps({"drawings": int(len(x)), "max_abs_logit_delta": d_logit, "max_abs_prob_delta": d_prob})
    onnx.helper.set_model_props(proto, meta)

    with atomic_path(out) as tmp:
        onnx.save(proto, os.fspath(tmp))
    return ExportReport(out, ckpt_path, meta, d_logit, d_prob, int(len(x)), time.perf_counter() - t0)


def _rebuild(ckpt_path: Path, ckpt: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The checkpoint's model in eval mode; a QdkitError naming the file if it cannot be rebuilt."""
    from qdkit.checkpoint import model_from_checkpoint

    try:
        return model_from_checkpoint(ckpt)
    except QdkitError as e:
        raise QdkitError(f"{ckpt_path}: {e}") from e
    except Exception as e:  # a state dict that does not fit its own model description
        raise QdkitError(f"{ckpt_path}: cannot rebuild the model ({first_line(e)})") from e


def _to_onnx(model: torch.nn.Module, ckpt_path: Path, opset: int) -> bytes:
    """The serialised ONNX graph of `Exportable(model)`, exported in memory."""
    sample = torch.from_numpy(parity_drawings(2)[:, None])
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            # The TorchScript ("legacy") exporter: ~0.05 s for these nets against ~1-3 s for
            # dynamo=True (torch.export + onnxscript, measured on torch 2.13), with the same graph
            # after onnxruntime's optimisation, and BatchNorm folded into the convolutions for us.
            torch.onnx.export(  # a BytesIO target works (torch's documented file-like f)
                Exportable(model).eval(),
                (sample,),
                buf,  # type: ignore[arg-type]
                dynamo=False,
                opset_version=int(opset),
                do_constant_folding=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "N"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            )
    except Exception as e:
        raise QdkitError(f"{ckpt_path}: ONNX export failed at opset {opset} ({first_line(e)})") from e
    return buf.getvalue()


def _metadata(ckpt: dict[str, Any], ckpt_path: Path, opset: int) -> dict[str, str]:
    """The metadata_props of the module docstring, all but `parity` (known only after the gate)."""
    val_acc, test_acc = _accuracies(ckpt, ckpt_path)
    return {
        **contract_metadata([str(c) for c in ckpt["class_names"]], ckpt.get("input", {})),
        "qdkit_version": QDKIT_VERSION,
        "model_name": str(ckpt["model_name"]),
        "model_kwargs": json.dumps(ckpt.get("model_kwargs", {})),
        "run_name": str(ckpt.get("run_name") or ""),
        "epoch": str(ckpt.get("epoch", "")),
        "val_accuracy": "" if val_acc is None else repr(val_acc),
        "test_accuracy": "" if test_acc is None else repr(test_acc),
        "checkpoint_sha256": sha256_file(ckpt_path),
        "checkpoint_path": str(ckpt_path.resolve()),
        "checkpoint_file": ckpt_path.name,
        "opset": str(opset),
        "torch_version": torch.__version__,
        "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _describe(proto: onnx.ModelProto, meta: dict[str, str], classes: int) -> None:
    """Producer, doc string and metadata_props onto the graph."""
    import onnx

    proto.producer_name, proto.producer_version = "qdkit", QDKIT_VERSION
    proto.doc_string = (
        f"qdkit {meta['model_name']} Quick Draw classifier: uint8 pixels (N,1,28,28), "
        f"0 = background, 255 = ink -> logits, probabilities over {classes} classes"
    )
    onnx.helper.set_model_props(proto, meta)


def _parity_gate(
    model: torch.nn.Module,
    onnx_bytes: bytes,
    x: np.ndarray,
    ckpt_path: Path,
    logit_tolerance: float,
    prob_tolerance: float,
    threads: int | None,
) -> Parity:
    """The same drawings `x` through onnxruntime and PyTorch; QdkitError unless they agree."""
    session = onnxmodel.make_session(
        onnx_bytes, threads=threads, providers=["CPUExecutionProvider"], name=str(ckpt_path)
    )
    parity = Parity()
    parity.add(*torch_outputs(model, x), *session.run(list(OUTPUT_NAMES), {INPUT_NAME: x[:, None]}))
    if not parity.within(max_rel_logit_delta=logit_tolerance, max_prob_delta=prob_tolerance):
        raise QdkitError(
            f"{ckpt_path}: onnxruntime disagrees with PyTorch on {len(x)} drawings "
            f"(max |Δlogit| {parity.max_abs_logit_delta:.3g}, max |Δprobability| {parity.max_abs_prob_delta:.3g}; "
            f"tolerances {logit_tolerance:g} relative, {prob_tolerance:g}); nothing written"
        )
    return parity


@dataclass
class ExportResult:
    """What `export_models` wrote: the fp32 model and, where asked for, the int8 one."""

    fp32: ExportReport
    int8: QuantizeReport | None = None

    def summary(self) -> str:
        return self.fp32.summary() + (f"\n{self.int8.summary()}" if self.int8 else "")


def export_models(
    checkpoint: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    int8: bool = False,
    data: str | os.PathLike | None = None,
    int8_min_agreement: float | None = None,
    overwrite: bool = False,
    warn: Callable[[str], None] | None = None,
) -> ExportResult:
    """`qdkit export`: the fp32 model (`export_model`) and, with `int8`, its int8 copy beside it,
    calibrated on the store `data` (default: the run's store). Every input — the checkpoint, the
    store and its classes, both output paths — is checked before anything is written. Without
    `int8`, an int8 model left beside the new fp32 one by an earlier export is `warn`ed about."""
    from qdkit.deploy.quantize import default_store, int8_path, open_calibration_store, quantize_from_store

    warn = warn or (lambda msg: None)
    ckpt = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    target = int8_path(model_path(ckpt, out, overwrite))
    store = None
    loaded = None
    if int8:
        from qdkit.checkpoint import load_checkpoint

        output_file(target, "int8 .onnx model", overwrite=overwrite, ours=is_qdkit_model)
        store = Path(data) if data is not None else default_store(ckpt)
        loaded = load_checkpoint(ckpt)
        open_calibration_store(store, loaded["class_names"], str(ckpt))
    report = export_model(ckpt, out, opset=opset, overwrite=overwrite, loaded=loaded)
    if store is None:
        if target.is_file():
            warn(
                f"{target} is from an earlier export, not from this {report.path}; "
                "re-export with --int8 to refresh it, or delete it"
            )
        return ExportResult(report)
    try:
        quantized = quantize_from_store(
            report.path, target, store, min_agreement=int8_min_agreement, warn=warn, overwrite=overwrite
        )
    except QdkitError as e:
        stale = f"; {target} from an earlier export is left as it was" if target.is_file() else ""
        raise QdkitError(f"{e} (the fp32 {report.path} is written{stale})") from e
    return ExportResult(report, quantized)
