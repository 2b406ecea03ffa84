"""Images <-> the drawing convention (28x28 uint8, 0 = background, 255 = ink).

PNGs on disk are black ink on white, as the original project wrote them; the writer and the
reader of that inversion sit side by side here and nowhere else knows about it.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from qdkit.constants import SIDE
from qdkit.errors import QdkitError, first_line


def drawing_to_png_image(drawing: np.ndarray) -> Image.Image:
    """A drawing as the PIL image qdkit writes: grayscale, black ink on white."""
    return Image.fromarray(255 - np.asarray(drawing, np.uint8).reshape(SIDE, SIDE), mode="L")


def write_png(drawing: np.ndarray, path: str | os.PathLike) -> None:
    # compress_level=1: 28x28 files gain nothing from harder compression, and it is 3x faster.
    drawing_to_png_image(drawing).save(path, format="PNG", compress_level=1)


# --- reading: any image -> the drawing convention -------------------------------------------------
#
# A 28x28 image is taken as an existing Quick Draw bitmap: converted to grayscale and inverted if it
# is dark ink on light, never cropped or resampled, so a PNG written by `write_png` reads back as
# exactly the drawing it was made from. Any other size goes through `_fit`, which reproduces how the
# Quick Draw bitmaps were made: the drawing's bounding box is scaled (aspect kept) so its longer
# side spans 26 of the 28 pixels (the real bitmaps keep a 1-pixel margin), centred, drawn at 4x and
# box-downsampled (antialiased), with the strokes thickened to Quick Draw's ~1.5-2.5 px pen when
# they would otherwise vanish, and the contrast stretched so the darkest ink is 255.

INVERT_CHOICES = ("auto", "yes", "no")
_CANVAS = 4 * SIDE  # the drawing is fitted at 4x (112x112), then box-downsampled to 28x28
_SPAN = 4 * (SIDE - 2)  # its longer side spans 104 canvas pixels = 26 output pixels
_BIG = 2048 * 2048  # images with more pixels are max-pooled in uint8 before anything else
_PEN = 3  # strokes thinner than ~5 canvas pixels (~1.2 px at 28x28) are thickened
_WORN = 0.2  # a stroke is as wide as the erosions it takes to leave 20% of its ink

# What counts as ink when fitting (intensities 0..255 after the background is subtracted):
_MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation, for Gaussian noise
_MIN_PEAK = 16.0  # the darkest ink must stand this far above the background ...
_PEAK_NOISE = 3  # ... and this many noise levels: otherwise nothing is drawn
_INK_FLOOR = 40.0  # after stretching to 255: fainter pixels are paper texture or JPEG ringing
_INK_NOISE = 4  # ... as are pixels within this many (stretched) noise levels
_INK_CEILING = 128.0  # ... but the floor never rises above half the ink


def _border(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])


def is_dark_on_light(gray: np.ndarray) -> bool:
    """Whether a grayscale image (0 = black) shows dark ink on a light background.

    The background is what the frame's outer ring mostly shows (the real bitmaps never have ink
    there; drawings that fill the frame only touch it). When neither clearly light (> 191) nor
    clearly dark (< 64) pixels make up most of the ring — grey paper, a shadowed photo — the
    whole image decides: background outweighs ink.
    """
    ring = _border(gray)
    if 2 * np.count_nonzero(ring > 191) > ring.size:
        return True
    if 2 * np.count_nonzero(ring < 64) > ring.size:
        return False
    return 2 * np.count_nonzero(gray > 127) > gray.size


def _wants_invert(gray: np.ndarray, invert: str | bool) -> bool:
    if invert is True or invert == "yes":
        return True
    if invert is False or invert == "no":
        return False
    if invert != "auto":
        raise ValueError(f"invert must be one of {INVERT_CHOICES}, got {invert!r}")
    return is_dark_on_light(gray)


def _to_gray(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> a 2-D array, 0 = black .. 255 = white (uint8 where the source is 8-bit).

    Transparency is flattened onto white, so dark strokes on a transparent sheet read as a drawing.
    """
    mode = image.mode
    if mode == "L" and "transparency" not in image.info:
        return np.asarray(image)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(image, np.float32)
        top = float(a.max()) if a.size else 0.0
        return a * (255.0 / (65535.0 if top > 255 and top <= 65535 else max(top, 255.0)))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("L"))
    if mode in ("1", "P", "RGB", "RGBX"):
        return np.asarray(image.convert("L"))
    return np.asarray(image.convert("RGB").convert("L"))  # CMYK, YCbCr, LAB, HSV, ...


def _filter3(a: np.ndarray, op: np.ufunc) -> np.ndarray:
    """A 3x3 neighbourhood filter, separable: `op` over each 3-row, then each 3-column window;
    outside the image counts as background (0). np.maximum: grayscale dilation; np.logical_and:
    binary erosion. (numpy's sliding_window_view(...).max() gives the same, 30x slower; PIL's
    Max/MinFilter 20x slower and different at the edges, measured on the 112x112 canvas.)"""
    p = np.pad(a, 1)
    rows = op.reduce([p[:-2], p[1:-1], p[2:]])
    return op.reduce([rows[:, :-2], rows[:, 1:-1], rows[:, 2:]])


def _fit(ink: np.ndarray) -> np.ndarray:
    """Ink intensities (any size, 0 = background) -> a Quick-Draw-style 28x28 uint8 drawing."""
    ink = ink.astype(np.float32)
    ring = _border(ink)
    background = float(np.median(ring))
    # The noise level: the ring's median deviation (robust to strokes that touch the frame).
    noise = _MAD_TO_SIGMA * float(np.median(np.abs(ring - background)))
    ink -= background  # a grey paper or a lit photo: its background becomes 0
    np.maximum(ink, 0, out=ink)
    peak = float(ink.max()) if ink.size else 0.0
    if peak < max(_MIN_PEAK, _PEAK_NOISE * noise):  # nothing drawn (or only noise)
        return np.zeros((SIDE, SIDE), np.uint8)
    ink *= 255.0 / peak
    # Paper texture, sensor noise, JPEG ringing and the faintest antialiasing are not ink.
    ink[ink < min(_INK_CEILING, max(_INK_FLOOR, _INK_NOISE * noise * 255.0 / peak))] = 0
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    if rows.size == 0:
        return np.zeros((SIDE, SIDE), np.uint8)
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = ink.shape
    scale = _SPAN / max(h, w)
    k = int(1 / scale)
    if k >= 2:
        # Max-pool by a whole factor first: a thin pen line survives the reduction instead of
        # being averaged away with the paper around it.
        ink = _max_pool(ink, k)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.Resampling.BOX if nh <= ink.shape[0] else Image.Resampling.BILINEAR
    fitted = np.asarray(Image.fromarray(ink, mode="F").resize((nw, nh), resample), np.float32)
    canvas = np.zeros((_CANVAS, _CANVAS), np.float32)
    top, left = (_CANVAS - nh) // 2, (_CANVAS - nw) // 2
    canvas[top : top + nh, left : left + nw] = fitted
    # Stroke width: how many 3x3 erosions it takes to wear most of the ink away.
    mask = canvas >= 128
    area, erosions = int(mask.sum()), 0
    while mask.sum() > _WORN * area and erosions < _PEN:
        mask, erosions = _filter3(mask, np.logical_and), erosions + 1
    for _ in range(_PEN - erosions):
        canvas = _filter3(canvas, np.maximum)
    small = canvas.reshape(SIDE, 4, SIDE, 4).mean(axis=(1, 3))
    top_value = float(small.max())
    if top_value <= 0:
        return np.zeros((SIDE, SIDE), np.uint8)
    return np.clip(np.rint(small * (255.0 / top_value)), 0, 255).astype(np.uint8)


def image_to_drawing(image: Image.Image | np.ndarray, invert: str | bool = "auto") -> np.ndarray:
    """A PIL image (any size and mode) or a 2-D/3-D pixel array -> a (28, 28) uint8 drawing.

    `invert`: "auto" decides from the image whether it is dark ink on light (then inverted);
    "yes" always inverts (dark ink on light), "no" never (light ink on dark, like the store).
    """
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
            a = a if a.dtype == np.uint8 else np.clip(a, 0, 255).astype(np.uint8)
            image = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        elif a.ndim == 2:
            gray = a.astype(np.float32) if a.dtype != np.uint8 else a
            return _gray_to_drawing(np.asarray(gray), invert)
        else:
            raise ValueError(f"an image array must be (H, W) or (H, W, 1|3|4), got shape {a.shape}")
    return _gray_to_drawing(_to_gray(image), invert)


def _gray_to_drawing(gray: np.ndarray, invert: str | bool) -> np.ndarray:
    if gray.size == 0:
        raise ValueError("the image has no pixels")
    if gray.dtype != np.uint8 and not np.isfinite(gray).all():
        raise ValueError("the image has NaN or infinite pixels")
    flip = _wants_invert(gray, invert)
    if gray.shape == (SIDE, SIDE):  # already a Quick Draw bitmap: never re-cropped or resampled
        g = gray if gray.dtype == np.uint8 else np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return 255 - g if flip else np.array(g)
    if gray.dtype == np.uint8:
        ink = 255 - gray if flip else gray
        if ink.size > _BIG:
            # A photo-sized image: max-pool it in uint8 first (the same step _fit takes, done before
            # the float copies, so a 12000x8000 image costs ~100 MB, not ~1 GB).
            ink = _max_pool(ink, int(np.ceil(np.sqrt(ink.size / _BIG))))
        return _fit(ink.astype(np.float32))
    return _fit((255.0 - gray) if flip else gray.astype(np.float32))


def _max_pool(a: np.ndarray, k: int) -> np.ndarray:
    """Block maximum by a whole factor `k` (the array padded with zeros, evenly on both sides).

    A side shorter than `k` is reduced to one row (column) by its maximum instead of being padded
    up to `k`: the same result, without materialising a k-tall canvas (a 1x200,000 image padded
    to 1,923 rows was 1.5 GB of float32)."""
    kh, kw = min(k, a.shape[0]), min(k, a.shape[1])
    ph, pw = -a.shape[0] % kh, -a.shape[1] % kw
    if ph or pw:
        a = np.pad(a, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    return a.reshape(a.shape[0] // kh, kh, a.shape[1] // kw, kw).max(axis=(1, 3))


# The header of every PNG `write_png` makes: 28x28, 8-bit grayscale, not interlaced.
_QDKIT_PNG_HEAD = (
    b"\x89PNG\r\n\x1a\n"
    + (13).to_bytes(4, "big")
    + b"IHDR"
    + SIDE.to_bytes(4, "big")
    + SIDE.to_bytes(4, "big")
    + bytes([8, 0, 0, 0, 0])
)
_HARMLESS_CHUNKS = {b"IDAT", b"IEND", b"pHYs", b"tEXt", b"zTXt", b"iTXt", b"tIME", b"gAMA", b"sRGB", b"cHRM"}


def _read_small_png(path: str) -> np.ndarray | None:
    """The pixels of a 28x28 8-bit grayscale PNG, decoded by PIL's zlib/PNG-filter decoder without
    Image.open's format probing (~1.7x faster per file); None for any other file, which then takes
    the general path. Kept because it shows end to end: `scripts/bench_predict.py --pngs 4000` on
    2 cores, `qdkit predict` took 0.87 s with it and 1.01 s without (1.16x)."""
    try:
        with open(path, "rb") as f:
            data = f.read(65536)
    except OSError:
        return None
    if not data.startswith(_QDKIT_PNG_HEAD):
        return None
    pos, end, idat = 33, len(data), []
    while pos + 8 <= end:
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind not in _HARMLESS_CHUNKS or pos + 12 + length > end:
            return None  # transparency, a palette, a truncated or oversized file: the general path
        if kind == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    try:
        image = Image.frombytes("L", (SIDE, SIDE), b"".join(idat), "zip", "L")
    except (ValueError, OSError):
        return None
    return np.frombuffer(image.tobytes(), np.uint8).reshape(SIDE, SIDE)


def read_drawing(path: str | os.PathLike, invert: str | bool = "auto") -> np.ndarray:
    """Any image file PIL reads -> a (28, 28) uint8 drawing (0 = background, 255 = ink).

    A PNG written by `write_png` comes back exactly as the drawing it was made from. Every failure
    (missing, empty, not an image, truncated, too large) is a QdkitError naming the file.
    """
    path = os.fspath(path)
    if invert not in (True, False) + INVERT_CHOICES:
        raise ValueError(f"invert must be one of {INVERT_CHOICES}, got {invert!r}")
    if path.endswith((".png", ".PNG")):
        gray = _read_small_png(path)
        if gray is not None:
            return _gray_to_drawing(gray, invert)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's notes on odd files would be multi-line noise
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse both alike.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.size == (SIDE, SIDE) and im.mode == "L":  # the fast path: qdkit's own PNGs
                    im.load()
                    gray = np.frombuffer(im.tobytes(), np.uint8).reshape(SIDE, SIDE)
                else:
                    im = ImageOps.exif_transpose(im) if im.format in ("JPEG", "MPO", "TIFF", "WEBP") else im
                    gray = _to_gray(im)
        return _gray_to_drawing(gray, invert)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        limit = Image.MAX_IMAGE_PIXELS
        raise QdkitError(f"{path}: image too large (over {limit:,} pixels; a decompression-bomb guard)") from e
    except FileNotFoundError as e:
        raise QdkitError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise QdkitError(f"{path}: is a folder, not an image") from e
    except PermissionError as e:
        raise QdkitError(f"{path}: permission denied") from e
    except Image.UnidentifiedImageError as e:
        if os.path.getsize(path) == 0:
            raise QdkitError(f"{path}: empty file (0 bytes)") from e
        raise QdkitError(f"{path}: not an image (no format PIL reads)") from e
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        # truncated or corrupt data; PIL raises several types for it
        raise QdkitError(f"{path}: unreadable image ({first_line(e, 120)})") from e
