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


@dataclass(frozen=True)
class HeldOutGap:
    """On held-out draws: the distance left from the erased forget prediction to the training target, as a share
    of the base model's (1 + overshoot)·‖eps(c_f) − eps(c_s)‖, and the retain drift as a share of that gap."""

    remaining_gap: float
    retain_drift: float


def held_out_gap(door, model, erased, prompts: Prompts, forget, retain, overshoot: float = 0.0, seed: int = 12345,
                 repeats: int = 4) -> HeldOutGap:
    """How far ``erased`` moved the forget prediction to its training target (the surrogate's prediction, overshot
    past it by ``overshoot`` as the trainer does) and how far its retain prediction drifted, against ``model``, on
    noise and timesteps (uniform over the schedule) never seen in training."""
    generator = torch.Generator().manual_seed(seed)
    forget_x0, retain_x0 = forget.latents.repeat(repeats, 1, 1, 1), retain.latents.repeat(repeats, 1, 1, 1)
    noise = torch.randn(forget_x0.shape, generator=generator)
    with door.session.denoiser_session(model) as denoiser:
        steps = denoiser.num_timesteps
    indices = torch.randint(0, steps, (forget_x0.shape[0],), generator=generator)
    teacher_forget = predict(door, model, forget_x0, noise, indices, prompts.forget)
    teacher_surrogate = predict(door, model, forget_x0, noise, indices, prompts.surrogate)
    student_forget = predict(door, erased, forget_x0, noise, indices, prompts.forget)
    teacher_retain = predict(door, model, retain_x0, noise, indices, prompts.retain)
    student_retain = predict(door, erased, retain_x0, noise, indices, prompts.retain)
    target = teacher_surrogate + overshoot * (teacher_surrogate - teacher_forget)
    gap = float((teacher_forget - teacher_surrogate).norm())
    return HeldOutGap(float((student_forget - target).norm()) / ((1 + overshoot) * gap),
                      float((student_retain - teacher_retain).norm()) / gap)
