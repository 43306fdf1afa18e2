"""Stage 3 of SPARE: train on the timesteps where the concept matters.

For each of K equal bins of the model's own schedule, score the bin by
    s_k = E_{x_0, ε, t∈bin} ‖ε_θ(x_t, c_forget) − ε_θ(x_t, c_surrogate)‖²
(how much swapping the concept for its surrogate changes the prediction there), then sample bins with
p_k ∝ s_k^(1/temperature), restricted to the top ``top_fraction`` of bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .config import TimestepConfig
from .denoiser import Conditioning, Denoiser, draw_noise
from .saliency import keep_count
from .samples import ConceptSamples


@dataclass(frozen=True)
class TimestepDistribution:
    """A distribution over timestep indices: bin k covers [bin_edges[k], bin_edges[k+1])."""

    bin_edges: tuple[int, ...]
    scores: tuple[float, ...]
    probabilities: tuple[float, ...]

    def __post_init__(self):
        if len(self.bin_edges) != len(self.probabilities) + 1 or len(self.scores) != len(self.probabilities):
            raise ValueError("a timestep distribution needs K+1 bin edges, K scores and K probabilities")
        if any(p < 0 for p in self.probabilities) or not abs(sum(self.probabilities) - 1.0) < 1e-5:
            raise ValueError(f"timestep probabilities must be >= 0 and sum to 1, got {self.probabilities}")

    @property
    def num_timesteps(self) -> int:
        return self.bin_edges[-1]

    def sample_indices(self, count: int, generator: torch.Generator) -> torch.Tensor:
        probabilities = torch.tensor(self.probabilities, dtype=torch.float64)
        bins = torch.multinomial(probabilities, count, replacement=True, generator=generator)
        low = torch.tensor(self.bin_edges[:-1])[bins]
        high = torch.tensor(self.bin_edges[1:])[bins]
        return low + (torch.rand(count, generator=generator, dtype=torch.float64) * (high - low)).long()

    def selected_bins(self) -> tuple[int, ...]:
        return tuple(k for k, p in enumerate(self.probabilities) if p > 0)


def equal_bins(num_timesteps: int, bins: int) -> tuple[int, ...]:
    if bins > num_timesteps:
        raise ValueError(f"bins ({bins}) cannot exceed the model's {num_timesteps} timesteps")
    return tuple(round(k * num_timesteps / bins) for k in range(bins + 1))


def distribution_from_scores(scores: list[float], edges: tuple[int, ...],
                             config: TimestepConfig) -> TimestepDistribution:
    values = torch.tensor(scores, dtype=torch.float64).clamp_min(0)
    keep = keep_count(config.top_fraction, len(scores))
    kept = torch.zeros_like(values, dtype=torch.bool)
    kept[torch.topk(values, keep).indices] = True
    if float(values[kept].sum()) <= 0:
        # The concept changes nothing measurable: fall back to uniform over the kept bins.
        weights = kept.double()
    else:
        weights = torch.where(kept, (values / values.max()) ** (1.0 / config.temperature), torch.zeros_like(values))
    probabilities = weights / weights.sum()
    return TimestepDistribution(edges, tuple(float(s) for s in scores), tuple(float(p) for p in probabilities))


@torch.no_grad()
def select_timesteps(denoiser: Denoiser, forget: ConceptSamples, surrogate: Conditioning, config: TimestepConfig,
                     seed: int, on_bin: Callable[[int], None] = lambda k: None) -> TimestepDistribution:
    generator = torch.Generator().manual_seed(seed)
    edges = equal_bins(denoiser.num_timesteps, config.bins)
    scores = []
    for k in range(config.bins):
        total = 0.0
        for _ in range(config.draws_per_bin):
            batch = forget.pick(min(len(forget), config.samples_per_draw), generator)
            x0 = batch.latents.to(denoiser.device)
            noise = draw_noise(x0.shape, generator, x0.device)
            index = torch.randint(edges[k], edges[k + 1], (x0.shape[0],), generator=generator)
            x_t, sigma = denoiser.add_noise(x0, noise, index)
            both = Conditioning.cat([batch.cond, batch.surrogates(surrogate)]).to(denoiser.device, denoiser.dtype)
            eps_forget, eps_surrogate = denoiser.predict_noise(
                torch.cat([x_t, x_t]), torch.cat([sigma, sigma]), both).chunk(2)
            total += float((eps_forget.float() - eps_surrogate.float()).pow(2).mean())
        scores.append(total / config.draws_per_bin)
        on_bin(k)
    return distribution_from_scores(scores, edges, config)
