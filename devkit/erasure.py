"""Helpers for tests that train on a ComfyUI MODEL through the core with raw conditioning tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spare_core.denoiser import Conditioning


@dataclass
class Prompts:
    forget: Conditioning
    surrogate: Conditioning
    retain: Conditioning
    uncond: Conditioning


def random_prompts(context_dim: int = 768, seed: int = 0) -> Prompts:
    """Four unrelated 'prompts' as CLIP-scale context tensors (1, 77, D)."""
    generator = torch.Generator().manual_seed(seed)
    return Prompts(*(Conditioning(torch.randn(1, 77, context_dim, generator=generator)) for _ in range(4)))


@torch.no_grad()
def predict(door, model, latents, noise, indices, cond: Conditioning) -> torch.Tensor:
    """The MODEL's noise prediction (through ComfyUI's own apply_model) at fixed x_0, noise and timesteps."""
    with door.session.denoiser_session(model) as denoiser:
        sigma = denoiser.sigmas[indices]
        x_t = latents + sigma.view(-1, 1, 1, 1) * noise
        return denoiser.predict_noise(x_t, sigma, cond.select(torch.zeros(len(indices), dtype=torch.long)))
