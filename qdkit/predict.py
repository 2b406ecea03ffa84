"""The import path of qdkit 0.1's `Predictor` (`from qdkit.predict import Predictor`), kept for
users' code; qdkit itself imports from qdkit.inference."""

from __future__ import annotations

from qdkit.inference.batch import FileResults, predict_files
from qdkit.inference.predictor import Prediction, Predictor

__all__ = ["FileResults", "Prediction", "Predictor", "predict_files"]
