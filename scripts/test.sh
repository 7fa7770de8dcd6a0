#!/usr/bin/env bash
# Set up, then run the whole test suite (real Ray, real MLflow, real Fashion-MNIST; slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # spinning OpenMP threads starve the tests beside them
# Two test processes, a module each at a time (--dist loadfile keeps a module's fixtures in one
# process): most of an end-to-end test is waiting on Ray, subprocesses and sqlite, so two share
# two cores well (measured: 689 s -> 495 s; three: 547 s). The longest modules go first
# (tests/conftest.py, LONGEST_FIRST); --no-loadscope-reorder keeps that order.
.venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder "$@"
