"""Values more than one module must agree on, defined once (a foundation: imports nothing of qdkit)."""

from __future__ import annotations

from pathlib import Path

SIDE = 28  # a Quick Draw bitmap is SIDE x SIDE uint8 pixels
DEFAULT_STORE = Path("data/quickdraw.h5")  # the HDF5 store `qdkit convert --h5` writes by default
NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file
QDKIT_VERSION = "0.1.0"  # the package version (setup.cfg reads it from here)
