"""ONNX vs PyTorch on one split of the store: both accuracies, their agreement, the largest logit
and probability differences; `evaluation.json` (with per-class accuracy and the confusion matrix)
and `confusion_matrix.png`. The parity verdict fails when top-1 agreement or the probability
difference misses its tolerance; the CLI turns that into exit code 1.

An int8 model (`qdkit export --int8`; its metadata has `quantization`) cannot match PyTorch to
1e-4 — quantization moves probabilities by ~1e-2 by design — so unless the caller sets tolerances
its verdict is top-1 agreement >= 98% alone, and |Δprobability| is reported, not gated.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdkit.constants import DEFAULT_STORE
from qdkit.deploy.compare import Parity, torch_outputs
from qdkit.errors import QdkitError, first_line
from qdkit.files import atomic_path, sha256_file
from qdkit.inference.onnxmodel import INT8_MIN_AGREEMENT, OnnxModel, check_classes, is_quantized
from qdkit.outputs import PNG_SOFTWARE, is_qdkit_json, is_qdkit_png, output_file, output_folder

MIN_AGREEMENT = 1.0
MAX_PROB_DELTA = 1e-4
JSON_NAME = "evaluation.json"
PNG_NAME = "confusion_matrix.png"


@dataclass
class EvaluationReport:
    figures: dict[str, Any]
    json_path: Path
    png_path: Path

    @property
    def passed(self) -> bool:
        return bool(self.figures["passed"])

    def summary(self) -> str:
        f = self.figures
        verdict = "PASS" if f["passed"] else "FAIL"
        tol = f["tolerances"]
        lines = [
            f"{f['split']} split of {f['data']}: {f['drawings']} drawings, {len(f['class_names'])} classes",
            f"  onnxruntime accuracy   {f['onnx_accuracy']:.4%}   ({f['model']})",
            f"  pytorch accuracy       {f['torch_accuracy']:.4%}   ({f['checkpoint']})",
            f"  top-1 agreement        {f['top1_agreement']:.4%}   ({f['disagreements']} differ; "
            f"need >= {tol['min_agreement']:.4%})",
            f"  max |Δlogit|           {f['max_abs_logit_delta']:.3e}",
            f"  max |Δprobability|     {f['max_abs_prob_delta']:.3e}   "
            + (
                f"(need <= {tol['max_prob_delta']:g})"
                if tol["max_prob_delta"] is not None
                else "(reported, not gated: int8 model)"
            ),
            f"parity {verdict}; wrote {self.json_path} and {self.png_path}",
        ]
        if f.get("quantization"):
            q = f["quantization"]
            lines.insert(
                0,
                f"int8 model ({q.get('type', 'quantized')}, calibrated on "
                f"{q.get('calibration_drawings', '?')} drawings): PyTorch parity to 1e-4 holds only "
                f"for the fp32 model; this one is judged by top-1 agreement"
                + (" and the |Δprobability| asked for" if tol["max_prob_delta"] is not None else ""),
            )
        return "\n".join(lines)


def resolve_checkpoint(
    predictor: OnnxModel, checkpoint: str | os.PathLike | None, warn: Callable[[str], None]
) -> tuple[Path, str]:
    """The checkpoint to compare with, and its SHA-256. By default the one the model's metadata
    names (its recorded path, else the same file name beside the model), whose hash must match."""

    meta = predictor.metadata
    recorded = meta.get("checkpoint_sha256")
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            what = "not a regular file" if path.exists() else "no such checkpoint file"
            raise QdkitError(f"{path}: {what}")
        sha = sha256_file(path)
        if recorded and sha != recorded:
            warn(f"{path}: not the checkpoint {predictor.path} was exported from (SHA-256 differs); comparing anyway")
        return path, sha
    if not meta.get("checkpoint_path") and not meta.get("checkpoint_file"):
        raise QdkitError(
            f"{predictor.path}: the model does not name its checkpoint (no qdkit metadata); pass --checkpoint"
        )
    candidates = [Path(meta["checkpoint_path"])] if meta.get("checkpoint_path") else []
    if meta.get("checkpoint_file"):
        candidates.append(predictor.path.parent / meta["checkpoint_file"])
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise QdkitError(f"{predictor.path}: its checkpoint {candidates[0]} is gone; pass --checkpoint")
    path = found
    sha = sha256_file(path)
    if recorded and sha != recorded:
        raise QdkitError(
            f"{path}: changed since {predictor.path} was exported from it (SHA-256 "
            f"{sha[:12]}… ≠ {recorded[:12]}…); re-export, or pass --checkpoint to compare anyway"
        )
    return path, sha


def tolerances(
    metadata: dict[str, Any], min_agreement: float | None, max_prob_delta: float | None
) -> tuple[float, float | None]:
    """The parity tolerances: the caller's where given, else by model kind — fp32: 100% agreement
    and |Δprobability| <= 1e-4; int8: 98% agreement and |Δprobability| not gated (None)."""
    if is_quantized(metadata):
        return (INT8_MIN_AGREEMENT if min_agreement is None else min_agreement), max_prob_delta
    return (
        MIN_AGREEMENT if min_agreement is None else min_agreement,
        MAX_PROB_DELTA if max_prob_delta is None else max_prob_delta,
    )


def evaluate_model(
    model: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    data: str | os.PathLike = DEFAULT_STORE,
    split: str = "test",
    out: str | os.PathLike | None = None,
    *,
    batch_size: int = 512,
    min_agreement: float | None = None,
    max_prob_delta: float | None = None,
    threads: int | None = None,
    warn: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> EvaluationReport:
    """Compare the ONNX model with its checkpoint on one split; tolerances left None take the
    defaults for the model's kind (see `tolerances`). Writes evaluation.json and
    confusion_matrix.png into `out` (default: the model's folder); files there that qdkit did not
    write are replaced only with `overwrite` (qdkit.outputs)."""
    warn = warn or (lambda msg: None)
    t0 = time.perf_counter()
    predictor = OnnxModel(model, threads=threads, batch_size=batch_size, warn=warn)
    out_dir = output_folder(out if out is not None else predictor.path.parent)
    json_path = output_file(
        out_dir / JSON_NAME, "report", overwrite=overwrite, ours=lambda p: is_qdkit_json(p, "confusion_matrix_axes")
    )
    png_path = output_file(out_dir / PNG_NAME, "picture", overwrite=overwrite, ours=is_qdkit_png)
    limits = tolerances(predictor.metadata, min_agreement, max_prob_delta)
    ckpt_path, sha = resolve_checkpoint(predictor, checkpoint, warn)
    net, arrays, names = _reference(predictor, ckpt_path, data, split)
    comparison = _compare(predictor, net, arrays, batch_size, threads)
    figures = _figures(predictor, ckpt_path, sha, data, split, names, comparison, limits)
    figures["seconds"] = round(time.perf_counter() - t0, 3)
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(figures, indent=1, allow_nan=True) + "\n")
    plot_confusion(
        comparison.confusion(len(names)),
        names,
        png_path,
        title=f"{Path(predictor.path).name} on {split}: accuracy {figures['onnx_accuracy']:.2%}",
    )
    return EvaluationReport(figures, json_path, png_path)


def _reference(
    predictor: OnnxModel, ckpt_path: Path, data: str | os.PathLike, split: str
) -> tuple[Any, Any, list[str]]:
    """(the checkpoint's model, the split's arrays, the store's class names), once both models are
    known to classify the store's classes in its order and the split holds drawings."""
    from qdkit.checkpoint import load_checkpoint, model_from_checkpoint
    from qdkit.data.store import open_store

    try:
        net, ckpt = model_from_checkpoint(load_checkpoint(ckpt_path))
    except QdkitError:
        raise
    except Exception as e:
        raise QdkitError(f"{ckpt_path}: cannot rebuild the model ({first_line(e)})") from e
    store = open_store(data)
    arrays = store.split(split)
    names = list(store.class_names)
    # A foreign model's class names are indices: only their number can be checked.
    check_classes(predictor.path, predictor.class_names, names, data, same_names=predictor.is_qdkit)
    if list(ckpt["class_names"]) != names:
        raise QdkitError(f"{ckpt_path}: its classes are not the store's ({data}) in the same order")
    if len(arrays) == 0:
        raise QdkitError(f"{data}: split {split!r} is empty")
    return net, arrays, names


@dataclass
class _Comparison:
    """Both models' top-1 classes on every drawing of the split, their true labels, and the parity."""

    onnx_pred: np.ndarray
    torch_pred: np.ndarray
    labels: np.ndarray
    parity: Parity

    def confusion(self, classes: int) -> np.ndarray:
        """Rows = true class, columns = onnxruntime's top-1."""
        confusion = np.zeros((classes, classes), np.int64)
        np.add.at(confusion, (self.labels, self.onnx_pred), 1)
        return confusion


def _compare(predictor: OnnxModel, net: Any, arrays: Any, batch_size: int, threads: int | None) -> _Comparison:
    """Every drawing of `arrays` through the ONNX model and the PyTorch one, batch by batch."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    n = len(arrays)
    onnx_pred = np.empty(n, np.int64)
    torch_pred = np.empty(n, np.int64)
    parity = Parity()
    for s in range(0, n, batch_size):
        x = np.array(arrays.images[s : s + batch_size])  # a writable copy: torch refuses read-only memory
        o_logits, o_probs = predictor.run(x)
        assert o_probs is not None
        t_logits, t_probs = torch_outputs(net, x)
        onnx_pred[s : s + len(x)] = parity.add(t_logits, t_probs, o_logits, o_probs)
        torch_pred[s : s + len(x)] = t_logits.argmax(1)
    return _Comparison(onnx_pred, torch_pred, np.asarray(arrays.labels, np.int64), parity)


def _figures(
    predictor: OnnxModel,
    ckpt_path: Path,
    sha: str,
    data: str | os.PathLike,
    split: str,
    names: list[str],
    comparison: _Comparison,
    limits: tuple[float, float | None],
) -> dict[str, Any]:
    """evaluation.json's figures, all but `seconds`."""
    onnx_pred, torch_pred, labels, parity = (
        comparison.onnx_pred,
        comparison.torch_pred,
        comparison.labels,
        comparison.parity,
    )
    min_agreement, max_prob_delta = limits
    confusion = comparison.confusion(len(names))
    support = confusion.sum(1)
    return {
        "model": str(predictor.path),
        "checkpoint": str(ckpt_path),
        "checkpoint_sha256": sha,
        "data": str(data),
        "split": split,
        "drawings": len(labels),
        "class_names": names,
        "onnx_accuracy": float((onnx_pred == labels).mean()),
        "torch_accuracy": float((torch_pred == labels).mean()),
        "top1_agreement": parity.agreement,
        "disagreements": int((onnx_pred != torch_pred).sum()),
        "max_abs_logit_delta": parity.max_abs_logit_delta,
        "max_abs_prob_delta": parity.max_abs_prob_delta,
        "tolerances": {"min_agreement": min_agreement, "max_prob_delta": max_prob_delta},
        "quantization": predictor.metadata.get("quantization"),
        # NaN/inf (non-finite outputs) fail even where |Δprobability| is not gated.
        "passed": parity.within(min_agreement=min_agreement, max_prob_delta=max_prob_delta),
        "per_class_accuracy": {
            c: (float(confusion[i, i] / support[i]) if support[i] else None) for i, c in enumerate(names)
        },
        "per_class_support": {c: int(support[i]) for i, c in enumerate(names)},
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_axes": "rows = true class, columns = onnxruntime's top-1, in class_names order",
    }


def plot_confusion(confusion: np.ndarray, names: list[str], path: Path, title: str = "") -> Path:
    """Rows normalised to the true class's count (colour), raw counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(names)
    rows = confusion.sum(1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, float), where=rows > 0)
    side = min(24.0, max(5.0, 0.5 * k + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=110)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted (onnxruntime)")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    ax.text(
                        j,
                        i,
                        str(confusion[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8 if k > 12 else 10,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": PNG_SOFTWARE})
    plt.close(fig)
    return path
