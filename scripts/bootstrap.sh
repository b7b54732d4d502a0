#!/usr/bin/env bash
# Create .venv with locodiff and its dependencies, idempotently.
#
# torch: by default the CPU wheel (torch==2.13.0) is installed, so that a machine without a GPU
# never downloads a multi-GB CUDA build. To bring your own torch (e.g. a CUDA build), set
# LOCODIFF_TORCH to the pip requirement you want ("torch==2.5.1", or "skip" to keep the torch
# already installed in the environment); any torch >= 2.2 works.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LOCODIFF_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_REQ=${LOCODIFF_TORCH:-torch==2.13.0}
stamp="$VENV/.locodiff-installed"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16) $TORCH_REQ"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ "$TORCH_REQ" != "skip" ]; then
  "$VENV/bin/python" -m pip install -q "$TORCH_REQ"
fi
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "$want" > "$stamp"
echo "locodiff installed in $VENV"
