"""The strokes ensemble of a Triton repository that `qdkit export --triton DIR` writes, beside the
classifier DIR/<name>/ (qdkit.deploy.triton):

    DIR/<name>_rasterize/config.pbtxt, 1/model.py   Python backend (qdkit.deploy.tritonbackend.RasterizeModel):
                                                     drawings BYTES [N, 1] -> pixels UINT8 [N, 1, 28, 28]
    DIR/<name>_strokes/config.pbtxt, labels.txt      ensemble: drawings -> rasterize -> <name>, giving
                                                     probabilities and logits FP32 [N, classes] and
                                                     bitmaps UINT8 [N, 1, 28, 28]

The rasterize step gives the same pixels twice: `pixels` for the classifier and, only where the
client asks for it, `bitmaps` for the ensemble's output (Triton 2.51's ensemble deadlocks when one
tensor is both a step's input and an ensemble output that a request leaves out).

A drawing is one BYTES element: JSON, the format of POST /predict — a stroke list (raw strokes in
any range, simplified first) or {"drawing": [...], "simplified": true}. A client asks for the
outputs it wants (v2 `outputs`); `bitmaps` is the 28x28 picture the model saw.
"""

from __future__ import annotations

import os
from pathlib import Path

from qdkit.constants import SIDE
from qdkit.deploy.tritonbackend import BITMAPS, DRAWINGS
from qdkit.errors import QdkitError
from qdkit.inference.v2spec import INPUT_NAME, OUTPUT_DATATYPE, check_name
from qdkit.outputs import output_file, write_text


def ensemble_names(name: str) -> tuple[str, str]:
    """(the rasterize step, the ensemble) for the classifier `name`."""
    return f"{name}_rasterize", f"{name}_strokes"


def _batching(max_batch: int, queue_delay_us: int) -> str:
    return f"""max_batch_size: {int(max_batch)}
dynamic_batching {{
  max_queue_delay_microseconds: {int(queue_delay_us)}
}}"""


def rasterize_config(name: str, max_batch: int, queue_delay_us: int) -> str:
    from qdkit.deploy.triton import MARKER

    rasterize, _ = ensemble_names(check_name(name))
    return f"""{MARKER}
name: "{rasterize}"
backend: "python"
{_batching(max_batch, queue_delay_us)}
input [
  {{
    name: "{DRAWINGS}"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }}
]
output [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_UINT8
    dims: [ 1, {SIDE}, {SIDE} ]
  }},
  {{
    name: "{BITMAPS}"
    data_type: TYPE_UINT8
    dims: [ 1, {SIDE}, {SIDE} ]
  }}
]
instance_group [
  {{
    count: 1
    kind: KIND_CPU
  }}
]
"""


def ensemble_config(name: str, classes: int, max_batch: int) -> str:
    from qdkit.deploy.triton import MARKER

    rasterize, strokes = ensemble_names(check_name(name))
    return f"""{MARKER}
name: "{strokes}"
platform: "ensemble"
max_batch_size: {int(max_batch)}
input [
  {{
    name: "{DRAWINGS}"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }}
]
output [
  {{
    name: "probabilities"
    data_type: TYPE_{OUTPUT_DATATYPE}
    dims: [ {classes} ]
    label_filename: "labels.txt"
  }},
  {{
    name: "logits"
    data_type: TYPE_{OUTPUT_DATATYPE}
    dims: [ {classes} ]
  }},
  {{
    name: "{BITMAPS}"
    data_type: TYPE_UINT8
    dims: [ 1, {SIDE}, {SIDE} ]
  }}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "{rasterize}"
      model_version: -1
      input_map {{ key: "{DRAWINGS}" value: "{DRAWINGS}" }}
      output_map {{ key: "{INPUT_NAME}" value: "{INPUT_NAME}" }}
      output_map {{ key: "{BITMAPS}" value: "{BITMAPS}" }}
    }},
    {{
      model_name: "{name}"
      model_version: -1
      input_map {{ key: "{INPUT_NAME}" value: "{INPUT_NAME}" }}
      output_map {{ key: "probabilities" value: "probabilities" }}
      output_map {{ key: "logits" value: "logits" }}
    }}
  ]
}}
"""


def _paths(out_dir: str | os.PathLike, name: str) -> tuple[Path, Path, Path, Path, Path]:
    """(rasterize config, its model.py, its empty version folder marker, ensemble config, ensemble labels)."""
    rasterize, strokes = ensemble_names(check_name(name))
    root = Path(out_dir)
    return (
        root / rasterize / "config.pbtxt",
        root / rasterize / "1" / "model.py",
        root / strokes / "1",
        root / strokes / "config.pbtxt",
        root / strokes / "labels.txt",
    )


def check_ensemble_target(out_dir: str | os.PathLike, name: str, overwrite: bool) -> None:
    """qdkit's replace rule (qdkit.deploy.triton.check_target) for the ensemble's files."""
    from qdkit.deploy.triton import _written_by_qdkit

    r_config, r_model, _, e_config, e_labels = _paths(out_dir, name)
    ours = _written_by_qdkit(e_config)
    output_file(r_config, "Triton config", overwrite=overwrite, ours=_written_by_qdkit, option="--triton")
    output_file(r_model, "Triton model.py", overwrite=overwrite, ours=_written_by_qdkit, option="--triton")
    output_file(e_config, "Triton config", overwrite=overwrite, ours=_written_by_qdkit, option="--triton")
    output_file(e_labels, "labels file", overwrite=overwrite, ours=lambda _: ours, option="--triton")


def write_ensemble(
    out_dir: str | os.PathLike, name: str, class_names: list[str], max_batch: int, overwrite: bool = False
) -> None:
    """Write the rasterize step and the ensemble beside the classifier `name` (its configs last)."""
    from qdkit.deploy.triton import model_py
    from qdkit.inference.v2spec import QUEUE_DELAY_US

    check_ensemble_target(out_dir, name, overwrite)
    r_config, r_model, e_version, e_config, e_labels = _paths(out_dir, name)
    for folder in (r_model.parent, e_version):
        try:
            folder.mkdir(parents=True, exist_ok=True)  # an ensemble has an empty version folder
        except OSError as e:
            raise QdkitError(f"{folder}: cannot create folder ({e.strerror})") from None
    write_text(r_model, model_py("RasterizeModel"))
    write_text(r_config, rasterize_config(name, max_batch, QUEUE_DELAY_US))
    write_text(e_labels, "".join(f"{c}\n" for c in class_names))
    write_text(e_config, ensemble_config(name, len(class_names), max_batch))
