"""Stage 1 of SPARE: find the parameters that carry the concept.

Gradient saliency as in SalUn (Fan et al., ICLR 2024, Eq. 6): accumulate |∂L/∂θ| of the denoising
loss L = ‖ε_θ(x_t, c_forget) − ε‖² over forget samples. Each Linear / Conv2d is scored by its mean
saliency and the top ``module_fraction`` are kept, as in the SPARE reference code; optionally the
top ``row_fraction`` output rows inside each kept module.

Mean |gradient| is not comparable across layer kinds (output convs and skip connections dominate any
prompt), so by default the score is a contrast: the same noisy latents under the retain prompts (or the
empty prompt) give a paired gradient, and a module scores high when swapping the text changes its
gradient and the forget prompt owns that change (see ``_contrast_scores``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .config import SaliencyConfig
from .denoiser import Conditioning, Denoiser
from .lora import adaptable_modules
from .samples import ConceptSamples

StepCallback = Callable[[int], None]


@dataclass(frozen=True)
class SaliencyMap:
    """Which modules (and rows) get an adapter. ``row_masks[name]`` is None when the whole module may change."""

    module_scores: dict[str, float]
    selected: tuple[str, ...]
    row_masks: dict[str, Optional[torch.Tensor]]
    module_fraction: float
    row_fraction: float

    def block_scores(self) -> dict[str, float]:
        """Mean module score per top-level UNet block (input_blocks.3, middle_block, ...), for charts."""
        totals: dict[str, list[float]] = {}
        for name, score in self.module_scores.items():
            totals.setdefault(block_of(name), []).append(score)
        return {block: sum(v) / len(v) for block, v in totals.items()}

    def adapted_parameter_count(self, unet: torch.nn.Module, rank: int) -> int:
        modules = adaptable_modules(unet)
        return sum(rank * (modules[n].weight.shape[0] + math.prod(modules[n].weight.shape[1:])) for n in self.selected)


def block_of(module_path: str) -> str:
    """The top-level block a module belongs to: 'input_blocks.4', 'middle_block', 'out', ..."""
    parts = module_path.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]


def keep_count(fraction: float, total: int) -> int:
    return max(1, min(total, round(fraction * total)))


def accumulate_gradient_magnitude(denoiser: Denoiser, samples: ConceptSamples, draws: int,
                                  generator: torch.Generator, on_draw: StepCallback) -> dict[str, torch.Tensor]:
    """Σ over draws of |∂L/∂W| for each adaptable weight (float32, on the model's device)."""
    modules = adaptable_modules(denoiser.unet)
    weights = [m.weight for m in modules.values()]
    previous = [w.requires_grad for w in weights]
    totals = [torch.zeros(w.shape, dtype=torch.float32, device=w.device) for w in weights]
    cond = samples.cond.to(denoiser.device, denoiser.dtype)
    try:
        for w in weights:
            w.requires_grad_(True)
        for draw in range(draws):
            x0 = samples.latents.to(denoiser.device)
            noise = torch.randn(x0.shape, generator=generator).to(x0.device)
            index = torch.randint(denoiser.num_timesteps, (x0.shape[0],), generator=generator)
            sigma = denoiser.sigmas.float().cpu()[index].to(x0.device)
            x_t = x0 + sigma.view(-1, 1, 1, 1) * noise
            loss = torch.nn.functional.mse_loss(denoiser.predict_noise(x_t, sigma, cond), noise)
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            for total, grad in zip(totals, grads):
                if grad is not None:
                    total.add_(grad.detach().float().abs())
            on_draw(draw)
    finally:
        for w, flag in zip(weights, previous):
            w.requires_grad_(flag)
    return dict(zip(modules, totals))


def _contrast_scores(forget_grad: torch.Tensor, retain_grad: torch.Tensor, dim=None) -> torch.Tensor:
    """Concept specificity from paired gradients (same latents, noise and timesteps; only the text differs):
    sensitivity = mean|g_f − g_r| / mean(|g_f| + |g_r|)   how much the text swap changes this gradient,
    share       = mean|g_f| / mean(|g_f| + |g_r|)         how much of it belongs to the forget prompt.
    Image-driven modules (g_f ≈ g_r) and retain-only modules (g_f ≈ 0) both score near 0."""
    reduce = (lambda t: t.mean()) if dim is None else (lambda t: t.flatten(1).mean(dim=1))
    total = reduce(forget_grad + retain_grad).clamp_min(torch.finfo(torch.float32).tiny)
    sensitivity = reduce((forget_grad - retain_grad).abs()) / total
    share = reduce(forget_grad) / total
    return sensitivity * share


def compute_saliency(denoiser: Denoiser, forget: ConceptSamples, retain: Optional[Conditioning],
                     config: SaliencyConfig, seed: int, on_draw: StepCallback = lambda draw: None) -> SaliencyMap:
    """SalUn saliency of the forget samples, blended (``retain_contrast``) with its contrast against the same
    noisy latents under the retain prompts. Both scores are scaled to a maximum of 1 before blending."""
    forget_grad = accumulate_gradient_magnitude(denoiser, forget, config.draws,
                                                torch.Generator().manual_seed(seed), on_draw)
    names = list(forget_grad)
    plain_modules = torch.stack([forget_grad[n].mean() for n in names])
    module_scores = _unit_max(plain_modules)
    rows = {n: _unit_max(forget_grad[n].flatten(1).mean(dim=1)) for n in names}
    if retain is not None and config.retain_contrast > 0:
        prompt_rows = torch.arange(len(forget)) % len(retain)
        counterfactual = ConceptSamples(forget.latents, retain.select(prompt_rows))
        retain_grad = accumulate_gradient_magnitude(denoiser, counterfactual, config.draws,
                                                    torch.Generator().manual_seed(seed), on_draw)
        weight = config.retain_contrast
        contrast = _unit_max(torch.stack([_contrast_scores(forget_grad[n], retain_grad[n]) for n in names]))
        module_scores = (1 - weight) * module_scores + weight * contrast
        rows = {n: (1 - weight) * rows[n] + weight * _unit_max(_contrast_scores(forget_grad[n], retain_grad[n], dim=1))
                for n in names}
    scores = {n: float(v) for n, v in zip(names, module_scores)}
    ranked = sorted(names, key=lambda n: (-scores[n], n))
    selected = tuple(ranked[:keep_count(config.module_fraction, len(ranked))])
    row_masks = {}
    for name in selected:
        if config.row_fraction >= 1.0:
            row_masks[name] = None
            continue
        row_scores = rows[name].cpu()
        mask = torch.zeros(row_scores.shape[0], dtype=torch.bool)
        mask[torch.topk(row_scores, keep_count(config.row_fraction, row_scores.shape[0])).indices] = True
        row_masks[name] = mask
    return SaliencyMap(scores, selected, row_masks, config.module_fraction, config.row_fraction)


def _unit_max(values: torch.Tensor) -> torch.Tensor:
    top = values.max()
    return values / top if top > 0 else values
