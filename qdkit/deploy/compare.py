"""The one parity check: a candidate model's outputs against a reference's on the same drawings.

Export's gate (onnxruntime vs PyTorch), evaluate (ONNX vs its checkpoint, over a whole split) and
quantize's gate (int8 vs fp32) all measure with `Parity`, and differ only in what they require of
it (`Parity.within`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Parity:
    """Running figures over batches of (reference, candidate) outputs; NaN or inf fail every check."""

    drawings: int = 0
    agreeing: int = 0  # drawings whose top-1 class is the same
    max_abs_logit_delta: float = 0.0
    max_rel_logit_delta: float = 0.0  # |Δlogit| / max(1, |reference logit|)
    max_abs_prob_delta: float = 0.0
    max_prob_sum_error: float = 0.0  # |sum(candidate probabilities) - 1|
    min_prob: float = math.inf
    finite: bool = True

    def add(self, ref_logits: np.ndarray, ref_probs: np.ndarray, logits: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Fold in one batch; returns the candidate's top-1 classes of it."""
        top = logits.argmax(1)
        self.drawings += len(logits)
        self.agreeing += int((top == ref_logits.argmax(1)).sum())
        if not (np.isfinite(logits).all() and np.isfinite(probs).all()):
            self.finite = False
        if len(logits):
            d_logit = np.abs(logits - ref_logits)
            self.max_abs_logit_delta = max(self.max_abs_logit_delta, float(d_logit.max()))
            rel = float((d_logit / np.maximum(1.0, np.abs(ref_logits))).max())
            self.max_rel_logit_delta = max(self.max_rel_logit_delta, rel)
            self.max_abs_prob_delta = max(self.max_abs_prob_delta, float(np.abs(probs - ref_probs).max()))
            self.max_prob_sum_error = max(self.max_prob_sum_error, float(np.abs(probs.sum(1) - 1).max()))
            self.min_prob = min(self.min_prob, float(probs.min()))
        if not self.finite:
            self.max_abs_logit_delta = self.max_rel_logit_delta = self.max_abs_prob_delta = math.inf
        return top

    @property
    def agreement(self) -> float:
        return self.agreeing / self.drawings if self.drawings else float("nan")

    @property
    def sane(self) -> bool:
        """The candidate's probabilities are a softmax: finite, >= 0, summing to 1 (to 1e-3)."""
        return self.finite and self.min_prob >= 0 and self.max_prob_sum_error <= 1e-3

    def within(
        self,
        *,
        min_agreement: float | None = None,
        max_rel_logit_delta: float | None = None,
        max_prob_delta: float | None = None,
    ) -> bool:
        """Whether every given requirement holds (and the outputs are finite)."""
        return bool(
            self.finite
            and (min_agreement is None or self.agreement >= min_agreement)
            and (max_rel_logit_delta is None or self.max_rel_logit_delta <= max_rel_logit_delta)
            and (max_prob_delta is None or self.max_abs_prob_delta <= max_prob_delta)
        )

    def figures(self) -> dict[str, Any]:
        return {
            "drawings": self.drawings,
            "top1_agreement": self.agreement,
            "max_abs_logit_delta": self.max_abs_logit_delta,
            "max_abs_prob_delta": self.max_abs_prob_delta,
        }


def torch_outputs(net: Any, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: (logits, probabilities) of a PyTorch model on uint8 (N, 28, 28) drawings."""
    import torch

    with torch.inference_mode():
        logits = net(torch.from_numpy(np.ascontiguousarray(pixels)).unsqueeze(1)).float()
        return logits.numpy(), torch.softmax(logits, dim=1).numpy()
