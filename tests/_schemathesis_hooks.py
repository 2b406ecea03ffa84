"""schemathesis hooks (SCHEMATHESIS_HOOKS) for tests/serve/test_serve_schema.py: the request constraints
that JSON Schema cannot state, and /openapi.json therefore states in words, applied to the
positive (schema-valid) cases only, so a schema-valid case is also a valid request:

- /predict strokes: the xs, ys (and ts) arrays of a stroke are equally long (the shorter ones are
  padded with their own last value, so no value the schema forbids is introduced);
- /v2 infer JSON: `data` holds shape[0] * 784 values (padded with the generated values, or zeros);
- /predict images: a `format: binary` image is an image (a small real PNG or JPEG where schemathesis
  did not use a real file sample of its own).

Negative cases are left as generated: whatever they break, the server must refuse them.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import schemathesis
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.transport.serialization import Binary


def _image(fmt: str) -> bytes:
    page = np.full((40, 40), 255, np.uint8)
    page[8:32, 18:22] = 0
    buf = io.BytesIO()
    Image.fromarray(page).save(buf, format=fmt)
    return buf.getvalue()


PNG, JPEG = _image("PNG"), _image("JPEG")


def _equal_strokes(drawing: Any) -> None:
    if not isinstance(drawing, list):
        return
    for stroke in drawing:
        if isinstance(stroke, list) and all(isinstance(a, list) and a for a in stroke):
            n = max(len(a) for a in stroke)
            for a in stroke:
                a.extend([a[-1]] * (n - len(a)))


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return case
    if any(component.mode.is_negative for component in meta.components.values()):
        return case
    path, body = case.operation.path, case.body
    if path == "/predict":
        media = case.media_type or ""
        if media.startswith("image/"):
            if not isinstance(body, Binary):  # a Binary is schemathesis' own file sample: a real image
                case.body = JPEG if "jpeg" in media else PNG
        elif media == "multipart/form-data" and isinstance(body, dict):
            body["image"] = Binary(PNG)
        elif isinstance(body, dict):
            _equal_strokes(body.get("drawing"))
            for drawing in body.get("drawings") or []:
                _equal_strokes(drawing)
    elif path.endswith("/infer") and isinstance(body, dict):
        for tensor in body.get("inputs") or []:
            shape, data = tensor.get("shape"), tensor.get("data")
            if isinstance(shape, list) and shape and isinstance(shape[0], (int, float)) and isinstance(data, list):
                n = int(shape[0]) * 784
                tensor["data"] = (data * (n // max(len(data), 1) + 1))[:n] if data else [0] * n
    return case
