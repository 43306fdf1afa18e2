#!/usr/bin/env bash
# Sets up .venv, then runs the example style-erasure workflow on the built-in test checkpoint (scripts/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"
