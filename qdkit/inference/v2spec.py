"""A qdkit model as the Open Inference Protocol ("v2", KServe/Triton) presents it, defined once for
`qdkit serve` (qdkit.serve.v2) and the Triton repository (qdkit.deploy.triton), so a v2 client sees the
same model name, tensor names, datatypes and shapes from either."""

from __future__ import annotations

import re

from qdkit.constants import SIDE
from qdkit.errors import QdkitError
from qdkit.inference.onnxmodel import INPUT_NAME, OUTPUT_NAMES

DEFAULT_NAME = "qdkit"  # the model's name in /v2/models/<name>
VERSION = "1"  # the one version served
MAX_BATCH = 64  # drawings per onnxruntime call in qdkit serve (--max-batch); a request may carry more
MAX_DRAWINGS = 1024  # drawings in one request: qdkit serve's limit and the Triton config's max_batch_size
QUEUE_DELAY_US = 1000  # how long a batch may wait for more requests: serve's --max-wait, Triton's queue delay
INPUT_DATATYPE = "UINT8"  # pixels, 0 = background, 255 = ink
INPUT_DIMS = [1, SIDE, SIDE]  # per drawing, after the batch axis
OUTPUTS = OUTPUT_NAMES  # FP32, [classes] per drawing
OUTPUT_DATATYPE = "FP32"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

__all__ = [
    "DEFAULT_NAME",
    "INPUT_DATATYPE",
    "INPUT_DIMS",
    "INPUT_NAME",
    "MAX_BATCH",
    "MAX_DRAWINGS",
    "QUEUE_DELAY_US",
    "OUTPUTS",
    "OUTPUT_DATATYPE",
    "VERSION",
    "check_name",
]


def check_name(name: str) -> str:
    """`name` if it can be a model name in a URL and a repository folder, else a one-line QdkitError."""
    if not _NAME.match(name):
        raise QdkitError(f"model name {name!r}: use letters, digits, '_', '-' or '.' (at most 64)")
    return name
