"""The dev kit: what the tests, scripts and benchmarks share and the pack itself never needs.

- ``model_factory``: small random-weight models in Stable Diffusion's shapes, built with ComfyUI's own classes;
- ``erasure``: raw-conditioning helpers for running the core on a ComfyUI MODEL (random prompts, predictions);
- ``workflow_format``: API-format prompts to and from the UI format ComfyUI's editor saves;
- ``pack_calls``: counting the encodings and sample draws the pack makes inside ComfyUI.

ComfyUI itself is booted by the pack's ``spare_core.runner.headless``. The repository root is on the path of the
project's virtual environment (``scripts/setup_env.sh`` writes a ``.pth`` file), so ``import devkit`` works from
any entry point without path edits.
"""
