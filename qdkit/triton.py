"""A Triton Inference Server model repository for an exported qdkit model (`qdkit export --triton DIR`).

    DIR/<name>/config.pbtxt     onnxruntime backend, dynamic batching, the qdkit tensor contract
    DIR/<name>/labels.txt       one class name per line (Triton's classification extension)
    DIR/<name>/1/model.onnx     the model, copied

Triton (or KServe with the Triton runtime) then serves the same Open Inference Protocol (v2) that
`qdkit serve` speaks, under the same model name, so one client talks to either.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from qdkit.constants import SIDE
from qdkit.errors import QdkitError, first_line
from qdkit.files import atomic_path

DEFAULT_NAME = "qdkit"        # the model name in v2 URLs, for `qdkit serve` and for the repository
MAX_BATCH = 64                # Triton's max_batch_size, the same default as `qdkit serve --max-batch`
QUEUE_DELAY_US = 1000         # how long Triton may hold a request to fill a batch (as `qdkit serve`)
MARKER = "# written by qdkit export --triton"  # the first line of config.pbtxt: a repository qdkit wrote
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class TritonRepository:
    folder: Path          # DIR/<name>
    config: Path
    model: Path
    labels: Path

    def summary(self) -> str:
        return f"wrote Triton model repository {self.folder} (config.pbtxt, labels.txt, 1/model.onnx)"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise QdkitError(f"model name {name!r}: use letters, digits, '_', '-' or '.' (at most 64)")
    return name


def config_text(name: str, class_names: list[str], max_batch: int = MAX_BATCH,
                queue_delay_us: int = QUEUE_DELAY_US) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) for a qdkit ONNX model."""
    classes = len(class_names)
    return f"""{MARKER}
name: "{check_name(name)}"
platform: "onnxruntime_onnx"
max_batch_size: {int(max_batch)}
input [
  {{
    name: "pixels"
    data_type: TYPE_UINT8
    dims: [ 1, {SIDE}, {SIDE} ]
  }}
]
output [
  {{
    name: "logits"
    data_type: TYPE_FP32
    dims: [ {classes} ]
  }},
  {{
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ {classes} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {int(queue_delay_us)}
}}
instance_group [
  {{
    count: 1
    kind: KIND_CPU
  }}
]
"""


def model_class_names(model: str | os.PathLike) -> list[str]:
    """The class names in an exported qdkit model's metadata."""
    import onnx

    from qdkit.onnxmodel import parse_metadata

    model = Path(model)
    if not model.is_file():
        raise QdkitError(f"{model}: no such model file")
    try:
        proto = onnx.load(os.fspath(model), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for a file that is not a model
        raise QdkitError(f"{model}: not an ONNX model ({first_line(e)})") from None
    names = parse_metadata({p.key: p.value for p in proto.metadata_props}).get("class_names")
    if not isinstance(names, list) or not names:
        raise QdkitError(f"{model}: no qdkit metadata (class names); export it with `qdkit export`")
    return [str(c) for c in names]


def write_repository(model: str | os.PathLike, out_dir: str | os.PathLike, name: str = DEFAULT_NAME,
                     max_batch: int = MAX_BATCH, overwrite: bool = False) -> TritonRepository:
    """Write OUT_DIR/<name>/ for `model` (an exported qdkit ONNX file) in one rename (see check_target)."""
    model = Path(model)
    class_names = model_class_names(model)
    if any("\n" in c for c in class_names):
        raise QdkitError(f"{model}: a class name holds a line break; labels.txt takes one name per line")
    folder = check_target(out_dir, name, overwrite)
    with atomic_path(folder) as tmp:
        (tmp / "1").mkdir(parents=True)
        shutil.copyfile(model, tmp / "1" / "model.onnx")
        (tmp / "labels.txt").write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")
        (tmp / "config.pbtxt").write_text(config_text(name, class_names, max_batch), encoding="utf-8")
    return TritonRepository(folder, folder / "config.pbtxt", folder / "1" / "model.onnx", folder / "labels.txt")


def check_target(out_dir: str | os.PathLike, name: str = DEFAULT_NAME, overwrite: bool = False) -> Path:
    """OUT_DIR/<name>; checked before any work starts. A repository an earlier `qdkit export --triton`
    wrote is replaced (like qdkit's other outputs); anything else there only with `overwrite`."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise QdkitError(f"{out_dir}: not a folder (--triton takes the folder of a model repository)")
    folder = Path(out_dir) / check_name(name)
    if (folder.exists() or folder.is_symlink()) and not overwrite and not _written_by_qdkit(folder):
        raise QdkitError(f"{folder}: already exists and qdkit did not write it (pass --overwrite to replace it)")
    return folder


def _written_by_qdkit(folder: Path) -> bool:
    try:
        with open(folder / "config.pbtxt", encoding="utf-8", errors="replace") as f:
            return folder.is_dir() and not folder.is_symlink() and f.readline().rstrip("\n") == MARKER
    except OSError:
        return False
