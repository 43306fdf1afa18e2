"""Puts the SynthCanvas demo checkpoint into ComfyUI's models/checkpoints, so Load Checkpoint lists it.

From your ComfyUI folder, with the Python that runs ComfyUI (no GPU needed, nothing is downloaded):

    python custom_nodes/<this pack's folder>/scripts/install_demo_model.py

It assembles synthcanvas_demo.safetensors (about 250 MB, 10–30 s on a laptop CPU) from the weights shipped with
the pack; an existing file is kept. Refresh the browser page (or press R) and pick it in Load Checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Not resolved: a pack linked into custom_nodes should find the ComfyUI it is linked into.
PACK = Path(os.path.abspath(__file__)).parents[1]


def default_comfyui() -> Path | None:
    """The ComfyUI folder this pack is installed in: <ComfyUI>/custom_nodes/<pack>."""
    return PACK.parents[1] if PACK.parent.name == "custom_nodes" else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, default=default_comfyui(),
                        help="the ComfyUI folder (default: the one whose custom_nodes holds this pack)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild the file even if it exists")
    args = parser.parse_args(argv)
    if args.comfyui is None:
        parser.error(f"this pack is not inside a ComfyUI custom_nodes folder ({PACK}); pass --comfyui PATH")
    folder = args.comfyui.resolve() / "models" / "checkpoints"
    if not folder.is_dir():
        parser.error(f"--comfyui {args.comfyui}: no models/checkpoints folder there; give the ComfyUI folder itself")
    # The text encoder's tensor names and shapes come from this ComfyUI's own CLIP-L definition, built on the
    # meta device; CPU mode first, or ComfyUI's device probe stops a machine without an NVIDIA driver.
    sys.path[:0] = [str(args.comfyui.resolve()), str(PACK)]
    try:
        import comfy.cli_args
    except ImportError:
        parser.error(f"--comfyui {args.comfyui}: no ComfyUI there (its comfy package is missing)")
    comfy.cli_args.args.cpu = True
    from synthcanvas import demo_model

    target = folder / demo_model.CHECKPOINT_NAME
    if target.exists() and not args.overwrite:
        print(f"{target} already exists; nothing to do (--overwrite rebuilds it)")
        return 0
    print(f"assembling {demo_model.CHECKPOINT_NAME} (about 250 MB) from {demo_model.WEIGHTS.name} ...", flush=True)
    started = time.perf_counter()
    demo_model.build_checkpoint(target, overwrite=args.overwrite)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s; "
          f"refresh ComfyUI's page and choose it in Load Checkpoint (sample at 64x64)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
