#!/usr/bin/env bash
# Set up, then run the whole test suite (real Ray, real MLflow, real Fashion-MNIST; slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # spinning OpenMP threads starve the tests beside them
.venv/bin/python -m pytest -q "$@"
