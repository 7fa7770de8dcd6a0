#!/usr/bin/env bash
# Set up mae-ablate from nothing: the real Fashion-MNIST (where apt offers it), a virtual
# environment in .venv with the tested versions pinned by constraints.txt, and the package itself.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's dataset-fashion-mnist (real Fashion-MNIST, 30 MB)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST not found at $FMNIST; install Debian's dataset-fashion-mnist or set data.root" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
echo "setup: installing pinned dependencies (first time: a few minutes, several GB for torch)"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
echo "setup: done; the CLI is .venv/bin/ablate"
