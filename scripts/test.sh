#!/usr/bin/env bash
# Run the test suite; "no tests collected" (pytest exit code 5) is a failure, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${LOCODIFF_VENV:-.venv}
# the Blender renderer's tests use .venv-blender (scripts/bootstrap_blender.sh) when it exists
if [ -z "${LOCODIFF_BLENDER_PYTHON:-}" ] && [ -x .venv-blender/bin/python ]; then
  export LOCODIFF_BLENDER_PYTHON="$PWD/.venv-blender/bin/python"
fi
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
