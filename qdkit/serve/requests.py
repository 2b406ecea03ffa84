"""Request bodies -> model inputs, each mistake an ApiError naming the field.

`/predict` JSON: {"drawing": [[xs, ys], ...]} or {"drawings": [[[xs, ys], ...], ...]}, optionally
"simplified": true (the strokes already are the dataset's simplified 0..255 strokes: rendered as
they are, giving the official bitmap byte for byte; otherwise they are raw strokes in any coordinate
range and go through the published simplification first). Images: PNG, JPEG, GIF, BMP or WebP,
normalised like `qdkit predict` (qdkit.images).
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from qdkit.errors import first_line
from qdkit.inference.v2spec import MAX_DRAWINGS
from qdkit.serve.errors import ApiError
from qdkit.strokes import Drawing, StrokeError, parse_drawing, simplified

MAX_IMAGE_PIXELS = 4096 * 4096  # an upload decoding to more pixels is refused before it is decoded
MAX_IMAGE_SIDE = 16384  # ... and one longer than this on a side (a 1x700,000 strip is no drawing)
IMAGE_DECODERS = 2  # uploads decoded at once (each up to ~200 MB at MAX_IMAGE_PIXELS); others wait their turn
_DECODING = threading.BoundedSemaphore(IMAGE_DECODERS)
IMAGE_FORMATS = ["PNG", "JPEG", "GIF", "BMP", "WEBP"]
PREDICT_KEYS = ("drawing", "drawings", "simplified")
DATASET_KEYS = ("word", "countrycode", "timestamp", "recognized", "key_id")  # of an ndjson line: ignored


MAX_JSON_DEPTH = 1024  # nesting levels of a JSON body (orjson's limit; a request needs 7 at most)


def parse_json(body: bytes) -> Any:
    """A JSON body: orjson (fast, nesting capped at MAX_JSON_DEPTH), else the standard library's
    reading and error words (UTF-16 text, NaN, integers over 64 bits), never a RecursionError."""
    if not body:
        raise ApiError(400, "body: empty (send JSON)")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if "depth limit" in str(e) or "recursion" in str(e):
            raise ApiError(400, f"body: JSON nested deeper than {MAX_JSON_DEPTH:,} levels") from None
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "body: not UTF-8 text (send JSON)") from None
    except RecursionError:
        raise ApiError(400, f"body: JSON nested deeper than {MAX_JSON_DEPTH:,} levels") from None
    except ValueError as e:
        raise ApiError(400, f"body: malformed JSON ({first_line(e, 100)})") from None


MAX_TOP_K = 1000
INVERT_CHOICES = ("auto", "yes", "no")


def predict_query(query: Mapping[str, str]) -> tuple[int, bool, str]:
    """(top_k, bitmap, invert) of /predict's query string: ?top_k=3&bitmap=false&invert=auto."""
    unknown = sorted(set(query) - {"top_k", "bitmap", "invert"})
    if unknown:
        raise ApiError(400, f"{unknown[0]} (query): unknown parameter (expected top_k, bitmap, invert)")
    raw_k = query.get("top_k", "3")
    try:
        top_k = int(raw_k)
    except ValueError:
        top_k = 0
    if not 1 <= top_k <= MAX_TOP_K:
        raise ApiError(400, f"top_k (query): {raw_k!r} is not a whole number from 1 to {MAX_TOP_K}")
    raw_bitmap = query.get("bitmap", "false").lower()
    if raw_bitmap not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ApiError(400, f"bitmap (query): {raw_bitmap!r} is not true or false")
    invert = query.get("invert", "auto")
    if invert not in INVERT_CHOICES:
        raise ApiError(400, f"invert (query): {invert!r} is not one of {', '.join(INVERT_CHOICES)}")
    return top_k, raw_bitmap in ("true", "1", "yes", "on"), invert


def predict_drawings(body: Any) -> tuple[list[Drawing], bool]:
    """The drawings of a /predict JSON body, and whether it was a single one ("drawing")."""
    if not isinstance(body, dict):
        raise ApiError(400, f"body: a JSON object with 'drawing' or 'drawings' expected, got {_kind(body)}")
    unknown = sorted(set(body) - set(PREDICT_KEYS) - set(DATASET_KEYS))
    if unknown:
        raise ApiError(
            400,
            f"{unknown[0]}: unknown field (expected {', '.join(PREDICT_KEYS)}, or a Quick Draw ndjson line's "
            f"{', '.join(DATASET_KEYS)})",
        )
    simplified = body.get("simplified", False)
    if not isinstance(simplified, bool):
        raise ApiError(400, f"simplified: true or false expected, got {_kind(simplified)}")
    if ("drawing" in body) == ("drawings" in body):
        raise ApiError(400, "body: give exactly one of 'drawing' (one drawing) or 'drawings' (a list)")
    if "drawing" in body:
        return [_drawing(body["drawing"], "drawing", simplified)], True
    many = body["drawings"]
    if not isinstance(many, list):
        raise ApiError(400, f"drawings: a list of drawings expected, got {_kind(many)}")
    if not many:
        raise ApiError(400, "drawings: empty list")
    if len(many) > MAX_DRAWINGS:
        raise ApiError(400, f"drawings: {len(many)} drawings (at most {MAX_DRAWINGS} per request)")
    return [_drawing(d, f"drawings[{i}]", simplified) for i, d in enumerate(many)], False


def _drawing(strokes: Any, field: str, simplified: bool) -> Drawing:
    # parse_drawing also takes ndjson objects ({"drawing": ...}); the API takes stroke lists only.
    if not isinstance(strokes, list):
        raise ApiError(400, f"{field}: a list of strokes [[xs, ys], ...] expected, got {_kind(strokes)}")
    try:
        return parse_drawing(strokes, simplified=simplified)
    except StrokeError as e:
        raise stroke_error(field, e) from None
    except (OverflowError, RecursionError) as e:  # a 400-digit integer coordinate
        raise ApiError(400, f"{field}: a coordinate too large for a number ({type(e).__name__})") from None


def stroke_error(field: str, e: Exception) -> ApiError:
    message = str(e)  # "drawing has no strokes" -> "drawings[2]: has no strokes"
    return ApiError(400, f"{field}: {message.removeprefix('drawing ')}")


def field_of(index: int, single: bool) -> str:
    return "drawing" if single else f"drawings[{index}]"


def needs_simplifying(drawings: list[Drawing]) -> bool:
    return any(not d.simplified for d in drawings)


def simplify_all(drawings: list[Drawing], single: bool) -> list[Drawing]:
    """Each raw drawing simplified now, while its request is read (a worker thread), so a drawing
    that cannot be simplified, or would cost more than simplify's caps, is this request's 400
    naming it, before it can join a batch with other requests' drawings."""
    out = []
    for i, d in enumerate(drawings):
        try:
            out.append(simplified(d))
        except StrokeError as e:
            raise stroke_error(field_of(i, single), e) from None
    return out


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def image_to_bitmap(data: bytes, invert: str = "auto") -> np.ndarray:
    """An uploaded image -> a (28, 28) uint8 drawing, as `qdkit predict` reads image files."""
    from PIL import Image, ImageOps

    from qdkit.images import image_to_drawing

    if not data:
        raise ApiError(400, "image: empty upload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                width, height = im.size  # from the header: checked before any pixel is decoded
                if width * height > MAX_IMAGE_PIXELS:
                    raise ApiError(
                        413,
                        f"image: {width}x{height} pixels is over the limit of "
                        f"{MAX_IMAGE_PIXELS:,} (a decompression-bomb guard)",
                    )
                if max(width, height) > MAX_IMAGE_SIDE:
                    raise ApiError(
                        413, f"image: {width}x{height} pixels is longer than {MAX_IMAGE_SIDE:,} pixels on a side"
                    )
                with _DECODING:  # memory: at most IMAGE_DECODERS images decoded at a time
                    return image_to_drawing(ImageOps.exif_transpose(im), invert)
    except ApiError:
        raise
    except Image.UnidentifiedImageError:
        raise ApiError(415, f"image: not an image ({', '.join(IMAGE_FORMATS)} expected)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(413, "image: too many pixels (a decompression-bomb guard)") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:  # truncated or corrupt data
        raise ApiError(400, f"image: unreadable ({first_line(e, 100)})") from None
