"""Baselines that benchmarks run beside SPARE, implemented from their papers on the same Denoiser.

ESD-x (Gandikota et al., "Erasing Concepts from Diffusion Models", arXiv 2303.07345): fine-tune the
cross-attention weights so that, for the concept c,
    ε_θ*(x_t, c) → ε_θ(x_t) − η · (ε_θ(x_t, c) − ε_θ(x_t))          (ESD Eq. 2, negative guidance)
where x_t comes from sampling the model being trained for a random number of its 50 steps, and θ are the
frozen original weights. Paper defaults: 1000 iterations, Adam lr 1e-5, η = 1, 50 sampling steps, guidance 3
while drawing x_t. The frozen teacher is the original value of the trained weights, swapped in for teacher
passes, so only the cross-attention weights are held twice (the paper keeps two whole models); they are
trained as float32 masters whatever the model's dtype.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from spare_core.denoiser import Conditioning, Denoiser
from spare_core.samples import euler_with_guidance, sampling_sigmas


@dataclass(frozen=True)
class ESDConfig:
    iterations: int = 1000
    learning_rate: float = 1e-5
    negative_guidance: float = 1.0
    sampling_steps: int = 50
    sampling_guidance: float = 3.0
    latent_size: int = 64


def cross_attention_linears(unet: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in unet.named_modules() if ".attn2." in f".{name}." and isinstance(m, nn.Linear)}


def _float32_copies(modules: dict[str, nn.Linear]) -> dict[str, nn.Parameter]:
    """Trainable float32 master copies of the weights: a float16 / bfloat16 model is trained through casts of
    them (mixed precision), so Adam's small updates are not rounded away."""
    return {name: nn.Parameter(m.weight.detach().clone().float(), requires_grad=True) for name, m in modules.items()}


def _cast_like(masters: dict[str, torch.Tensor], modules: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    """The masters in each module's own dtype; differentiable, so gradients reach the float32 masters."""
    return {name: w.to(modules[name].weight.dtype) for name, w in masters.items()}


@contextlib.contextmanager
def _weights(modules: dict[str, nn.Linear], weights: dict[str, torch.Tensor]):
    current = {name: m._parameters["weight"] for name, m in modules.items()}
    try:
        for name, m in modules.items():
            m._parameters["weight"] = weights[name]
        yield
    finally:
        for name, m in modules.items():
            m._parameters["weight"] = current[name]


def train_esd_x(denoiser: Denoiser, concept: Conditioning, uncond: Conditioning, config: ESDConfig, seed: int,
                on_step: Callable[[int, float], None] = lambda step, loss: None) -> dict[str, torch.Tensor]:
    """Returns the fine-tuned cross-attention weights (float32, CPU), keyed by module path."""
    generator = torch.Generator().manual_seed(seed)
    modules = cross_attention_linears(denoiser.unet)
    schedule = sampling_sigmas(denoiser, config.sampling_steps)
    cond = concept.to(denoiser.device, denoiser.dtype)
    both = Conditioning.cat([concept, uncond]).to(denoiser.device, denoiser.dtype)
    side = config.latent_size
    trainable = _float32_copies(modules)
    optimizer = torch.optim.Adam(trainable.values(), lr=config.learning_rate)
    for step in range(config.iterations):
        stop = int(torch.randint(config.sampling_steps, (1,), generator=generator))
        x = torch.randn((1, denoiser.latent_channels, side, side), generator=generator).to(denoiser.device)
        x = x * schedule[0]
        with torch.no_grad():
            with _weights(modules, _cast_like(trainable, modules)):  # x_t is drawn from the model being trained
                x = euler_with_guidance(denoiser, x, schedule[:stop + 1], both, config.sampling_guidance)
            sigma_t = torch.full((2,), float(schedule[stop]), device=denoiser.device)
            eps_c, eps_u = denoiser.predict_noise(torch.cat([x, x]), sigma_t, both).chunk(2)  # frozen originals
            target = eps_u - config.negative_guidance * (eps_c - eps_u)
        with _weights(modules, _cast_like(trainable, modules)):
            loss = F.mse_loss(denoiser.predict_noise(x, sigma_t[:1], cond), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        on_step(step, float(loss.detach()))
    return {name: w.detach().cpu() for name, w in trainable.items()}


@dataclass(frozen=True)
class UCEConfig:
    regularisation: float = 0.1   # λ: pulls every weight towards its old value (UCE code's `lamb`)
    erase_scale: float = 1.0
    preserve_scale: float = 1.0


def text_projections(unet: nn.Module) -> dict[str, nn.Linear]:
    """The cross-attention key and value projections: the only weights that see the text."""
    return {name: m for name, m in cross_attention_linears(unet).items() if name.endswith(("to_k", "to_v"))}


@torch.no_grad()
def edit_uce(unet: nn.Module, erase: list[tuple[torch.Tensor, torch.Tensor]], preserve: list[torch.Tensor],
             config: UCEConfig = UCEConfig()) -> dict[str, torch.Tensor]:
    """UCE (Gandikota et al., "Unified Concept Editing in Diffusion Models", arXiv 2308.14761, Eq. 7), closed form:

        W = (λ W₀ + s_e Σ_i W₀ c*_i c_iᵀ + s_p Σ_j W₀ c_j c_jᵀ) (λ I + s_e Σ_i c_i c_iᵀ + s_p Σ_j c_j c_jᵀ)⁻¹

    for every to_k / to_v, where c_i are the token embeddings of a concept to erase, c*_i those of its target
    (aligned token by token) and c_j those of concepts to preserve. ``erase`` pairs (concept, target) contexts
    of shape (tokens, dim); ``preserve`` holds contexts (tokens, dim). Returns the new weights (float32, CPU)."""
    edited = {}
    for name, layer in text_projections(unet).items():
        old = layer.weight.detach().float().cpu()
        dim = old.shape[1]
        numerator = config.regularisation * old
        denominator = config.regularisation * torch.eye(dim)
        for concept, target in erase:
            c, c_target = concept.float().cpu(), target.float().cpu()
            numerator += config.erase_scale * (old @ c_target.T) @ c
            denominator += config.erase_scale * c.T @ c
        for kept in preserve:
            c = kept.float().cpu()
            numerator += config.preserve_scale * (old @ c.T) @ c
            denominator += config.preserve_scale * c.T @ c
        edited[name] = numerator @ torch.linalg.inv(denominator)
    return edited
