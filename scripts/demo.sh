#!/usr/bin/env bash
# Sets up .venv, then erases a style from the built-in SynthCanvas demo model through the example workflow
# (scripts/demo.py): before / after grid, adapter and metrics in out/demo/
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"
