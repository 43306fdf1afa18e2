"""Stage 1 of SPARE: concept samples without a dataset; the frozen model draws its own latents for each prompt.

The stages run in this order (spare_core.comfyui.jobs): samples → saliency → timesteps → training → adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .config import SampleConfig
from .denoiser import Conditioning, Denoiser, draw_noise


@dataclass(frozen=True)
class ConceptSamples:
    """Clean latents (N, C, H, W) with the conditioning row of the prompt each one was drawn for, and that
    prompt's index in the prompt list (which surrogate line it pairs with)."""

    latents: torch.Tensor
    cond: Conditioning
    prompt_index: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.latents.shape[0] != len(self.cond):
            raise ValueError(f"{self.latents.shape[0]} latents but {len(self.cond)} conditioning rows")
        if self.prompt_index is None:
            object.__setattr__(self, "prompt_index", torch.zeros(len(self.cond), dtype=torch.long))

    def __len__(self) -> int:
        return self.latents.shape[0]

    def pick(self, count: int, generator: torch.Generator) -> "ConceptSamples":
        index = torch.randint(len(self), (count,), generator=generator)
        return ConceptSamples(self.latents[index.to(self.latents.device)], self.cond.select(index),
                              self.prompt_index[index])

    def surrogates(self, surrogate: Conditioning) -> Conditioning:
        """The surrogate row for each sample: its own prompt's line when there is one per prompt, else the one."""
        if len(surrogate) == 1:
            return surrogate.select(torch.zeros(len(self), dtype=torch.long))
        if int(self.prompt_index.max()) >= len(surrogate):
            raise ValueError(f"{len(surrogate)} surrogate prompts for samples of prompt "
                             f"#{int(self.prompt_index.max()) + 1}: give one surrogate line, or one per forget prompt")
        return surrogate.select(self.prompt_index)


def sampling_sigmas(denoiser: Denoiser, steps: int) -> torch.Tensor:
    """``steps`` sigmas evenly spaced over the model's own timestep indices, high to low, then 0."""
    index = torch.linspace(denoiser.num_timesteps - 1, 0, steps).round().long()
    sigmas = denoiser.sigmas.float().cpu()[index]
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@torch.no_grad()
def generate_samples(denoiser: Denoiser, prompts: Conditioning, uncond: Conditioning, config: SampleConfig,
                     seed: int, on_step: Callable[[int], None] = lambda step: None) -> ConceptSamples:
    """Euler sampling with classifier-free guidance, ``samples_per_prompt`` latents per prompt row."""
    generator = torch.Generator().manual_seed(seed)
    repeat = torch.arange(len(prompts)).repeat_interleave(config.samples_per_prompt)
    cond = prompts.select(repeat)
    count = len(cond)
    shape = (count, denoiser.latent_channels, *config.latent_size)
    sigmas = sampling_sigmas(denoiser, config.steps)
    x = draw_noise(shape, generator, denoiser.device) * sigmas[0]
    uncond_rows = uncond.select(torch.zeros(count, dtype=torch.long))
    both = Conditioning.cat([cond.to(denoiser.device, denoiser.dtype), uncond_rows.to(denoiser.device, denoiser.dtype)])
    x = euler_with_guidance(denoiser, x, sigmas, both, config.cfg, on_step)
    return ConceptSamples(x.float(), cond, repeat)


def euler_with_guidance(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, both: Conditioning, cfg: float,
                        on_step: Callable[[int], None] = lambda step: None) -> torch.Tensor:
    """Euler steps from sigmas[0] down to sigmas[-1] with classifier-free guidance. ``both`` holds one conditional
    row per latent, then as many unconditional rows."""
    count = len(x)
    conditional = both.select(torch.arange(count))
    for step, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        if cfg == 1.0:  # guidance 1 is the conditional prediction alone: skip the unconditional half
            eps = denoiser.predict_noise(x, torch.full((count,), float(sigma), device=denoiser.device), conditional)
        else:
            sigma_batch = torch.full((2 * count,), float(sigma), device=denoiser.device)
            eps_cond, eps_uncond = denoiser.predict_noise(torch.cat([x, x]), sigma_batch, both).chunk(2)
            eps = eps_uncond + cfg * (eps_cond - eps_uncond)
        x = x + eps * float(sigma_next - sigma)
        on_step(step)
    return x
