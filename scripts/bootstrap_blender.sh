#!/usr/bin/env bash
# Create .venv-blender: a Python with bpy (Blender as a module, ~375 MB from PyPI) for the Blender
# renderer (data.renderer = "blender"). bpy pins numpy < 2, so it gets its own environment; the
# renderer runs its worker script there (LOCODIFF_BLENDER_PYTHON, set by scripts/test.sh and the
# Makefile when this folder exists). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LOCODIFF_BLENDER_VENV:-.venv-blender}
PYTHON=${PYTHON:-python3}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import bpy" >/dev/null 2>&1; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "bpy>=4.2"
"$VENV/bin/python" -c "import bpy; print('bpy', bpy.app.version_string, 'installed in $VENV')"
