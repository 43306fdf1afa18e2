"""Tiny pure-torch denoisers with planted concept signals, for the saliency and timestep tests."""

from __future__ import annotations

import torch
from torch import nn

from spare_core.denoiser import Conditioning, Denoiser
from spare_core.samples import ConceptSamples

CHANNELS, SIDE = 4, 2
FEATURES = CHANNELS * SIDE * SIDE


def ddpm_sigmas(steps: int = 1000) -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, steps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


class PlantedModules(nn.Module):
    """eps = Σ_i gate_i(text) · (rows_i ⊙ branch_i(x)) + gate_shared(text) · shared(x).

    The text context's first token is a gate vector: branch i only sees gradient when its gate is on, and
    only the planted output rows of each branch reach the output."""

    def __init__(self, branches: int = 8, planted_rows: dict[int, list[int]] | None = None):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.branches = nn.ModuleList(nn.Linear(FEATURES, FEATURES) for _ in range(branches))
        self.shared = nn.Linear(FEATURES, FEATURES)
        for layer in list(self.branches) + [self.shared]:
            with torch.no_grad():
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / FEATURES ** 0.5)
        masks = torch.ones(branches, FEATURES)
        for branch, rows in (planted_rows or {}).items():
            masks[branch] = 0
            masks[branch, rows] = 1
        self.register_buffer("row_masks", masks)

    def forward(self, x, sigma, context):
        flat = x.flatten(1)
        gate = context[:, 0, :]
        out = gate[:, -1:] * self.shared(flat)
        for i, branch in enumerate(self.branches):
            out = out + gate[:, i:i + 1] * branch(flat) * self.row_masks[i]
        return out.view_as(x)


class PlantedTimesteps(nn.Module):
    """The text changes the prediction only for timestep indices in [low, high)."""

    def __init__(self, sigmas: torch.Tensor, low: int, high: int):
        super().__init__()
        self.text = nn.Linear(8, FEATURES)
        self.register_buffer("sigmas", sigmas)
        self.low, self.high = low, high

    def forward(self, x, sigma, context):
        index = torch.searchsorted(self.sigmas, sigma.float().contiguous()).clamp(max=len(self.sigmas) - 1)
        active = ((index >= self.low) & (index < self.high)).float().view(-1, 1)
        return (0.1 * x.flatten(1) + active * self.text(context[:, 0, :])).view_as(x)


def denoiser_for(module: nn.Module, sigmas: torch.Tensor) -> Denoiser:
    return Denoiser(unet=module, predict_noise=lambda x, s, c: module(x, s, c.context), sigmas=sigmas,
                    latent_channels=CHANNELS, device=torch.device("cpu"), dtype=torch.float32, family="toy")


def samples_for(cond: Conditioning, count: int = 4, seed: int = 0) -> ConceptSamples:
    """``count`` random clean latents, each with ``cond``'s (single) row as its prompt."""
    latents = torch.randn(count, CHANNELS, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))
    return ConceptSamples(latents, cond.select(torch.zeros(count, dtype=torch.long)))


def gate_conditioning(on: list[int], width: int) -> Conditioning:
    context = torch.zeros(1, 1, width)
    context[0, 0, on] = 1.0
    return Conditioning(context)
