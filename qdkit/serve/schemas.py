"""What /docs shows: the request and response shapes. The routes parse bodies themselves (one JSON
parse, qdkit.strokes' validation, one error per field), so these describe rather than validate."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from qdkit.inference.v2spec import MAX_DRAWINGS
from qdkit.strokes import MAX_POINTS, MAX_RAW_COORD, MAX_STROKES


class Guess(BaseModel):
    class_: str = Field(alias="class", examples=["cat"])
    probability: float = Field(examples=[0.93])


class Prediction(BaseModel):
    top: list[Guess]
    bitmap: list[list[int]] | None = Field(
        None, description="With ?bitmap=true: the 28x28 picture the model saw (rows of 0..255, 255 = ink)."
    )


class PredictBatch(BaseModel):
    predictions: list[Prediction] = Field(description="For a {'drawings': [...]} batch: one per drawing, in order.")


PredictResponse = Prediction | PredictBatch


class ErrorResponse(BaseModel):
    error: str = Field(examples=["drawings[3]: stroke 0 has 2 xs but 1 ys"], description="<field>: <what is wrong>")


ERROR_TEXT = {
    400: "A bad request: the field named and what is wrong with it",
    404: "No such route, model or version",
    405: "The route does not take this method",
    413: "The body (after decompression) or an image is over the limit",
    415: "A Content-Type or Content-Encoding the route does not take, or an upload that is not an image",
    503: "Not ready: the batcher's queue is over its bound, or a batch has computed for too long",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route: the statuses it sends, each with the JSON error schema.
    400 is always there: a request no route can parse (e.g. a malformed Content-Length) gets it."""
    return {status: {"model": ErrorResponse, "description": ERROR_TEXT[status]} for status in sorted({400, *statuses})}


class Limits(BaseModel):
    max_strokes: int
    max_points: int
    max_drawings: int
    max_image_pixels: int
    max_image_side: int
    max_head_bytes: int
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


def _strokes(low: float, high: float) -> dict[str, Any]:
    numbers = {"type": "array", "minItems": 1, "items": {"type": "number", "minimum": low, "maximum": high}}
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_STROKES,
        "description": "Strokes [[xs, ys], ...] (a third array of times per stroke is allowed). The arrays "
        f"of a stroke must be equally long (JSON Schema cannot say so), {MAX_POINTS:,} points at most in all.",
        "items": {"type": "array", "minItems": 2, "maxItems": 3, "items": numbers},
    }


_STROKES = _strokes(-MAX_RAW_COORD, MAX_RAW_COORD)
_SIMPLIFIED_STROKES = _strokes(0, 255)
_DATASET_KEYS: dict[str, Any] = {
    key: {"description": "A field of a Quick Draw ndjson line: any value, ignored."}
    for key in ("word", "countrycode", "timestamp", "recognized", "key_id")
}
PREDICT_JSON: dict[str, Any] = {
    "type": "object",
    "description": "Exactly one of 'drawing' or 'drawings'. A whole Quick Draw ndjson line is accepted "
    '(its word, countrycode, timestamp, recognized and key_id are ignored): add "simplified": true '
    "to a line of the simplified dataset to have its strokes rendered as they are.",
    "properties": {
        "drawing": _STROKES,
        "drawings": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_DRAWINGS,
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
        **_DATASET_KEYS,
    },
    "additionalProperties": False,
    "oneOf": [{"required": ["drawing"]}, {"required": ["drawings"]}],
    "if": {"required": ["simplified"], "properties": {"simplified": {"const": True}}},
    "then": {"properties": {"drawing": _SIMPLIFIED_STROKES, "drawings": {"items": _SIMPLIFIED_STROKES}}},
}

PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": PREDICT_JSON,
                "example": {"drawing": [[[10, 60, 110], [10, 80, 10]], [[30, 90], [50, 50]]]},
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "additionalProperties": False,
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

_PARAMETERS: dict[str, Any] = {"type": "object", "additionalProperties": True}
INFER_JSON: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "description": "The JSON form. The binary tensor extension is taken too (any Content-Type): this JSON "
    "(without 'data') is then the body's first Inference-Header-Content-Length bytes and the N*784 pixel "
    "bytes follow it (inputs[0].parameters.binary_data_size). A Content-Encoding of gzip or deflate is "
    "decompressed (the body limit applies after it).",
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_output": {"type": "boolean", "default": False}},
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype", "data"],
                "properties": {
                    "name": {"type": "string", "enum": ["pixels"]},
                    "shape": {
                        "type": "array",
                        "prefixItems": [
                            {"type": "integer", "minimum": 1, "maximum": 1024},
                            {"const": 1},
                            {"const": 28},
                            {"const": 28},
                        ],
                        "items": False,
                        "minItems": 4,
                        "maxItems": 4,
                        "example": [1, 1, 28, 28],
                    },
                    "datatype": {"type": "string", "enum": ["UINT8"]},
                    "data": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0, "maximum": 255},
                        "description": "N*784 integers 0..255 (N from the shape), flat or nested, row-major",
                        "example": [0] * 784,
                    },
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "enum": ["logits", "probabilities"]},
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "binary_data": {"type": "boolean"},
                            "classification": {
                                "type": "integer",
                                "minimum": 0,
                                "description": "> 0: the top N as BYTES 'score:index[:label]'",
                            },
                        },
                    },
                },
            },
        },
    },
}
INFER_EXAMPLE = {
    "inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [0] * 784}],
    "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
}
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": INFER_JSON, "example": INFER_EXAMPLE},
        },
    }
}
_OUTPUT_TENSOR: dict[str, Any] = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string", "enum": ["FP32", "BYTES"]},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "data": {"type": "array", "items": {"type": ["number", "string"]}},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}},
    },
}
INFER_OK: dict[str, Any] = {
    "description": "The outputs: JSON, or with the binary tensor extension a JSON header of "
    "Inference-Header-Content-Length bytes followed by the binary tensors (application/octet-stream)",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model_name", "outputs"],
                "properties": {
                    "model_name": {"type": "string"},
                    "model_version": {"type": "string"},
                    "id": {"type": "string"},
                    "outputs": {"type": "array", "items": _OUTPUT_TENSOR},
                },
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
INDEX_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
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


def truthful_openapi(app: Any) -> None:
    """/openapi.json without FastAPI's 422 answers: the routes parse their own bodies, and every error
    they send (documented per route with error_responses) is a 400, 404, 405, 413 or 415."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = plain()
            for path in spec.get("paths", {}).values():
                for operation in path.values():
                    if isinstance(operation, dict):
                        operation.get("responses", {}).pop("422", None)
            components = spec.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi
