"""SPARE core: concept erasure by saliency-localised sparse LoRA and self-distillation.

Everything here is plain torch except ``comfy_bridge``, the one module that talks to ComfyUI.
"""

__version__ = "0.1.0"  # keep equal to pyproject.toml [project].version
