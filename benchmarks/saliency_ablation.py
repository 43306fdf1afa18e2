"""Which modules to adapt: contrast saliency (default) vs plain SalUn saliency vs every module, on the 64-channel
SD1.5-architecture test model with random prompts, all else equal. Prints, per selection, how far the forget
prediction moved to the surrogate and how far the retain prediction drifted, on held-out noise and uniform
timesteps (the measure of tests/test_erasure_training.py).

    python benchmarks/saliency_ablation.py [--steps 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from devkit import model_factory
from devkit.erasure import predict, random_prompts
from spare_core.runner import headless

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    args = parser.parse_args()
    headless.boot(Path(tempfile.mkdtemp(prefix="spare-ablation-")))
    from spare_core import comfyui as door
    from spare_core.adapter import ErasureAdapter
    from spare_core.config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig
    from spare_core.lora import adaptable_modules
    from spare_core.saliency import SaliencyMap, compute_saliency
    from spare_core.samples import generate_samples
    from spare_core.timesteps import select_timesteps
    from spare_core.trainer import train_adapter

    model = model_factory.small_sd15_model(seed=0)
    prompts = random_prompts()
    samples = SampleConfig(samples_per_prompt=2, steps=4, width=64, height=64)
    with door.session.denoiser_session(model) as denoiser:
        forget = generate_samples(denoiser, prompts.forget, prompts.uncond, samples, seed=0)
        retain = generate_samples(denoiser, prompts.retain, prompts.uncond, samples, seed=1)
        timesteps = select_timesteps(denoiser, forget, prompts.surrogate, TimestepConfig(), seed=0)
        every = tuple(adaptable_modules(denoiser.unet))
        selections = {
            "contrast saliency (default), top half": compute_saliency(denoiser, forget, prompts.retain,
                                                                      SaliencyConfig(), 0),
            "plain SalUn saliency, top half": compute_saliency(denoiser, forget, prompts.retain,
                                                                SaliencyConfig(retain_contrast=0.0), 0),
            "every module (no saliency)": SaliencyMap({n: 1.0 for n in every}, every, {n: None for n in every},
                                                      1.0, 1.0),
        }
        trained = {name: train_adapter(denoiser, saliency, timesteps, forget, prompts.surrogate, retain,
                                       TrainConfig(steps=args.steps, learning_rate=args.learning_rate), seed=0)
                   for name, saliency in selections.items()}

    generator = torch.Generator().manual_seed(12345)
    forget_x0, retain_x0 = forget.latents.repeat(4, 1, 1, 1), retain.latents.repeat(4, 1, 1, 1)
    noise = torch.randn(forget_x0.shape, generator=generator)
    indices = torch.randint(0, 1000, (forget_x0.shape[0],), generator=generator)
    teacher_forget = predict(door, model, forget_x0, noise, indices, prompts.forget)
    teacher_surrogate = predict(door, model, forget_x0, noise, indices, prompts.surrogate)
    teacher_retain = predict(door, model, retain_x0, noise, indices, prompts.retain)
    gap = (teacher_forget - teacher_surrogate).norm()
    print(f"{args.steps} steps, lr {args.learning_rate}, rank 4; held-out noise, uniform timesteps")
    print("| selection | modules | forget gap change | retain drift / initial gap |")
    print("|---|---|---|---|")
    for name, result in trained.items():
        erased = door.patches.apply_adapter(model, ErasureAdapter(result.state_dict), 1.0)
        remaining = (predict(door, erased, forget_x0, noise, indices, prompts.forget) - teacher_surrogate).norm()
        drift = (predict(door, erased, retain_x0, noise, indices, prompts.retain) - teacher_retain).norm()
        print(f"| {name} | {len(selections[name].selected)} | {100 * (remaining / gap - 1):+.1f} % | "
              f"{100 * drift / gap:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
