#!/usr/bin/env bash
# Create .venv if missing, install qdkit with its dev extra, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
exec python -m pytest -q "$@"
