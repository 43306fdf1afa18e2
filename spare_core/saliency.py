"""Stage 2 of SPARE: find the parameters that carry the concept.

Gradient saliency as in SalUn (Fan et al., ICLR 2024, Eq. 6): accumulate |∂L/∂θ| of the denoising
loss L = ‖ε_θ(x_t, c_forget) − ε‖² over forget samples. Each Linear / Conv2d is scored by its mean
saliency and the top ``module_fraction`` are kept, as in the SPARE reference code; optionally the
top ``row_fraction`` output rows inside each kept module.

The default score is that plain SalUn saliency (``retain_contrast`` 0), as in the SPARE reference code: on the
SynthCanvas dev split it erased fully where the contrast did not. Mean |gradient| is not comparable across layer
kinds, though (output convs and skip connections dominate any prompt, most visibly on random weights), so a
contrast can be blended in: the same noisy latents under the retain prompts (or the empty prompt) give a paired
gradient, and a module scores high when swapping the text changes its gradient and the forget prompt owns that
change (see ``_contrast_scores``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .config import SaliencyConfig
from .denoiser import Conditioning, Denoiser, draw_noise
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


def block_of(module_path: str) -> str:
    """The top-level block a module belongs to: 'input_blocks.4', 'middle_block', 'out', ..."""
    parts = module_path.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]


def keep_count(fraction: float, total: int) -> int:
    return max(1, min(total, round(fraction * total)))


@dataclass
class RowSaliency:
    """Per output row of one weight, summed over draws: mean |g_f|, mean |g_r| and mean |g_f − g_r|.

    Rows are all a module's weights ever needs (its score is the mean over rows), so memory stays at one
    module's gradient plus these vectors: full |gradient| tensors of SDXL would cost 10 GB each in float32."""

    forget: torch.Tensor
    retain: Optional[torch.Tensor] = None
    difference: Optional[torch.Tensor] = None


def _row_mean_abs(grad: torch.Tensor) -> torch.Tensor:
    return grad.detach().float().abs().flatten(1).mean(dim=1)


def accumulate_row_saliency(denoiser: Denoiser, forget: ConceptSamples, retain: Optional[Conditioning], draws: int,
                            generator: torch.Generator, on_draw: StepCallback) -> dict[str, RowSaliency]:
    """Σ over draws of the row means of |∂L_f/∂W| and, with retain prompts, of |∂L_r/∂W| and |∂(L_f − L_r)/∂W|,
    where L_r is the denoising loss of the same noisy latents under the retain prompts (∂(L_f − L_r) = g_f − g_r)."""
    modules = adaptable_modules(denoiser.unet)
    weights = [m.weight for m in modules.values()]
    previous = [w.requires_grad for w in weights]
    stats = {name: RowSaliency(torch.zeros(w.shape[0], device=w.device),
                               None if retain is None else torch.zeros(w.shape[0], device=w.device),
                               None if retain is None else torch.zeros(w.shape[0], device=w.device))
             for name, w in zip(modules, weights, strict=True)}
    count = len(forget)
    conds = [forget.cond]
    if retain is not None:
        conds.append(retain.select(torch.arange(count) % len(retain)))
    cond = Conditioning.cat(conds).to(denoiser.device, denoiser.dtype)
    # Each weight's gradient is reduced to its row means and dropped the moment autograd finishes it, so a
    # full set of weight gradients (the size of the model) never exists at once.
    current = {"field": "forget"}

    def reduce_and_drop(name: str):
        def hook(weight: torch.Tensor) -> None:
            getattr(stats[name], current["field"]).add_(_row_mean_abs(weight.grad))
            weight.grad = None
        return hook
    saved_grads = [w.grad for w in weights]
    handles = []
    try:
        for name, w in zip(modules, weights, strict=True):
            w.grad = None
            w.requires_grad_(True)
            handles.append(w.register_post_accumulate_grad_hook(reduce_and_drop(name)))
        for draw in range(draws):
            x0 = forget.latents.to(denoiser.device)
            noise = draw_noise(x0.shape, generator, x0.device)
            index = torch.randint(denoiser.num_timesteps, (count,), generator=generator)
            x_t, sigma = denoiser.add_noise(x0, noise, index)
            repeat = len(conds)
            predicted = denoiser.predict_noise(x_t.repeat(repeat, 1, 1, 1), sigma.repeat(repeat), cond)
            losses = [torch.nn.functional.mse_loss(part, noise) for part in predicted.split(count)]
            parts = [("forget", losses[0])]
            if retain is not None:
                parts += [("retain", losses[1]), ("difference", losses[0] - losses[1])]
            for position, (field_name, loss) in enumerate(parts):
                current["field"] = field_name
                loss.backward(inputs=weights, retain_graph=position < len(parts) - 1)
            on_draw(draw)
    finally:
        for handle in handles:
            handle.remove()
        for w, flag, grad in zip(weights, previous, saved_grads, strict=True):
            w.requires_grad_(flag)
            w.grad = grad
    return stats


def _contrast_scores(rows: RowSaliency, per_row: bool) -> torch.Tensor:
    """Concept specificity from paired gradients (same latents, noise and timesteps; only the text differs):
    sensitivity = mean|g_f − g_r| / mean(|g_f| + |g_r|)   how much the text swap changes this gradient,
    share       = mean|g_f| / mean(|g_f| + |g_r|)         how much of it belongs to the forget prompt.
    Image-driven modules (g_f ≈ g_r) and retain-only modules (g_f ≈ 0) both score near 0."""
    reduce = (lambda t: t) if per_row else (lambda t: t.mean())
    total = reduce(rows.forget + rows.retain).clamp_min(torch.finfo(torch.float32).tiny)
    return (reduce(rows.difference) / total) * (reduce(rows.forget) / total)


def every_module(unet: torch.nn.Module) -> SaliencyMap:
    """Every adaptable module, whole: what saliency selects at module and row fraction 1, without its gradients."""
    names = tuple(adaptable_modules(unet))
    return SaliencyMap({n: 1.0 for n in names}, names, {n: None for n in names}, 1.0, 1.0)


def compute_saliency(denoiser: Denoiser, forget: ConceptSamples, retain: Optional[Conditioning],
                     config: SaliencyConfig, seed: int, on_draw: StepCallback = lambda draw: None) -> SaliencyMap:
    """SalUn saliency of the forget samples, blended (``retain_contrast``) with its contrast against the same
    noisy latents under the retain prompts. Both scores are scaled to a maximum of 1 before blending."""
    contrast = retain is not None and config.retain_contrast > 0
    stats = accumulate_row_saliency(denoiser, forget, retain if contrast else None, config.draws,
                                    torch.Generator().manual_seed(seed), on_draw)
    names = list(stats)
    module_scores = _unit_max(torch.stack([stats[n].forget.mean() for n in names]))
    rows = {n: _unit_max(stats[n].forget) for n in names}
    if contrast:
        weight = config.retain_contrast
        specific = _unit_max(torch.stack([_contrast_scores(stats[n], per_row=False) for n in names]))
        module_scores = (1 - weight) * module_scores + weight * specific
        rows = {n: (1 - weight) * rows[n] + weight * _unit_max(_contrast_scores(stats[n], per_row=True)) for n in names}
    scores = {n: float(v) for n, v in zip(names, module_scores, strict=True)}
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
