"""What /docs shows: the request and response shapes. The routes parse bodies themselves (one JSON
parse, qdkit.strokes' validation, one error per field), so these describe rather than validate."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Guess(BaseModel):
    class_: str = Field(alias="class", examples=["cat"])
    probability: float = Field(examples=[0.93])


class Prediction(BaseModel):
    top: list[Guess]
    bitmap: list[list[int]] | None = Field(
        None, description="With ?bitmap=true: the 28x28 picture the model saw (rows of 0..255, 255 = ink)."
    )


class PredictResponse(Prediction):
    predictions: list[Prediction] | None = Field(
        None, description="For a {'drawings': [...]} batch (then `top` is absent)."
    )


class Limits(BaseModel):
    max_strokes: int
    max_points: int
    max_drawings: int
    max_image_pixels: int
    max_body_bytes: int
    max_batch: int


class ModelFacts(BaseModel):
    name: str
    classes: list[str]
    model_name: str | None
    run_name: str | None
    epoch: int | None
    val_accuracy: float | None
    test_accuracy: float | None
    exported_at: str | None
    quantized: bool
    file: str
    qdkit_version: str
    limits: Limits


_STROKES: dict[str, Any] = {
    "type": "array",
    "description": "Strokes [[xs, ys], ...] (a third array of times per stroke is allowed).",
    "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
}

PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "drawing": _STROKES,
                        "drawings": {
                            "type": "array",
                            "items": _STROKES,
                            "description": "A batch: one prediction each.",
                        },
                        "simplified": {
                            "type": "boolean",
                            "default": False,
                            "description": "true: the strokes are the dataset's simplified 0..255 strokes, "
                            "rendered as they are (the official bitmap); false: raw strokes in "
                            "any coordinate range, simplified with the published recipe first.",
                        },
                    },
                },
                "example": {"drawing": [[[10, 60, 110], [10, 80, 10]], [[30, 90], [50, 50]]]},
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG, GIF, BMP or WebP"}
                    },
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string", "enum": ["pixels"]},
                                    "shape": {"type": "array", "items": {"type": "integer"}, "example": [1, 1, 28, 28]},
                                    "datatype": {"type": "string", "enum": ["UINT8"]},
                                    "data": {
                                        "type": "array",
                                        "items": {},
                                        "description": "N*784 integers 0..255, flat or nested",
                                    },
                                },
                            },
                        },
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"name": {"type": "string", "enum": ["logits", "probabilities"]}},
                            },
                        },
                    },
                },
            }
        },
    }
}

PREDICT_QUERY: dict[str, Any] = {
    "parameters": [
        {
            "name": "top_k",
            "in": "query",
            "required": False,
            "description": "How many classes to return (1..1000).",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 3},
        },
        {
            "name": "bitmap",
            "in": "query",
            "required": False,
            "description": "Also return the 28x28 picture the model saw.",
            "schema": {"type": "boolean", "default": False},
        },
        {
            "name": "invert",
            "in": "query",
            "required": False,
            "description": "Images only: dark ink on light (yes), light on dark (no), or decide per image (auto).",
            "schema": {"type": "string", "enum": ["auto", "yes", "no"], "default": "auto"},
        },
    ]
}
