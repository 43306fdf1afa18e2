"""The node-level jobs: prompts and a ComfyUI MODEL in, saliency / timesteps / adapter out.

Each job encodes its prompts first (CLIP may need the device), then opens one denoiser session in which
the frozen model draws its own concept samples and the SPARE stages run.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .. import charts
from ..adapter import ErasureAdapter, build_metadata
from ..config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig
from ..denoiser import Conditioning, Denoiser
from ..prompts import ErasurePrompts
from ..saliency import SaliencyMap, block_of, compute_saliency, every_module
from ..samples import ConceptSamples, generate_samples
from ..timesteps import TimestepDistribution, select_timesteps
from ..trainer import TrainResult, train_adapter
from . import models, patches, progress, session

# Frozen (immutable) configs: safe to share as argument defaults.
_DEFAULT_SALIENCY = SaliencyConfig()
_DEFAULT_TIMESTEPS = TimestepConfig()


@dataclass(frozen=True)
class _Encoded:
    forget: Conditioning
    surrogate: Conditioning
    retain: Conditioning
    uncond: Conditioning


def _encode(model, clip, prompts: ErasurePrompts, samples: SampleConfig) -> _Encoded:
    def encode(texts, name):
        return models.encode_prompts(model, clip, list(texts), samples.width, samples.height, name)
    return _Encoded(
        forget=encode(prompts.forget, "forget_prompts"),
        surrogate=encode(prompts.surrogates, "surrogate_prompt"),
        retain=encode(prompts.retain_or_unconditional, "retain_prompts"),
        uncond=encode([""], "the empty prompt"),
    )


def _forget_samples(denoiser: Denoiser, encoded: _Encoded, samples: SampleConfig, seed: int, report,
                    forget_latents: Optional[torch.Tensor]) -> ConceptSamples:
    if forget_latents is None:
        return generate_samples(denoiser, encoded.forget, encoded.uncond, samples, seed, report)
    rows = torch.arange(forget_latents.shape[0]) % len(encoded.forget)
    return ConceptSamples(forget_latents, encoded.forget.select(rows), rows)


def _generation_steps(samples: SampleConfig, with_retain: bool, forget_latents) -> int:
    return samples.steps * ((forget_latents is None) + with_retain)


def saliency_for_model(model, clip, prompts: ErasurePrompts, samples: SampleConfig, config: SaliencyConfig,
                       seed: int, forget_latents: Optional[torch.Tensor] = None) -> tuple[SaliencyMap, torch.Tensor]:
    encoded = _encode(model, clip, prompts, samples)
    report = progress.StepReporter(_generation_steps(samples, False, forget_latents) + config.draws)
    with session.denoiser_session(model) as denoiser:
        forget = _forget_samples(denoiser, encoded, samples, seed, report, forget_latents)
        result = compute_saliency(denoiser, forget, encoded.retain, config, seed, report)
    return result, saliency_chart(result)


def timesteps_for_model(model, clip, prompts: ErasurePrompts, samples: SampleConfig, config: TimestepConfig,
                        seed: int) -> tuple[TimestepDistribution, torch.Tensor]:
    encoded = _encode(model, clip, prompts, samples)
    report = progress.StepReporter(samples.steps + config.bins)
    with session.denoiser_session(model) as denoiser:
        forget = generate_samples(denoiser, encoded.forget, encoded.uncond, samples, seed, report)
        result = select_timesteps(denoiser, forget, encoded.surrogate, config, seed, report)
    return result, timestep_chart(result)


@dataclass(frozen=True)
class TrainedErasure:
    adapter: ErasureAdapter
    model: object
    loss_chart: torch.Tensor
    result: TrainResult


def train_for_model(model, clip, prompts: ErasurePrompts, samples: SampleConfig, config: TrainConfig, seed: int,
                    saliency: Optional[SaliencyMap] = None, timesteps: Optional[TimestepDistribution] = None,
                    forget_latents: Optional[torch.Tensor] = None,
                    saliency_config: SaliencyConfig = _DEFAULT_SALIENCY,
                    timestep_config: TimestepConfig = _DEFAULT_TIMESTEPS,
                    node_id: Optional[str] = None) -> TrainedErasure:
    """Train the erasure; stages not given are computed here with ``saliency_config`` / ``timestep_config``.
    ``node_id``: the Train node's id in the running graph, which the live loss curve is sent to."""
    family = models.model_family(model)
    encoded = _encode(model, clip, prompts, samples)
    total = (_generation_steps(samples, True, forget_latents) + config.steps
             + (saliency_config.draws if saliency is None else 0)
             + (timestep_config.bins if timesteps is None else 0))
    report = progress.StepReporter(total)
    with session.denoiser_session(model) as denoiser:
        forget = _forget_samples(denoiser, encoded, samples, seed, report, forget_latents)
        retain = generate_samples(denoiser, encoded.retain, encoded.uncond, samples, seed + 1, report)
        if saliency is None and saliency_config.module_fraction >= 1.0 and saliency_config.row_fraction >= 1.0:
            saliency = every_module(denoiser.unet)  # nothing to rank: skip the gradient passes
            report.skip(saliency_config.draws)
        elif saliency is None:
            saliency = compute_saliency(denoiser, forget, encoded.retain, saliency_config, seed, report)
        if timesteps is None:
            timesteps = select_timesteps(denoiser, forget, encoded.surrogate, timestep_config, seed, report)
        result = train_adapter(denoiser, saliency, timesteps, forget, encoded.surrogate, retain, config, seed,
                               report.training(config.steps, node_id))
    check = result.final_check
    metadata = build_metadata(
        forget_prompts=list(prompts.forget), surrogate_prompt=prompts.surrogate, retain_prompts=list(prompts.retain),
        concept=prompts.concept, surrogate_concept=prompts.surrogate_concept,
        surrogate_prompts=list(prompts.surrogates), steps_done=result.steps_done,
        erasure_gap_closed=check.gap_closed, erasure_retain_drift=check.retain_drift,
        erasure_concept_gap=round(check.concept_gap, 6),
        erasure_checks=[[c.step, c.gap_closed, c.retain_drift] for c in result.checks],
        base_model=family, modules=len(saliency.selected), module_fraction=saliency.module_fraction,
        row_fraction=saliency.row_fraction, timestep_bin_edges=list(timesteps.bin_edges),
        timestep_probabilities=[round(p, 6) for p in timesteps.probabilities], seed=seed,
        final_loss=result.losses[-1],
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **asdict(config))
    adapter = ErasureAdapter(result.state_dict, metadata)
    title = (f"SPARE loss · {check.gap_closed:.0%} of the concept gap closed · retain drift {check.retain_drift:.3f}"
             f" · {result.steps_done} steps")
    return TrainedErasure(adapter, patches.apply_adapter(model, adapter, 1.0),
                          charts.line_chart(list(result.losses), title), result)


def saliency_chart(result: SaliencyMap) -> torch.Tensor:
    blocks = result.block_scores()
    selected_blocks = {block_of(name) for name in result.selected}
    names = list(blocks)
    return charts.bar_chart([blocks[n] for n in names], [_short_block(n) for n in names],
                            f"saliency per block ({len(result.selected)} modules kept, "
                            f"orange = holds kept modules)",
                            [n in selected_blocks for n in names])


def _short_block(name: str) -> str:
    for long, short in (("input_blocks.", "in "), ("middle_block.", "mid "), ("output_blocks.", "out "),
                        ("time_embed.", "time "), ("label_emb.", "label "), ("double_blocks.", "double "),
                        ("single_blocks.", "single "), ("joint_blocks.", "joint ")):
        if name.startswith(long):
            return short + name[len(long):]
    return name


def timestep_chart(result: TimestepDistribution) -> torch.Tensor:
    labels = [f"{lo}-{hi}" for lo, hi in zip(result.bin_edges[:-1], result.bin_edges[1:], strict=True)]
    return charts.bar_chart(list(result.probabilities), labels, "timestep sampling probability per bin")
