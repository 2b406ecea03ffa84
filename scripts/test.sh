#!/usr/bin/env bash
# Create .venv if missing, install qdkit with its dev and kserve extras (the KServe SDK is a real
# client the tests use), then: ruff (lint + format), mypy,
# import-linter, the test suite. Extra arguments go to pytest (scripts/test.sh -k convert -x).
set -euo pipefail
cd "$(dirname "$0")/.."
QDKIT_EXTRAS=dev,kserve
source scripts/_venv.sh
ruff check qdkit tests scripts
ruff format --check qdkit tests scripts
mypy qdkit scripts
lint-imports --no-cache  # the import direction of .importlinter
exec python -m pytest -q "$@"
