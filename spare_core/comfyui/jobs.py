"""The node-level jobs: prompts and a ComfyUI MODEL in, saliency / timesteps / adapter out.

Each job encodes its prompts first (CLIP may need the device), then opens one denoiser session in which the method
runs (spare_core.pipeline: the frozen model draws its own concept samples, then the SPARE stages); what is left here
is ComfyUI's part: encoding, the session, progress, the adapter's metadata and the erased MODEL.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .. import charts, pipeline
from ..adapter import ErasureAdapter, build_metadata
from ..config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig
from ..pipeline import EncodedPrompts
from ..prompts import ErasurePrompts
from ..saliency import SaliencyMap, block_of, compute_saliency
from ..timesteps import TimestepDistribution, select_timesteps
from ..trainer import TrainResult
from . import models, patches, progress, session

# Frozen (immutable) configs: safe to share as argument defaults.
_DEFAULT_SALIENCY = SaliencyConfig()
_DEFAULT_TIMESTEPS = TimestepConfig()


def _encode(model, clip, prompts: ErasurePrompts, samples: SampleConfig) -> EncodedPrompts:
    def encode(texts, name):
        return models.encode_prompts(model, clip, list(texts), samples.width, samples.height, name)
    return EncodedPrompts(
        forget=encode(prompts.forget, "forget_prompts"),
        surrogate=encode(prompts.surrogates, "surrogate_prompt"),
        retain=encode(prompts.retain_or_unconditional, "retain_prompts"),
        uncond=encode([""], "the empty prompt"),
    )


def saliency_for_model(model, clip, prompts: ErasurePrompts, samples: SampleConfig, config: SaliencyConfig,
                       seed: int, forget_latents: Optional[torch.Tensor] = None) -> tuple[SaliencyMap, torch.Tensor]:
    encoded = _encode(model, clip, prompts, samples)
    report = progress.StepReporter(pipeline.generation_steps(samples, False, forget_latents is not None)
                                   + config.draws)
    with session.denoiser_session(model) as denoiser:
        forget = pipeline.forget_samples(denoiser, encoded, samples, seed, report, forget_latents)
        result = compute_saliency(denoiser, forget, encoded.retain, config, seed, report)
    return result, saliency_chart(result)


def timesteps_for_model(model, clip, prompts: ErasurePrompts, samples: SampleConfig, config: TimestepConfig,
                        seed: int) -> tuple[TimestepDistribution, torch.Tensor]:
    encoded = _encode(model, clip, prompts, samples)
    report = progress.StepReporter(samples.steps + config.bins)
    with session.denoiser_session(model) as denoiser:
        forget = pipeline.forget_samples(denoiser, encoded, samples, seed, report)
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
    report = progress.StepReporter(pipeline.erase_steps(samples, config, saliency_config, timestep_config,
                                                        forget_latents is not None, saliency is not None,
                                                        timesteps is not None))
    with session.denoiser_session(model) as denoiser:
        erasure = pipeline.erase(denoiser, encoded, samples, config, seed, saliency, timesteps, forget_latents,
                                 saliency_config, timestep_config, report, report.training(config.steps, node_id))
    result, saliency, timesteps = erasure.result, erasure.saliency, erasure.timesteps
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
