"""Helpers for tests that train on a ComfyUI MODEL through the core with raw conditioning tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spare_core.denoiser import Conditioning
from spare_core.pipeline import EncodedPrompts
from spare_core.trainer import ErasureCheck


def random_prompts(context_dim: int = 768, seed: int = 0) -> EncodedPrompts:
    """Four unrelated 'prompts' (forget, surrogate, retain, empty) as CLIP-scale context tensors (1, 77, D)."""
    generator = torch.Generator().manual_seed(seed)
    return EncodedPrompts(*(Conditioning(torch.randn(1, 77, context_dim, generator=generator)) for _ in range(4)))


@torch.no_grad()
def predict(door, model, latents, noise, indices, cond: Conditioning) -> torch.Tensor:
    """The MODEL's noise prediction (through ComfyUI's own apply_model) at fixed x_0, noise and timesteps."""
    with door.session.denoiser_session(model) as denoiser:
        sigma = denoiser.sigmas[indices]
        x_t = latents + sigma.view(-1, 1, 1, 1) * noise
        return denoiser.predict_noise(x_t, sigma, cond.select(torch.zeros(len(indices), dtype=torch.long)))


@dataclass(frozen=True)
class HeldOutPredictions:
    """Noise predictions of the base model (teacher) and the erased one (student) on held-out draws, with each
    draw's σ."""

    teacher_forget: torch.Tensor
    teacher_surrogate: torch.Tensor
    student_forget: torch.Tensor
    teacher_retain: torch.Tensor
    student_retain: torch.Tensor
    sigma: torch.Tensor


def held_out_predictions(door, model, erased, prompts: EncodedPrompts, forget, retain, seed: int = 12345,
                         repeats: int = 4) -> HeldOutPredictions:
    """``model`` and ``erased`` (both through ComfyUI's own apply_model, the erased one with its LoRA patches) on
    noise and timesteps (uniform over the schedule) never seen in training: each sample ``repeats`` times."""
    generator = torch.Generator().manual_seed(seed)
    forget_x0, retain_x0 = forget.latents.repeat(repeats, 1, 1, 1), retain.latents.repeat(repeats, 1, 1, 1)
    noise = torch.randn(forget_x0.shape, generator=generator)
    with door.session.denoiser_session(model) as denoiser:
        sigmas = denoiser.sigmas.float().cpu()
    indices = torch.randint(0, len(sigmas), (forget_x0.shape[0],), generator=generator)
    return HeldOutPredictions(
        predict(door, model, forget_x0, noise, indices, prompts.forget),
        predict(door, model, forget_x0, noise, indices, prompts.surrogate),
        predict(door, erased, forget_x0, noise, indices, prompts.forget),
        predict(door, model, retain_x0, noise, indices, prompts.retain),
        predict(door, erased, retain_x0, noise, indices, prompts.retain),
        sigmas[indices])


def held_out_check(door, model, erased, prompts: EncodedPrompts, forget, retain, overshoot: float = 0.0,
                   seed: int = 12345, repeats: int = 4) -> ErasureCheck:
    """The trainer's own figures (``ErasureCheck.measure``, the one definition of "gap closed" and "retain drift")
    on other draws than the trainer's, and through ComfyUI's LoRA patching instead of the training hooks."""
    p = held_out_predictions(door, model, erased, prompts, forget, retain, seed, repeats)
    return ErasureCheck.measure(0, p.teacher_forget, p.teacher_surrogate, p.student_forget, p.teacher_retain,
                                p.student_retain, p.sigma, p.sigma, overshoot)


@dataclass(frozen=True)
class HeldOutGap:
    """A second figure, in noise space: the distance left from the erased forget prediction to the training target
    as a share of the base model's (1 + overshoot)·‖ε(c_f) − ε(c_s)‖, and the retain drift as a share of that gap,
    plain norms over every draw. Not the product's "gap closed" (``held_out_check``), which weighs each draw by its
    σ, i.e. compares denoised images; here the low-noise draws dominate. The tests' thresholds and the DiT
    benchmark's "gap left" column (docs/benchmarks.md) were set on this figure."""

    remaining_gap: float
    retain_drift: float


def held_out_gap(door, model, erased, prompts: EncodedPrompts, forget, retain, overshoot: float = 0.0,
                 seed: int = 12345, repeats: int = 4) -> HeldOutGap:
    """How far ``erased`` moved the forget prediction to its training target (the surrogate's prediction, overshot
    past it by ``overshoot`` as the trainer does) and how far its retain prediction drifted, against ``model``, in
    noise space on held-out draws (``held_out_predictions``)."""
    p = held_out_predictions(door, model, erased, prompts, forget, retain, seed, repeats)
    target = p.teacher_surrogate + overshoot * (p.teacher_surrogate - p.teacher_forget)
    gap = float((p.teacher_forget - p.teacher_surrogate).norm())
    return HeldOutGap(float((p.student_forget - target).norm()) / ((1 + overshoot) * gap),
                      float((p.student_retain - p.teacher_retain).norm()) / gap)
