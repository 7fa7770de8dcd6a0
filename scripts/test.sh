#!/usr/bin/env bash
# Set up, then run the whole test suite (real Ray, real MLflow, real Fashion-MNIST; slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
