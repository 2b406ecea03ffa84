"""Images <-> the drawing convention (28x28 uint8, 0 = background, 255 = ink).

PNGs on disk are black ink on white, as the original project wrote them; the writer and the
reader of that inversion sit side by side here and nowhere else knows about it.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

SIDE = 28


def drawing_to_png_image(drawing: np.ndarray) -> Image.Image:
    """A drawing as the PIL image qdkit writes: grayscale, black ink on white."""
    return Image.fromarray(255 - np.asarray(drawing, np.uint8).reshape(SIDE, SIDE), mode="L")


def write_png(drawing: np.ndarray, path: str | os.PathLike) -> None:
    # compress_level=1: 28x28 files gain nothing from harder compression, and it is 3x faster.
    drawing_to_png_image(drawing).save(path, format="PNG", compress_level=1)
