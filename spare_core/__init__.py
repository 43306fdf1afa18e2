"""SPARE core: concept erasure by saliency-localised sparse LoRA and self-distillation.

Everything here is plain torch except two packages (see their docstrings): ``comfyui``, the one door to ComfyUI
that the nodes go through, and ``runner``, the tools that boot ComfyUI themselves (the batch runner, the headless
ComfyUI of the tests and scripts). The runner imports the door; the door and the core never import the runner.
"""

__version__ = "0.1.0"  # keep equal to pyproject.toml [project].version
