# Sourced by demo.sh and test.sh: create .venv if missing and install qdkit into it.
# QDKIT_EXTRAS picks the extras: test.sh installs ".[dev,kserve]" (pytest, Playwright, tritonclient, ruff,
# mypy, ...); demo.sh sets QDKIT_EXTRAS="" for the runtime dependencies only. The stamp remembers what
# was installed, so test.sh after demo.sh adds the dev extra, and neither reinstalls needlessly.
# torch==2.13.0 is the CPU build; a GPU user installs torch first (see README) and sets QDKIT_TORCH.
QDKIT_TORCH="${QDKIT_TORCH:-torch==2.13.0}"
QDKIT_EXTRAS="${QDKIT_EXTRAS-dev}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=".venv/.qdkit-installed"
have="$(cat "$stamp" 2>/dev/null || true)"
# Installed already when the stamp is newer than setup.cfg, setup.py and the C kernel (the install builds
# it) and names these extras (or the test install dev,kserve, a superset).
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
    || [ qdkit/strokes/_simplify.c -nt "$stamp" ] || { [ "$have" != "$QDKIT_EXTRAS" ] && [ "$have" != "dev,kserve" ]; }; then
    python -m pip install -q --upgrade pip
    # shellcheck disable=SC2086  # word splitting intended: QDKIT_TORCH may carry pip options
    python -m pip install -q $QDKIT_TORCH
    if [ -n "$QDKIT_EXTRAS" ]; then
        python -m pip install -q -e ".[$QDKIT_EXTRAS]"
    else
        python -m pip install -q -e .
    fi
    printf '%s\n' "$QDKIT_EXTRAS" > "$stamp"
fi

# Triton, for `qdkit triton` and tests/deploy/test_triton_server.py (with the dev extra, Linux x86_64 only):
# - nvidia-pytriton's tritonserver 2.51 and its Python backend, installed without its Python library's
#   dependencies: that library pins numpy<2, and qdkit uses only the server it ships;
# - .venv-triton, the server's Python for the Python-backend models: numpy<2 (Triton 2.51's Python
#   backend stub is built against numpy 1.x) with qdkit (editable) and what those models import.
QDKIT_PYTRITON="nvidia-pytriton==0.7.0"
QDKIT_TRITON_PYTHON_PACKAGES="numpy==1.26.4 onnxruntime==1.32.0 orjson==3.13.0 cairocffi==1.7.1"
if [[ ",$QDKIT_EXTRAS," == *,dev,* ]] && [ "$(uname -sm)" = "Linux x86_64" ]; then
    triton_stamp=".venv-triton/.qdkit-installed"
    if ! python -m pip show -q nvidia-pytriton >/dev/null 2>&1; then
        python -m pip install -q --no-deps "$QDKIT_PYTRITON"
    fi
    if [ ! -f "$triton_stamp" ] || [ scripts/_venv.sh -nt "$triton_stamp" ]; then
        [ -x .venv-triton/bin/python ] || python -m venv .venv-triton
        # shellcheck disable=SC2086  # word splitting intended: a list of pinned packages
        .venv-triton/bin/python -m pip install -q $QDKIT_TRITON_PYTHON_PACKAGES
        .venv-triton/bin/python -m pip install -q --no-deps -e .
        touch "$triton_stamp"
    fi
fi
