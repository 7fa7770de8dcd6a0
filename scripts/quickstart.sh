#!/usr/bin/env bash
# Set up, then run the quickstart study end to end on real Fashion-MNIST (about 3 minutes on 2 cores after set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ablate run studies/quickstart.yaml "$@"
