# Sourced by demo.sh and test.sh: create .venv if missing and install qdkit into it.
# QDKIT_EXTRAS picks the extras: test.sh installs ".[dev]" (pytest, Playwright, tritonclient, ruff,
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
# Installed already when the stamp is newer than setup.cfg and names these extras (or dev, a superset).
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || { [ "$have" != "$QDKIT_EXTRAS" ] && [ "$have" != "dev" ]; }; then
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
