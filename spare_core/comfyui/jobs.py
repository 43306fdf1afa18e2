"""The node-level jobs: prompts and a ComfyUI MODEL in, saliency / timesteps / adapter out.

Each job encodes its prompts first (CLIP may need the device), then opens one denoiser session in which the method
runs (spare_core.pipeline: the frozen model draws its own concept samples, then the SPARE stages); what is left here
is ComfyUI's part: encoding, the session, progress, the adapter's metadata and the erased MODEL.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from dataclasses import dataclass
from typing import Optional

import torch

from .. import attacks, charts, memory, neighbours, pipeline
from ..adapter import AdapterMetadata, ErasureAdapter, ErasureFigures, header_value, verdict_of
from ..config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig
from ..pipeline import EncodedPrompts
from ..prompts import ErasurePrompts, _normalise, is_style, style_name
from ..saliency import SaliencyMap, block_of, compute_saliency
from ..samples import generate_samples
from ..timesteps import TimestepDistribution, select_timesteps
from ..trainer import TrainResult
from . import models, patches, progress, reuse, session

log = logging.getLogger("spare")


def _encode(model, clip, prompts: ErasurePrompts, samples: SampleConfig) -> EncodedPrompts:
    def encode(texts, name):  # once per graph run for the same texts (comfyui.reuse)
        return reuse.computed_once(
            "prompt encodings", (model, clip), (tuple(texts), samples.width, samples.height),
            lambda: models.encode_prompts(model, clip, list(texts), samples.width, samples.height, name))
    return EncodedPrompts(
        forget=encode(prompts.forget, "forget_prompts"),
        surrogate=encode(prompts.surrogates, "surrogate_prompt"),
        retain=encode(prompts.retain_or_unconditional, "retain_prompts"),
        uncond=encode([""], "the empty prompt"),
        neighbours=encode(prompts.neighbours, "neighbours") if prompts.neighbours else None,
    )


def _forget_samples_key(prompts: ErasurePrompts, samples: SampleConfig, seed: int) -> tuple:
    return tuple(prompts.forget), samples, seed


def _drawn_forget(model, clip, prompts: ErasurePrompts, samples: SampleConfig, seed: int):
    """The forget samples an earlier node of this graph drew with these inputs, or None."""
    return reuse.lookup("concept samples", (model, clip), _forget_samples_key(prompts, samples, seed))


def _keep_forget(model, clip, prompts: ErasurePrompts, samples: SampleConfig, seed: int, drawn) -> None:
    reuse.store("concept samples", (model, clip), _forget_samples_key(prompts, samples, seed), drawn)


def _forget_samples(denoiser, model, clip, prompts: ErasurePrompts, encoded: EncodedPrompts, samples: SampleConfig,
                    seed: int, report, forget_latents: Optional[torch.Tensor] = None):
    """pipeline.forget_samples, drawn once per graph run for the same inputs (the user's own latents are not kept)."""
    if forget_latents is not None:
        return pipeline.forget_samples(denoiser, encoded, samples, seed, report, forget_latents)
    drawn = _drawn_forget(model, clip, prompts, samples, seed)
    if drawn is not None:
        for _ in range(samples.steps):
            report()
        return drawn
    drawn = pipeline.forget_samples(denoiser, encoded, samples, seed, report)
    _keep_forget(model, clip, prompts, samples, seed, drawn)
    return drawn


def saliency_for_model(model, clip, prompts: ErasurePrompts, samples: SampleConfig, config: SaliencyConfig,
                       seed: int, forget_latents: Optional[torch.Tensor] = None) -> tuple[SaliencyMap, torch.Tensor]:
    encoded = _encode(model, clip, prompts, samples)
    report = progress.StepReporter(pipeline.generation_steps(samples, False, forget_latents is not None)
                                   + config.draws, "SPARE saliency")
    with session.denoiser_session(model) as denoiser:
        forget = _forget_samples(denoiser, model, clip, prompts, encoded, samples, seed, report, forget_latents)
        result = compute_saliency(denoiser, forget, encoded.retain, config, seed, report)
    return result, saliency_chart(result)


def timesteps_for_model(model, clip, prompts: ErasurePrompts, samples: SampleConfig, config: TimestepConfig,
                        seed: int) -> tuple[TimestepDistribution, torch.Tensor]:
    encoded = _encode(model, clip, prompts, samples)
    report = progress.StepReporter(samples.steps + config.bins, "SPARE timesteps")
    with session.denoiser_session(model) as denoiser:
        forget = _forget_samples(denoiser, model, clip, prompts, encoded, samples, seed, report)
        result = select_timesteps(denoiser, forget, encoded.surrogate, config, seed, report)
    return result, timestep_chart(result)


@dataclass(frozen=True)
class TrainedErasure:
    adapter: ErasureAdapter
    model: object
    loss_chart: torch.Tensor
    result: TrainResult
    seconds: dict[str, float]  # wall time of each stage that ran (pipeline.Erasure.seconds)


def train_for_model(model, clip, prompts: ErasurePrompts, samples: SampleConfig, config: TrainConfig, seed: int,
                    saliency: Optional[SaliencyMap] = None, timesteps: Optional[TimestepDistribution] = None,
                    forget_latents: Optional[torch.Tensor] = None,
                    saliency_config: SaliencyConfig = pipeline.DEFAULT_SALIENCY,
                    timestep_config: TimestepConfig = pipeline.DEFAULT_TIMESTEPS,
                    node_id: Optional[str] = None,
                    neighbourhood: Optional[neighbours.Neighbourhood] = None) -> TrainedErasure:
    """Train the erasure; stages not given are computed here with ``saliency_config`` / ``timestep_config``.
    ``node_id``: the Train node's id in the running graph, which the live loss curve is sent to.
    ``neighbourhood``: where ``prompts.neighbours`` came from, recorded in the header."""
    family = models.model_family(model)
    saliency_given, timesteps_given = saliency is not None, timesteps is not None
    encoded = _encode(model, clip, prompts, samples)
    report = progress.StepReporter(pipeline.erase_steps(samples, config, saliency_config, timestep_config,
                                                        forget_latents is not None, saliency_given, timesteps_given,
                                                        bool(prompts.neighbours)), "SPARE train")
    drawn = None if forget_latents is not None else _drawn_forget(model, clip, prompts, samples, seed)
    with session.denoiser_session(model) as denoiser:
        plan = _memory_plan(denoiser, encoded, samples, config)
        config = _planned(config, plan)
        erasure = pipeline.erase(denoiser, encoded, samples, config, seed, saliency, timesteps, forget_latents,
                                 saliency_config, timestep_config, report, report.training(config.steps, node_id),
                                 drawn_forget=drawn)
    if forget_latents is None and drawn is None:
        _keep_forget(model, clip, prompts, samples, seed, erasure.forget)
    result, saliency, timesteps = erasure.result, erasure.saliency, erasure.timesteps
    check = result.final_check
    metadata = AdapterMetadata(
        prompts=prompts, base_model=family, seed=seed, samples=samples, train=config,
        saliency=None if saliency_given else saliency_config,
        timestep_config=None if timesteps_given else timestep_config,
        timestep_bin_edges=timesteps.bin_edges, timestep_scores=timesteps.scores,
        timestep_probabilities=timesteps.probabilities, modules=len(saliency.selected),
        module_fraction=saliency.module_fraction, row_fraction=saliency.row_fraction,
        forget_latents_given=forget_latents is not None, neighbourhood=neighbourhood,
        figures=ErasureFigures(steps_done=result.steps_done, gap_closed=check.gap_closed,
                               retain_drift=check.retain_drift, concept_gap=check.concept_gap,
                               nearer_surrogate=check.nearer_surrogate,
                               guided_nearer_surrogate=check.guided_nearer_surrogate, verdict=verdict_of(check)[0],
                               checks=tuple((c.step, c.gap_closed, c.retain_drift) for c in result.checks),
                               final_loss=result.losses[-1]),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        memory_plan=plan.to_header()).to_header()
    adapter = ErasureAdapter(result.state_dict, metadata)
    verdict, share = verdict_of(check)
    # At most about 95 characters: the chart is 640 px wide and PIL's default font 6 px a character.
    title = (f"SPARE loss · {verdict}: {share:.0%} nearer surrogate · gap closed {check.gap_closed:.0%} · drift "
             f"{check.retain_drift:.3f} · {result.steps_done} steps")
    return TrainedErasure(adapter, patches.apply_adapter(model, adapter, 1.0),
                          charts.line_chart(list(result.losses), title), result, erasure.seconds)


def _memory_plan(denoiser, encoded: EncodedPrompts, samples: SampleConfig, config: TrainConfig) -> memory.MemoryPlan:
    """The training stage's memory plan (spare_core.memory) on this device. On a GPU it projects the step's peak
    from one small forward of the model; anything that fails in planning leaves the settings as given (logged)."""
    as_given = memory.plan_training(None, 0, 0, 1, config.batch_size, config.gradient_checkpointing,
                                    bool(denoiser.blocks), config.micro_batch)
    if denoiser.device.type != "cuda":
        return as_given
    try:
        free = models.free_device_memory(denoiser.device)
        side_h, side_w = samples.latent_size
        probe = torch.zeros(1, denoiser.latent_channels, max(8, side_h // 4), max(8, side_w // 4),
                            device=denoiser.device, dtype=denoiser.dtype)
        cond = encoded.forget.select(torch.zeros(1, dtype=torch.long)).to(denoiser.device, denoiser.dtype)
        sigma = denoiser.sigmas[len(denoiser.sigmas) // 2:len(denoiser.sigmas) // 2 + 1].to(denoiser.device)
        per_row = memory.activation_bytes_per_row(denoiser.unet, lambda x: denoiser.predict_noise(x, sigma, cond),
                                                  probe, side_h * side_w)
        terms = 2 + (encoded.neighbours is not None) + config.robust
        # The weights are on the device already (the session loaded them): free memory has paid for them.
        plan = memory.plan_training(free, 0, per_row, terms, config.batch_size, config.gradient_checkpointing,
                                    bool(denoiser.blocks), config.micro_batch)
    except Exception as error:  # planning must never stop an erasure that would have run
        log.warning("SPARE: the memory planner could not project this step (%s); training with the settings as "
                    "given", error)
        return as_given
    log.info("SPARE memory plan: %s", plan.reason)
    return plan


def _planned(config: TrainConfig, plan: memory.MemoryPlan) -> TrainConfig:
    """``config`` with the plan's choices; the very same config when the plan keeps the settings as given."""
    micro_batch = 0 if plan.micro_batch >= config.batch_size else plan.micro_batch
    if (plan.gradient_checkpointing, micro_batch) == (config.gradient_checkpointing, config.micro_batch):
        return config
    return dataclasses.replace(config, gradient_checkpointing=plan.gradient_checkpointing, micro_batch=micro_batch)


def retrain_from_header(model, clip, metadata: AdapterMetadata) -> TrainedErasure:
    """Train again the adapter that a header describes (``AdapterMetadata.from_header``), on the model it was made
    from: the same tensors, bit for bit, on the same model, torch and device. Refuses a header that does not hold
    everything the training used."""
    reason = metadata.not_reproducible_because
    if reason:
        raise ValueError(f"this adapter cannot be trained again from its header alone: {reason}")
    family = models.model_family(model)
    if family != metadata.base_model:
        raise ValueError(f"the adapter was made for a {metadata.base_model} model, this model is {family}")
    timesteps = None if metadata.timestep_config is not None else TimestepDistribution(
        metadata.timestep_bin_edges, metadata.timestep_scores, metadata.timestep_probabilities)
    return train_for_model(model, clip, metadata.prompts, metadata.samples, metadata.train, metadata.seed,
                           timesteps=timesteps, saliency_config=metadata.saliency,
                           timestep_config=metadata.timestep_config or pipeline.DEFAULT_TIMESTEPS,
                           neighbourhood=metadata.neighbourhood)


def neighbourhood_for_model(model, clip, concept: str, candidates: list[str], count: int, ranking: str,
                            samples: SampleConfig, seed: int) -> tuple[neighbours.Neighbourhood, torch.Tensor]:
    """The ``count`` candidates nearest to ``concept`` (spare_core.neighbours), and their bar chart. The model
    ranking draws the concept's own samples, then scores the candidates nearest by text on them."""
    neighbours.check_count(count, len(candidates))
    if ranking not in neighbours.RANKINGS:
        raise ValueError(f"ranking must be one of {', '.join(neighbours.RANKINGS)}, got {ranking!r}")

    def encode(texts, name):
        return models.encode_prompts(model, clip, list(texts), samples.width, samples.height, name)
    concept_cond, candidate_cond = encode([concept], "concept"), encode(candidates, "candidates")
    by_text = neighbours.text_distances(concept_cond, candidate_cond)
    if ranking == "text":
        result = neighbours.nearest(concept, candidates, by_text, count, ranking)
    else:
        shortlist = sorted(range(len(candidates)), key=lambda i: (by_text[i], i))[:neighbours.MODEL_SHORTLIST]
        rows = candidate_cond.select(torch.tensor(shortlist))
        report = progress.StepReporter(samples.steps + neighbours.MODEL_DRAWS, "SPARE neighbourhood")
        with session.denoiser_session(model) as denoiser:
            own = generate_samples(denoiser, concept_cond, encode([""], "the empty prompt"), samples, seed, report)
            by_model = neighbours.model_distances(denoiser, own, rows, seed, on_draw=report)
        result = neighbours.nearest(concept, [candidates[i] for i in shortlist], by_model, count, ranking,
                                    len(candidates))
    return result, neighbourhood_chart(result)


def neighbourhood_chart(result: neighbours.Neighbourhood) -> torch.Tensor:
    # Bars show closeness (the nearest distance over each one's), so the nearest neighbour has the tallest bar.
    nearest = max(result.distances[0], 1e-12)
    # Bar labels are short: 'Monet style' → 'Monet', 'a golden retriever' → 'golden retriever'.
    labels = [n.removesuffix(" style").removeprefix("an ").removeprefix("a ") for n in result.neighbours]
    return charts.bar_chart([nearest / max(d, 1e-12) for d in result.distances], labels,
                            f"nearest to {result.concept!r} by the {result.ranking} "
                            f"(of {result.candidates} candidates; bar = nearest distance / distance)")


@dataclass
class AttackFindings:
    """What the two attacks found against an erased model, with the neutral prompts' floor (spare_core.attacks)."""

    soft_token: attacks.SoftTokenResult
    discrete: attacks.DiscreteResult
    neutral: float


def attack_erasure(base_model, model, clip, forget: list[str], slot: str, banned: list[str],
                   budgets: tuple[attacks.SoftTokenBudget, attacks.DiscreteBudget], seed: int = 0,
                   vocabulary: Optional[list[str]] = None) -> AttackFindings:
    """Both attacks on ``model`` (erased) against ``base_model`` (unerased): the unerased model draws its own samples
    of the ``forget`` prompts, and each attack tries to make the erased model predict on them what the unerased one
    did. The word search puts its words in place of ``slot`` (the concept's words in the forget prompts), leaves out
    the words of ``banned`` and draws from ``vocabulary`` (default: the whole words the CLIP's tokenizer knows; the
    shipped phrase lists' words where it exposes none)."""
    soft_budget, discrete_budget = budgets
    side = models.native_resolution(model)
    samples = SampleConfig(samples_per_prompt=1, width=side, height=side, cfg=models.sample_guidance_scale(model))

    def encode(texts, name="attack prompts"):
        return models.encode_prompts(model, clip, list(texts), side, side, name)
    cond, uncond = encode(forget, "the forget prompts"), encode([""], "the empty prompt")
    vocabulary = vocabulary or models.tokenizer_words(clip) or attacks.words_of(
        neighbours.read_vocabulary("general") + neighbours.read_vocabulary("synthcanvas"))
    report = progress.StepReporter(samples.steps + 3, "SPARE report")
    with session.denoiser_session(base_model) as denoiser:
        own = generate_samples(denoiser, cond, uncond, samples, seed, report)
        draws = attacks.attack_draws(denoiser, own, soft_budget.draws, seed)
    with session.denoiser_session(model) as denoiser:
        neutral = attacks.neutral_share(denoiser, draws, encode)
        report()
        soft = attacks.soft_token_attack(denoiser, draws, soft_budget, seed)
        report()
        found = attacks.discrete_search(denoiser, draws, encode, vocabulary, banned, discrete_budget, seed,
                                        list(forget), slot)
        report()
    return AttackFindings(soft, found, neutral)


@dataclass
class ErasureReport:
    text: str
    chart: torch.Tensor
    attack_prompt: str
    findings: AttackFindings


REPORT_PROMPTS = 4  # forget prompts of the adapter whose samples the attacks are fitted and scored on


def report_for_model(model, clip, adapter: ErasureAdapter, preset: str, seed: int = 0,
                     concept: str = "") -> ErasureReport:
    """How much of the erased concept prompt attacks bring back, on ``model`` (which carries ``adapter``) against
    the same model without it (Remove gives it back): the soft-token attack and the discrete search, each as the
    share of the erasure undone on the concept's own samples (spare_core.attacks), beside the neutral prompts'
    floor and the adapter's own figures. ``concept``, where given, is attacked in place of the adapter's own
    forget prompts (a warning says so when it is not the adapter's concept)."""
    if preset not in attacks.PRESETS:
        raise ValueError(f"preset must be one of {', '.join(attacks.PRESETS)}, got {preset!r}")
    soft_budget = attacks.PRESETS[preset][0]
    header = adapter.metadata
    forget = header_value(header, "forget_prompts", [])
    erased = header.get("concept") or (forget[0] if isinstance(forget, list) and forget else "")
    if concept.strip():
        concept = concept.strip()
        if _normalise(concept).lower() != _normalise(erased).lower():
            log.warning("SPARE Erasure Report: attacking %r, but this adapter erases %r; the report measures how much "
                        "of %r the erasure hides", concept, erased, concept)
        forget = [concept]
    elif not isinstance(forget, list) or not forget:
        raise ValueError("the adapter's header has no forget prompts, so there is no concept to attack: use an "
                         "adapter made by Train SPARE Adapter, or type the concept to attack")
    else:
        concept = erased
    base = patches.remove_adapter(model, adapter)
    if base is model:
        raise ValueError(f"the MODEL does not carry this adapter (erasing {concept!r}): connect the MODEL that Train "
                         f"SPARE Adapter or Apply Erasure LoRA returned with this adapter applied")
    slot = style_name(concept) if is_style(concept) else concept
    findings = attack_erasure(base, model, clip, forget[:REPORT_PROMPTS], slot, [concept],
                              attacks.PRESETS[preset], seed)
    soft, found = findings.soft_token, findings.discrete
    attack_prompt = attacks.substitute(forget[0], slot, found.prompt)
    figures = ErasureFigures.from_header(header)
    lines = [f"erasure report for {concept!r} ({preset} preset)"]
    if figures.gap_closed is not None:
        lines.append(f"training's check: {figures.gap_closed:.0%} of the concept gap closed, retain drift "
                     f"{figures.retain_drift:.3f}")
    lines += [f"soft-token attack ({soft_budget.tokens} tokens, {soft_budget.steps} steps): undoes "
              f"{soft.restored:.0%} of the erasure",
              f"discrete search ({found.queries} prompts): undoes {found.restored:.0%} with {found.prompt!r} in "
              f"place of {slot!r}, e.g. {attack_prompt!r}",
              f"neutral prompts (no concept at all): {findings.neutral:.0%}; an attack brings the concept back only "
              f"as far as it stands above this floor",
              "(share of the erasure undone on the concept's own samples, in the model's prediction; 0 % = the "
              "attack brings nothing back)"]
    chart = charts.bar_chart([max(findings.neutral, 0.0), max(soft.restored, 0.0), max(found.restored, 0.0)],
                             ["neutral", "soft-token", "discrete"],
                             f"share of the erasure of {concept!r} undone by each attack")
    return ErasureReport("\n".join(lines), chart, attack_prompt, findings)


def saliency_chart(result: SaliencyMap) -> torch.Tensor:
    """Mean saliency per block on a log scale: a model's first and last convolutions carry gradients hundreds of
    times larger than its attention blocks, which a linear scale would draw as nothing. With a share of modules
    kept, orange blocks hold kept modules and each bar says how many of its modules are kept."""
    blocks = result.block_scores()
    names = list(blocks)
    total = {name: 0 for name in names}
    kept = {name: 0 for name in names}
    for module in result.module_scores:
        total[block_of(module)] += 1
    for module in result.selected:
        kept[block_of(module)] += 1
    every_module = len(result.selected) == len(result.module_scores)
    title = ("saliency per block, log scale: every module kept (module fraction 1.0)" if every_module else
             f"saliency per block, log scale: {len(result.selected)} of {len(result.module_scores)} modules kept "
             f"(orange; kept / all above each bar)")
    return charts.bar_chart([blocks[n] for n in names], [_short_block(n) for n in names], title,
                            [] if every_module else [kept[n] > 0 for n in names], log_scale=True,
                            notes=[] if every_module else [f"{kept[n]}/{total[n]}" for n in names])


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
