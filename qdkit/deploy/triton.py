"""A Triton Inference Server model repository for an exported qdkit model (`qdkit export --triton DIR`).

    DIR/<name>/config.pbtxt     onnxruntime backend (or, with backend="python", Triton's Python
                                backend running 1/model.py), dynamic batching, the qdkit tensor contract
    DIR/<name>/labels.txt       one class name per line (Triton's classification extension)
    DIR/<name>/1/model.onnx     the model, copied
    DIR/<name>/1/model.py       backend="python" only: qdkit.deploy.tritonbackend.ClassifierModel
    DIR/<name>_rasterize/, DIR/<name>_strokes/   the strokes ensemble (qdkit.deploy.tritonensemble)

Triton (or KServe with the Triton runtime) then serves the same Open Inference Protocol (v2) that
`qdkit serve` speaks, under the same model name, so one client talks to either.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from qdkit.errors import QdkitError
from qdkit.files import atomic_path
from qdkit.inference.onnxmodel import is_qdkit_model, model_class_names
from qdkit.inference.v2spec import (
    DEFAULT_NAME,
    INPUT_DATATYPE,
    INPUT_DIMS,
    INPUT_NAME,
    MAX_DRAWINGS,
    OUTPUT_DATATYPE,
    OUTPUTS,
    QUEUE_DELAY_US,
    check_name,
)
from qdkit.outputs import output_file, output_folder, write_text

BACKENDS = ("onnxruntime", "python")  # Triton's onnxruntime backend; its Python backend + onnxruntime
# Drawings per request, as `qdkit serve` takes them; Triton's dynamic batcher forms batches up to
# this many drawings too.
MAX_BATCH_SIZE = MAX_DRAWINGS
MARKER = "# written by qdkit export --triton"  # the first line of config.pbtxt: a repository qdkit wrote


@dataclass(frozen=True)
class TritonRepository:
    folder: Path  # DIR/<name>
    config: Path
    model: Path
    labels: Path
    backend: str = "onnxruntime"

    @property
    def model_py(self) -> Path:
        return self.model.parent / "model.py"

    def summary(self) -> str:
        from qdkit.deploy.tritonensemble import ensemble_names

        files = "config.pbtxt, labels.txt, 1/model.onnx" + (", 1/model.py" if self.backend == "python" else "")
        rasterize, strokes = ensemble_names(self.folder.name)
        return (
            f"wrote Triton model repository {self.folder} ({files}; {self.backend} backend) "
            f"and the strokes ensemble {strokes} (first step {rasterize}, Python backend)"
        )


def config_text(
    name: str,
    class_names: list[str],
    max_batch: int = MAX_BATCH_SIZE,
    queue_delay_us: int = QUEUE_DELAY_US,
    backend: str = "onnxruntime",
) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) for a qdkit ONNX model, run by
    Triton's onnxruntime backend or (backend="python") by 1/model.py in its Python backend.
    KIND_AUTO: one instance on each GPU where Triton sees GPUs, one on the CPU elsewhere, so the
    same repository runs on both."""
    if backend not in BACKENDS:
        raise QdkitError(f"Triton backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    runtime = 'platform: "onnxruntime_onnx"' if backend == "onnxruntime" else 'backend: "python"'
    classes = len(class_names)
    labels = {"probabilities": '\n    label_filename: "labels.txt"'}  # Triton's classification extension
    outputs = ",\n".join(
        f"""  {{
    name: "{output}"
    data_type: TYPE_{OUTPUT_DATATYPE}
    dims: [ {classes} ]{labels.get(output, "")}
  }}"""
        for output in OUTPUTS
    )
    return f"""{MARKER}
name: "{check_name(name)}"
{runtime}
max_batch_size: {int(max_batch)}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_{INPUT_DATATYPE}
    dims: [ {", ".join(map(str, INPUT_DIMS))} ]
  }}
]
output [
{outputs}
]
dynamic_batching {{
  max_queue_delay_microseconds: {int(queue_delay_us)}
}}
instance_group [
  {{
    count: 1
    kind: KIND_AUTO
  }}
]
"""


def write_repository(
    model: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str = DEFAULT_NAME,
    max_batch: int = MAX_BATCH_SIZE,
    overwrite: bool = False,
    backend: str = "onnxruntime",
) -> TritonRepository:
    """Write OUT_DIR/<name>/ for `model` (an exported qdkit ONNX file) and the strokes ensemble
    beside it; each file atomically, each config last (a config.pbtxt marks a complete model).
    See check_target for what is replaced."""
    from qdkit.deploy.tritonensemble import write_ensemble

    model = Path(model)
    class_names = model_class_names(model)
    if any("\n" in c for c in class_names):
        raise QdkitError(f"{model}: a class name holds a line break; labels.txt takes one name per line")
    repo = check_target(out_dir, name, overwrite, backend)
    try:
        repo.model.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QdkitError(f"{repo.model.parent}: cannot create folder ({e.strerror})") from None
    with atomic_path(repo.model) as tmp:
        shutil.copyfile(model, tmp)
    if backend == "python":
        write_text(repo.model_py, model_py("ClassifierModel"))
    elif _written_by_qdkit(repo.model_py):
        repo.model_py.unlink()  # from an earlier --triton-backend python export
    write_text(repo.labels, "".join(f"{c}\n" for c in class_names))
    write_text(repo.config, config_text(name, class_names, max_batch, backend=backend))
    write_ensemble(repo.folder.parent, name, class_names, max_batch, overwrite)
    return repo


def model_py(model_class: str) -> str:
    """A Python-backend model.py: qdkit.deploy.tritonbackend's `model_class`, from the server's qdkit."""
    return (
        f"{MARKER}\n"
        f"# Triton's Python backend runs qdkit.deploy.tritonbackend.{model_class}: the server's Python needs qdkit\n"
        f"# (pip install qdkit; see qdkit's docs/serve.md, Triton)\n"
        f"from qdkit.deploy.tritonbackend import {model_class} as TritonPythonModel  # noqa: F401\n"
    )


def check_target(
    out_dir: str | os.PathLike, name: str = DEFAULT_NAME, overwrite: bool = False, backend: str = "onnxruntime"
) -> TritonRepository:
    """The repository's paths, checked before any work starts by qdkit's replace rule (qdkit.outputs):
    files an earlier `qdkit export --triton` wrote are refreshed, anything else needs `overwrite`,
    and no folder is ever replaced."""
    from qdkit.deploy.tritonensemble import check_ensemble_target

    if backend not in BACKENDS:
        raise QdkitError(f"--triton-backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    folder = output_folder(out_dir, option="--triton") / check_name(name)
    if folder.exists() and not folder.is_dir():
        raise QdkitError(f"{folder}: is a file; --triton names the folder that holds the model repository")
    repo = TritonRepository(
        folder, folder / "config.pbtxt", folder / "1" / "model.onnx", folder / "labels.txt", backend
    )
    ours = _written_by_qdkit(repo.config)
    output_file(repo.config, "Triton config", overwrite=overwrite, ours=_written_by_qdkit, option="--triton")
    output_file(repo.labels, "labels file", overwrite=overwrite, ours=lambda _: ours, option="--triton")
    output_file(repo.model, "ONNX model", overwrite=overwrite, ours=is_qdkit_model, option="--triton")
    if backend == "python":
        output_file(repo.model_py, "Triton model.py", overwrite=overwrite, ours=_written_by_qdkit, option="--triton")
    check_ensemble_target(folder.parent, name, overwrite)
    return repo


def _written_by_qdkit(config: Path) -> bool:
    try:
        with open(config, encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n") == MARKER
    except OSError:
        return False
