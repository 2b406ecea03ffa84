"""Getting and storing drawings: the Quick Draw formats on disk, download, synth, convert, render, and
the HDF5 store every later stage reads.

May import: the foundations (qdkit.errors, constants, files, outputs, workers, images) and
qdkit.strokes. Never a stage above it (inference, train, deploy, serve) nor the CLI.
"""

from __future__ import annotations

from qdkit._lazy import lazy_exports

__all__ = [
    "BatchLoader",
    "QuickDrawDataset",
    "Store",
    "StoreWriter",
    "convert",
    "download_classes",
    "find_class_files",
    "open_store",
    "render_files",
    "write_synth",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BatchLoader": ".loader",
        "QuickDrawDataset": ".loader",
        "Store": ".store",
        "StoreWriter": ".store",
        "open_store": ".store",
        "convert": ".convert",
        "download_classes": ".download",
        "find_class_files": ".bitmaps",
        "render_files": ".render",
        "write_synth": ".synth",
    },
)
