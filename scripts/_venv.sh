# Sourced by demo.sh and test.sh: create .venv if missing and install qdkit into it.
# torch==2.13.0 is the CPU build; a GPU user installs torch first (see README) and sets QDKIT_TORCH.
QDKIT_TORCH="${QDKIT_TORCH:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=".venv/.qdkit-installed"
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
    python -m pip install -q --upgrade pip
    # shellcheck disable=SC2086  # word splitting intended: QDKIT_TORCH may carry pip options
    python -m pip install -q $QDKIT_TORCH
    python -m pip install -q -e ".[dev]"
    touch "$stamp"
fi
