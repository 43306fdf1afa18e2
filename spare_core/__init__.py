"""SPARE core: concept erasure by saliency-localised sparse LoRA and self-distillation.

Everything here is plain torch except the ``comfyui`` package, the one door to ComfyUI (see its docstring).
"""

__version__ = "0.1.0"  # keep equal to pyproject.toml [project].version
