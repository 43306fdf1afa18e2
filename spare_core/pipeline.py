"""SPARE in order, on a Denoiser with the prompts already encoded: the frozen model draws its own concept samples,
gradient saliency picks the modules, the timestep distribution is measured, and self-distillation trains the sparse
adapter. Each stage stays callable alone (the stage nodes run one each); ``erase`` runs them all, in the order and
with the seeds every caller relies on (forget samples ``seed``, retain samples ``seed + 1``, neighbour samples
``seed + 2``, the stages ``seed``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig
from .denoiser import Conditioning, Denoiser
from .saliency import SaliencyMap, compute_saliency, every_module
from .samples import ConceptSamples, generate_samples
from .timesteps import TimestepDistribution, select_timesteps
from .trainer import StepCallback, TrainResult, train_adapter

# The stages' defaults. Frozen (immutable) configs: safe to share as argument defaults.
DEFAULT_SALIENCY = SaliencyConfig()
DEFAULT_TIMESTEPS = TimestepConfig()


def _no_report(*_step_info) -> None:
    return None


@dataclass(frozen=True)
class EncodedPrompts:
    """The erasure's prompts as the model's conditioning: forget and surrogate rows aligned (or one surrogate for
    all), the retain prompts (or the empty prompt when there are none), the empty prompt for CFG, and the
    neighbours' prompts for the adjacency term (None: no neighbours)."""

    forget: Conditioning
    surrogate: Conditioning
    retain: Conditioning
    uncond: Conditioning
    neighbours: Optional[Conditioning] = None


@dataclass(frozen=True)
class Erasure:
    """The trained adapter (``result``) with what it was trained from."""

    result: TrainResult
    saliency: SaliencyMap
    timesteps: TimestepDistribution
    forget: ConceptSamples
    retain: ConceptSamples
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage that ran, by name


def forget_samples(denoiser: Denoiser, prompts: EncodedPrompts, samples: SampleConfig, seed: int,
                   report: Callable = _no_report, forget_latents: Optional[torch.Tensor] = None) -> ConceptSamples:
    """The concept's samples: drawn by the frozen model, or the user's own latents (``forget_latents``), each paired
    with a forget prompt in turn."""
    if forget_latents is None:
        return generate_samples(denoiser, prompts.forget, prompts.uncond, samples, seed, report)
    rows = torch.arange(forget_latents.shape[0]) % len(prompts.forget)
    return ConceptSamples(forget_latents, prompts.forget.select(rows), rows)


def generation_steps(samples: SampleConfig, with_retain: bool, forget_latents_given: bool,
                     with_neighbours: bool = False) -> int:
    """Sampler steps the samples stage reports (none for the forget samples when the user gave latents)."""
    return samples.steps * ((not forget_latents_given) + with_retain + with_neighbours)


def erase_steps(samples: SampleConfig, train: TrainConfig, saliency_config: SaliencyConfig,
                timestep_config: TimestepConfig, forget_latents_given: bool, saliency_given: bool,
                timesteps_given: bool, with_neighbours: bool = False) -> int:
    """How many times ``erase`` calls ``report`` (and the training callback): a progress bar's total."""
    return (generation_steps(samples, True, forget_latents_given, with_neighbours) + train.steps
            + (0 if saliency_given else saliency_config.draws) + (0 if timesteps_given else timestep_config.bins))


def erase(denoiser: Denoiser, prompts: EncodedPrompts, samples: SampleConfig, train: TrainConfig, seed: int,
          saliency: Optional[SaliencyMap] = None, timesteps: Optional[TimestepDistribution] = None,
          forget_latents: Optional[torch.Tensor] = None, saliency_config: SaliencyConfig = DEFAULT_SALIENCY,
          timestep_config: TimestepConfig = DEFAULT_TIMESTEPS, report: Callable = _no_report,
          on_step: Optional[StepCallback] = None, drawn_forget: Optional[ConceptSamples] = None) -> Erasure:
    """The whole method; ``saliency`` / ``timesteps`` given (from the stage nodes) replace their stages.
    ``drawn_forget``: the forget samples this very call would draw (same model, prompts, settings and seed), drawn
    already by a stage node; used as they are. ``report`` is called once per sampler step, saliency draw and timestep
    bin (also for the steps ``drawn_forget`` saves); ``on_step`` once per training step (the default calls
    ``report``)."""
    seconds: dict[str, float] = {}
    with _timed(seconds, "samples", denoiser):
        if drawn_forget is None:
            forget = forget_samples(denoiser, prompts, samples, seed, report, forget_latents)
        else:
            forget = drawn_forget
            for _ in range(samples.steps):
                report()
        retain = generate_samples(denoiser, prompts.retain, prompts.uncond, samples, seed + 1, report)
        neighbours = None if prompts.neighbours is None else generate_samples(
            denoiser, prompts.neighbours, prompts.uncond, samples, seed + 2, report)
    if saliency is None and saliency_config.module_fraction >= 1.0 and saliency_config.row_fraction >= 1.0:
        saliency = every_module(denoiser.unet)  # nothing to rank: skip the gradient passes
        for _ in range(saliency_config.draws):
            report()
    elif saliency is None:
        with _timed(seconds, "saliency", denoiser):
            saliency = compute_saliency(denoiser, forget, prompts.retain, saliency_config, seed, report)
    if timesteps is None:
        with _timed(seconds, "timesteps", denoiser):
            timesteps = select_timesteps(denoiser, forget, prompts.surrogate, timestep_config, seed, report)
    if on_step is None:
        def on_step(step, loss, check=None):
            report()
    with _timed(seconds, "training", denoiser):
        result = train_adapter(denoiser, saliency, timesteps, forget, prompts.surrogate, retain, train, seed,
                               on_step, neighbours, prompts.uncond)
    return Erasure(result, saliency, timesteps, forget, retain, seconds)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str, denoiser: Denoiser):
    """Wall time of one stage; on a GPU after its queued kernels have finished, so that each stage is billed its
    own work."""
    def synchronize():
        if denoiser.device.type == "cuda":
            torch.cuda.synchronize(denoiser.device)
    synchronize()
    started = time.perf_counter()
    yield
    synchronize()
    seconds[stage] = time.perf_counter() - started
