"""Memory the saliency stage adds on top of everything before it, on a full-size SD1.5 UNet (float32, 64² px, so
it runs on a CPU). Prints the process's peak resident memory before and after one saliency draw.

    python benchmarks/saliency_memory.py

On a GPU the same figure is torch.cuda.max_memory_allocated; use benchmarks/speed.py there.
"""

from __future__ import annotations

import resource
import sys
import tempfile
from pathlib import Path

import speed  # benchmarks/speed.py: model building and conditioning
import torch

from spare_core.runner import headless


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> int:
    headless.boot(Path(tempfile.mkdtemp(prefix="spare-saliency-memory-")))
    from spare_core import comfyui as door
    from spare_core.config import SaliencyConfig, SampleConfig
    from spare_core.saliency import compute_saliency
    from spare_core.samples import generate_samples
    model = speed.build_model("sd15", "full", torch.float32)
    cond = speed.conditionings(door, model, "sd15", 64)
    with door.session.denoiser_session(model) as denoiser:
        forget = generate_samples(denoiser, cond["forget"], cond["uncond"],
                                  SampleConfig(samples_per_prompt=2, steps=2, width=64, height=64), seed=0)
        before = peak_rss_gb()
        compute_saliency(denoiser, forget, cond["retain"], SaliencyConfig(draws=1), seed=0)
        after = peak_rss_gb()
    weights = sum(p.numel() * p.element_size() for p in model.model.diffusion_model.parameters()) / 2**30
    print(f"full-size SD1.5 UNet, float32 weights {weights:.2f} GB: peak RSS {before:.2f} GB before saliency, "
          f"{after:.2f} GB after; saliency added {after - before:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
