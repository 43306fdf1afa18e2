"""Stage 4 of SPARE: self-distillation into the sparse adapter.

Student = model + adapter, teacher = the same model with the adapter off (no second copy):
    L = ‖ε_S(x_t, c_forget) − sg[ε_T(x_t, c_surrogate)]‖² + λ · ‖ε_S(x_t, c_retain) − sg[ε_T(x_t, c_retain)]‖²
(SPARE, arXiv 2602.07058, forget and retain distillation terms), with t drawn from the concept's
timestep distribution. With neighbours (the concepts next to the erased one, from Concept Neighbourhood) an
adjacency term μ·‖ε_S(x_t, c_n) − sg[ε_T(x_t, c_n)]‖² on the neighbours' own samples keeps them with a weight of
their own, apart from the general retain term, as FADE (arXiv 2503.19783) separates adjacency from guidance.
In robust mode (config.robust) an inner soft-token attack (spare_core.attacks, after AdvUnlearn and STEREO) finds,
every robust_every steps, tokens δ that bring the concept back on the student; the term ‖ε_S(x_t, c_f ⊕ δ) − target‖²
then joins the forget term with the forget term's own target, so the erasure must hold for the attacked prompt too.
With overshoot η > 0 the forget target moves past the surrogate, away from the concept:
sg[ε_T(x_t, c_s) + η·(ε_T(x_t, c_s) − ε_T(x_t, c_f))]. Only adapter parameters receive gradients, so backward
stops at the earliest adapted layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attacks import AttackDraws, SoftTokenBudget, soft_token_attack, with_tokens
from .config import TrainConfig
from .denoiser import Conditioning, Denoiser, draw_noise
from .lora import SparseLoRASet
from .saliency import SaliencyMap
from .samples import ConceptSamples
from .timesteps import TimestepDistribution

log = logging.getLogger("spare")


class NonFiniteLossError(RuntimeError):
    """Training diverged; the model is untouched and no adapter is produced."""


@dataclass(frozen=True)
class ErasureCheck:
    """How far the erasure got, on held-out noise and timesteps (never the training draws):
    gap_closed   = 1 − rms(ε_S(x_t, c_f) − target) / rms(ε_T(x_t, c_f) − target), target = the training target
                   ε_T(x_t, c_s) + η·(ε_T(x_t, c_s) − ε_T(x_t, c_f)) with η = overshoot (0: the surrogate)
                   (0 before training; 1 = the concept prompt predicts exactly its target),
    retain_drift = rms(ε_S(x_t, c_r) − ε_T(x_t, c_r)) / rms(ε_T(x_t, c_f) − ε_T(x_t, c_s))
                   (how far retained prompts moved, as a share of the concept's own gap; 0 before training),
    nearer_surrogate = share of the held-out draws on which the erased model's prediction for the concept is
                   nearer the surrogate's prediction than the concept's own (unerased) one (0 before training;
                   with overshoot 1 a draw crosses once a quarter of its way to the target is closed),
    guided_nearer_surrogate = the same share for the concept's guidance direction ε(x_t, c_f) − ε(x_t, ∅), the part
                   of the prediction that classifier-free guidance multiplies (an adapter that moves every prompt's
                   prediction alike, the empty prompt's too, leaves that direction and so the picture as it was),
    with t uniform over the model's schedule, rms over every sample and latent element, and each residual weighed
    by its σ (so the figures compare denoised images, x0 = x_t − σ·ε, not noise predictions)."""

    gap_closed: float
    retain_drift: float
    step: int
    concept_gap: float = 0.0  # rms(σ·(ε_T(x_t, c_f) − ε_T(x_t, c_s))) itself: how much the concept changes the picture
    nearer_surrogate: Optional[float] = None
    guided_nearer_surrogate: Optional[float] = None

    @staticmethod
    def measure(step: int, concept: torch.Tensor, surrogate: torch.Tensor, student_forget: torch.Tensor,
                retain: torch.Tensor, student_retain: torch.Tensor, sigma_forget: torch.Tensor,
                sigma_retain: torch.Tensor, overshoot: float = 0.0, unconditional: Optional[torch.Tensor] = None,
                student_unconditional: Optional[torch.Tensor] = None) -> "ErasureCheck":
        """The figures above from noise predictions on the same draws: the frozen model's (``concept``,
        ``surrogate``, ``retain``, ``unconditional`` for the empty prompt on the forget draws) and the erased
        model's (``student_*``), with each draw's σ. The one definition of "gap closed": the trainer's check, the
        test helpers and the benchmarks all measure through it. Without the empty prompt's predictions the guided
        share is not measured (None)."""
        # Root-mean-square norms, not squared errors: sampling with guidance scale w multiplies what is left of the
        # concept direction by w, so a residual of a quarter of the gap (94 % of its squared error gone) still draws
        # the concept at w = 4. The norm ratio says that plainly. Each noise residual is weighed by its sigma, i.e.
        # compared as denoised images (x0 = x_t − σ·ε): in noise space the low-noise draws dominate, yet the
        # high-noise steps of a sampler decide what the picture shows.
        weight_f = sigma_forget.view(-1, 1, 1, 1).to(concept.device)
        weight_r = sigma_retain.view(-1, 1, 1, 1).to(concept.device)
        # With overshoot the training target lies past the surrogate; the share closed is measured towards it.
        target = surrogate + overshoot * (surrogate - concept)
        gap = float((weight_f * (concept - surrogate)).pow(2).mean().sqrt()) or torch.finfo(torch.float32).tiny
        remaining = float((weight_f * (student_forget - target)).pow(2).mean().sqrt())
        drift = float((weight_r * (student_retain - retain)).pow(2).mean().sqrt())
        nearer = nearer_surrogate_share(concept, surrogate, student_forget)
        guided = None
        if unconditional is not None and student_unconditional is not None:
            guided = nearer_surrogate_share(concept, surrogate, student_forget, unconditional, student_unconditional,
                                            guidance=math.inf)
        return ErasureCheck(round(1.0 - remaining / ((1.0 + overshoot) * gap), 4), round(drift / gap, 4), step, gap,
                            nearer, guided)


def nearer_surrogate_share(concept: torch.Tensor, surrogate: torch.Tensor, student: torch.Tensor,
                           unconditional: Optional[torch.Tensor] = None,
                           student_unconditional: Optional[torch.Tensor] = None, guidance: float = 1.0) -> float:
    """Share of the draws (first dimension) on which the erased model's prediction for the concept lies nearer the
    frozen model's prediction for the surrogate than its prediction for the concept, each prediction taken as a
    sampler with classifier-free guidance ``guidance`` = w combines it, ε(∅) + w·(ε(c) − ε(∅)), each model with its
    own empty-prompt prediction (``unconditional``, ``student_unconditional``). w = 1 compares the conditional
    predictions alone (no empty prompt needed); w = inf the guidance directions ε(c) − ε(∅) alone."""
    if guidance != 1.0:
        if unconditional is None or student_unconditional is None:
            raise ValueError("guidance other than 1 needs both models' empty-prompt predictions")
        if math.isinf(guidance):
            student, concept, surrogate = (student - student_unconditional, concept - unconditional,
                                           surrogate - unconditional)
        else:
            student = student_unconditional + guidance * (student - student_unconditional)
            concept = unconditional + guidance * (concept - unconditional)
            surrogate = unconditional + guidance * (surrogate - unconditional)
    # Per draw, a yes or no a user can read ("the concept now comes out as the surrogate on 15 of 16 draws"):
    # σ scales a draw's two distances alike, so it is left out of the comparison.
    to_surrogate = (student - surrogate).flatten(1).pow(2).sum(1)
    to_concept = (student - concept).flatten(1).pow(2).sum(1)
    return round(float((to_surrogate < to_concept).float().mean()), 4)


@dataclass(frozen=True)
class TrainResult:
    state_dict: dict[str, torch.Tensor]
    losses: tuple[float, ...]
    forget_losses: tuple[float, ...]
    retain_losses: tuple[float, ...]
    checks: tuple[ErasureCheck, ...] = ()

    @property
    def steps_done(self) -> int:
        return len(self.losses)

    @property
    def final_check(self) -> Optional[ErasureCheck]:
        return self.checks[-1] if self.checks else None


StepCallback = Callable[..., None]  # (step, loss, ErasureCheck or None)


def _noisy(samples: ConceptSamples, indices: torch.Tensor, denoiser: Denoiser, generator: torch.Generator):
    x0 = samples.latents.to(denoiser.device)
    noise = draw_noise(x0.shape, generator, x0.device)
    return denoiser.add_noise(x0, noise, indices)


def _predict(denoiser: Denoiser, x_t: torch.Tensor, sigma: torch.Tensor,
             conds: list[Conditioning]) -> list[torch.Tensor]:
    """One batched call when the prompts' token lengths agree, else one call per part."""
    sizes = [len(c) for c in conds]
    try:
        cond = Conditioning.cat(conds).to(denoiser.device, denoiser.dtype)
    except ValueError:
        outputs, start = [], 0
        for c, size in zip(conds, sizes, strict=True):
            part = slice(start, start + size)
            outputs.append(denoiser.predict_noise(x_t[part], sigma[part],
                                                  c.to(denoiser.device, denoiser.dtype)).float())
            start += size
        return outputs
    return list(denoiser.predict_noise(x_t, sigma, cond).float().split(sizes))


def _on_copies(forward):
    """``forward`` run on copies of its tensor inputs. The inputs of a checkpointed block are what backward
    recomputes it from, and Flux's blocks add their residuals in place onto their inputs (``img += ...``); the
    copies live only inside the recomputed region."""
    def copy(value):
        return value.clone() if isinstance(value, torch.Tensor) else value

    def run(*args, **kwargs):
        return forward(*map(copy, args), **{name: copy(value) for name, value in kwargs.items()})
    return run


@contextlib.contextmanager
def recomputed_in_backward(blocks: tuple[nn.Module, ...], modify_inputs: bool = False):
    """Gradient checkpointing: while gradients are on, each block keeps only its inputs and recomputes its
    activations during backward. Non-reentrant checkpointing runs the adapter hooks again on recompute, so the
    recomputed block is the one that ran. Teacher passes (no gradients) run the blocks as they are.
    ``modify_inputs``: the blocks add residuals in place onto their inputs, so they run on copies."""
    # A forward set on the instance by someone else (another node pack's patch) is wrapped and put back after.
    own_forwards = [block.__dict__.get("forward") for block in blocks]
    for block in blocks:
        def run(*args, _forward=block.forward, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_on_copies(_forward) if modify_inputs else _forward, *args, use_reentrant=False,
                                  **kwargs)
            return _forward(*args, **kwargs)
        block.forward = run
    try:
        yield
    finally:
        for block, own in zip(blocks, own_forwards, strict=True):
            if own is None:
                del block.forward  # the class's forward again
            else:
                block.forward = own


@dataclass(frozen=True)
class _CheckBatch:
    """Fixed held-out draws: forget samples with their surrogate rows, retain samples, noise and sigmas."""

    x_forget: torch.Tensor
    sigma_forget: torch.Tensor
    forget: ConceptSamples
    surrogate: Conditioning
    x_retain: torch.Tensor
    sigma_retain: torch.Tensor
    retain: ConceptSamples
    unconditional: Optional[Conditioning] = None  # the empty prompt, one row per forget draw


CHECK_SEED_OFFSET = 7919  # the check's noise and timesteps come from their own generator, apart from training's


def _check_batch(denoiser: Denoiser, timesteps: TimestepDistribution, forget: ConceptSamples,
                 surrogate: Conditioning, retain: ConceptSamples, size: int, seed: int,
                 unconditional: Optional[Conditioning] = None) -> _CheckBatch:
    generator = torch.Generator().manual_seed(seed + CHECK_SEED_OFFSET)
    forget_rows, retain_rows = forget.pick(size, generator), retain.pick(size, generator)
    # Uniform over the schedule, as a sampler walks it: the check must not only look where training looked.
    indices = torch.randint(timesteps.num_timesteps, (2 * size,), generator=generator)
    x_f, s_f = _noisy(forget_rows, indices[:size], denoiser, generator)
    x_r, s_r = _noisy(retain_rows, indices[size:], denoiser, generator)
    empty = None if unconditional is None else unconditional.select(torch.zeros(len(x_f), dtype=torch.long))
    return _CheckBatch(x_f, s_f, forget_rows, forget_rows.surrogates(surrogate), x_r, s_r, retain_rows, empty)


@torch.no_grad()
def _teacher_check(denoiser: Denoiser, batch: _CheckBatch) -> tuple[Optional[torch.Tensor], ...]:
    """Teacher predictions for the check: concept, surrogate, retain, and the empty prompt's on the forget draws
    (None without it)."""
    x = torch.cat([batch.x_forget, batch.x_forget, batch.x_retain])
    sigma = torch.cat([batch.sigma_forget, batch.sigma_forget, batch.sigma_retain])
    predicted = _predict(denoiser, x, sigma, [batch.forget.cond, batch.surrogate, batch.retain.cond])
    return (*predicted, _unconditional(denoiser, batch))


def _unconditional(denoiser: Denoiser, batch: _CheckBatch) -> Optional[torch.Tensor]:
    if batch.unconditional is None:
        return None
    return _predict(denoiser, batch.x_forget, batch.sigma_forget, [batch.unconditional])[0]


@torch.no_grad()
def _student_check(denoiser: Denoiser, batch: _CheckBatch, teacher, step: int, overshoot: float = 0.0) -> ErasureCheck:
    concept, surrogate, retain, unconditional = teacher
    x = torch.cat([batch.x_forget, batch.x_retain])
    sigma = torch.cat([batch.sigma_forget, batch.sigma_retain])
    student_forget, student_retain = _predict(denoiser, x, sigma, [batch.forget.cond, batch.retain.cond])
    return ErasureCheck.measure(step, concept, surrogate, student_forget, retain, student_retain,
                                batch.sigma_forget, batch.sigma_retain, overshoot, unconditional,
                                _unconditional(denoiser, batch))


# Teacher passes of several steps in one batch: on a CPU a batch of 6 small latents costs about as much as one of
# 12, so the frozen model's targets for 8 steps together cost half of 8 separate passes (demo model, 8×8 latents,
# 2 cores). That holds only while a pass is overhead-bound, i.e. for small latents; larger ones gain little and a
# pass's activation memory grows with its batch, so the automatic choice keeps a pass within the latent pixels of
# 48 latents of 16×16 (one step at SD1.5's 64×64, two at 32×32). GPUs keep one pass per step: their batch is
# cheap already, and memory is what a larger one would cost.
AUTO_TEACHER_STEPS_CPU = 8
AUTO_TEACHER_PASS_PIXELS = 48 * 16 * 16


def teacher_steps_per_pass(config: TrainConfig, denoiser: Denoiser, latent_shape: tuple[int, ...],
                           with_neighbours: bool = False) -> int:
    if config.teacher_batch_steps:
        return config.teacher_batch_steps
    if denoiser.device.type != "cpu":
        return 1
    rows_per_step = (2 + bool(config.overshoot) + with_neighbours) * config.batch_size
    fit = AUTO_TEACHER_PASS_PIXELS // (rows_per_step * math.prod(latent_shape[-2:]))
    return max(1, min(AUTO_TEACHER_STEPS_CPU, fit))


@dataclass
class _StepDraw:
    """One training step's noisy inputs (forget rows, then retain rows, then neighbour rows if any); ``targets`` =
    the teacher's (forget target, retain target[, neighbour target]), filled in by _teacher_targets."""

    forget: ConceptSamples
    retain: ConceptSamples
    surrogate_rows: Conditioning
    x_t: torch.Tensor
    sigma: torch.Tensor
    targets: tuple[torch.Tensor, ...] = ()
    neighbours: Optional[ConceptSamples] = None

    @property
    def kept(self) -> list[Conditioning]:
        """Conditioning of the rows whose predictions are kept: retain, then neighbours."""
        return [self.retain.cond] + ([self.neighbours.cond] if self.neighbours is not None else [])


def _draw_step(denoiser: Denoiser, timesteps: TimestepDistribution, forget: ConceptSamples,
               surrogate: Conditioning, retain: ConceptSamples, batch: int, generator: torch.Generator,
               neighbours: Optional[ConceptSamples] = None) -> _StepDraw:
    forget_batch = forget.pick(batch, generator)
    retain_batch = retain.pick(batch, generator)
    indices = timesteps.sample_indices(2 * batch, generator)
    x_forget, sigma_forget = _noisy(forget_batch, indices[:batch], denoiser, generator)
    x_retain, sigma_retain = _noisy(retain_batch, indices[batch:], denoiser, generator)
    xs, sigmas, neighbour_batch = [x_forget, x_retain], [sigma_forget, sigma_retain], None
    if neighbours is not None:
        # Drawn after the forget and retain rows, so that a run without neighbours draws exactly what it did.
        neighbour_batch = neighbours.pick(batch, generator)
        x_n, sigma_n = _noisy(neighbour_batch, timesteps.sample_indices(batch, generator), denoiser, generator)
        xs.append(x_n)
        sigmas.append(sigma_n)
    return _StepDraw(forget_batch, retain_batch, forget_batch.surrogates(surrogate), torch.cat(xs),
                     torch.cat(sigmas), neighbours=neighbour_batch)


ROBUST_SEED_OFFSET = 104729  # the inner attack draws from a generator of its own, so training's draws are unchanged
ROBUST_ATTACK_LEARNING_RATE = 0.2  # the Erasure Report's presets' rate (in units of the prompts' embedding spread)


def _inner_attack(denoiser: Denoiser, adapters: SparseLoRASet, timesteps: TimestepDistribution,
                  forget: ConceptSamples, config: TrainConfig, generator: torch.Generator,
                  tokens: Optional[torch.Tensor], seed: int) -> torch.Tensor:
    """Robust mode's adversary: tokens that, appended to the concept's prompt, bring back on the student (adapter
    on) what the frozen model (adapter off) predicts for the concept. Gradients go to the tokens alone."""
    rows = forget.pick(2 * config.batch_size, generator)
    x_t, sigma = _noisy(rows, timesteps.sample_indices(len(rows), generator), denoiser, generator)
    with adapters.disabled(), torch.no_grad():
        unerased = denoiser.predict_noise(x_t, sigma, rows.cond.to(denoiser.device, denoiser.dtype)).float()
    budget = SoftTokenBudget(tokens=config.robust_tokens, steps=config.robust_attack_steps,
                             learning_rate=ROBUST_ATTACK_LEARNING_RATE, draws=len(rows))
    found = soft_token_attack(denoiser, AttackDraws(x_t, sigma, rows.cond, unerased), budget, seed, initial=tokens)
    return found.tokens.to(denoiser.device)


def _student_loss(denoiser: Denoiser, draw: "_StepDraw", rows: Optional[torch.Tensor], retain_weight: float,
                  adjacency_weight: float, attack_tokens: Optional[torch.Tensor]):
    """The step's loss (and its forget and retain terms) on rows ``rows`` of each term (None: every row): the
    student's predictions for the forget, retain and neighbour rows in one batched call, and the attacked prompt's
    in robust mode."""
    batch = len(draw.forget)
    terms = 1 + len(draw.kept)
    forget_cond, kept = draw.forget.cond, draw.kept
    x_t, sigma, targets = draw.x_t, draw.sigma, draw.targets
    if rows is not None:
        index = torch.cat([rows + term * batch for term in range(terms)]).to(x_t.device)
        x_t, sigma = x_t[index], sigma[index.to(sigma.device)]
        forget_cond, kept = forget_cond.select(rows), [cond.select(rows) for cond in kept]
        targets = tuple(target[rows.to(target.device)] for target in targets)
    target_forget, target_retain, *target_neighbours = targets
    student_forget, student_retain, *student_neighbours = _predict(denoiser, x_t, sigma, [forget_cond] + kept)
    forget_loss = F.mse_loss(student_forget, target_forget)
    retain_loss = F.mse_loss(student_retain, target_retain)
    loss = forget_loss + retain_weight * retain_loss
    if target_neighbours:
        loss = loss + adjacency_weight * F.mse_loss(student_neighbours[0], target_neighbours[0])
    if attack_tokens is not None:
        # The attacked prompt joins the forget term: the same rows and target, the tokens appended.
        count = len(student_forget)
        (student_attacked,) = _predict(denoiser, x_t[:count], sigma[:count], [with_tokens(forget_cond, attack_tokens)])
        loss = loss + F.mse_loss(student_attacked, target_forget)
    return loss, forget_loss, retain_loss


def _captured(denoiser: Denoiser) -> Denoiser:
    """The denoiser with its forward compiled for CUDA graphs (config.capture_step); the same denoiser, with one log
    line, where the device is not CUDA."""
    if denoiser.device.type != "cuda":
        log.info("SPARE: capture_step needs a CUDA device; training eagerly on %s", denoiser.device.type)
        return denoiser
    compiled = torch.compile(denoiser.predict_noise, mode="reduce-overhead", dynamic=False)
    return dataclasses.replace(denoiser, predict_noise=compiled)


def _finite(value: float, step: int, config: TrainConfig) -> float:
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"training loss became {value} at step {step + 1} of {config.steps}; the model is unchanged. "
            f"Try a lower learning_rate (now {config.learning_rate}) or a lower alpha (now {config.alpha}).")
    return value


@torch.no_grad()
def _teacher_targets(denoiser: Denoiser, draws: list[_StepDraw], overshoot: float) -> None:
    """The frozen model's targets for several steps in one batched pass (call with the adapter off).
    With overshoot η the forget target is ε(x, surrogate) + η·(ε(x, surrogate) − ε(x, concept)): ESD's negative
    guidance (Gandikota et al. 2023, eq. 3) taken around the surrogate instead of the empty prompt."""
    xs, sigmas, conds = [], [], []
    for draw in draws:
        batch = len(draw.forget)
        xs.append(draw.x_t)
        sigmas.append(draw.sigma)
        conds += [draw.surrogate_rows] + draw.kept
        if overshoot:
            xs.append(draw.x_t[:batch])
            sigmas.append(draw.sigma[:batch])
            conds.append(draw.forget.cond)
    outputs = iter(_predict(denoiser, torch.cat(xs), torch.cat(sigmas), conds))
    for draw in draws:
        target_forget = next(outputs)
        kept = tuple(next(outputs) for _ in draw.kept)
        if overshoot:
            target_forget = target_forget + overshoot * (target_forget - next(outputs))
        draw.targets = (target_forget, *kept)


def train_adapter(denoiser: Denoiser, saliency: SaliencyMap, timesteps: TimestepDistribution,
                  forget: ConceptSamples, surrogate: Conditioning, retain: ConceptSamples, config: TrainConfig,
                  seed: int, on_step: StepCallback = lambda step, loss, check=None: None,
                  neighbours: Optional[ConceptSamples] = None,
                  unconditional: Optional[Conditioning] = None) -> TrainResult:
    """Train and return the adapter as a kohya state dict. ``neighbours``: samples of the concepts next to the
    erased ones, kept by the adjacency term (weight ``config.adjacency_weight``). ``unconditional``: the empty
    prompt, for the check's guided figure (not used in training)."""
    if timesteps.num_timesteps != denoiser.num_timesteps:
        raise ValueError(f"the timestep distribution covers {timesteps.num_timesteps} timesteps but this model "
                         f"has {denoiser.num_timesteps}; select timesteps on the same model")
    if config.gradient_checkpointing and not denoiser.blocks:
        raise ValueError(f"gradient_checkpointing is not available for this {denoiser.family} model: its UNet "
                         f"blocks are unknown to SPARE; turn it off")
    denoiser = _captured(denoiser) if config.capture_step else denoiser
    generator = torch.Generator().manual_seed(seed)
    check = _check_batch(denoiser, timesteps, forget, surrogate, retain, config.check_samples, seed, unconditional)
    teacher = _teacher_check(denoiser, check)
    # before training: 0 and 0, by construction
    checks = [_student_check(denoiser, check, teacher, 0, config.overshoot)]
    adapters = SparseLoRASet(denoiser.unet, config.rank, config.alpha, saliency.row_masks, seed)
    # One fused kernel steps every adapter tensor. On a CPU that is 6x faster than PyTorch's per-tensor loop (300
    # adapter tensors: 25 ms -> 4 ms a step, 2 cores); on an H100 it measured no change beyond noise
    # (docs/benchmarks.md) and costs nothing either.
    optimizer = torch.optim.AdamW(adapters.parameters(), lr=config.learning_rate, weight_decay=0.0,
                                  fused=denoiser.device.type in ("cuda", "cpu"))
    batch = config.batch_size
    micro_batch = config.micro_batch or batch
    losses, forget_losses, retain_losses = [], [], []
    blocks = denoiser.blocks if config.gradient_checkpointing else ()
    per_pass = teacher_steps_per_pass(config, denoiser, tuple(forget.latents.shape), neighbours is not None)
    pending: list[_StepDraw] = []
    attack_generator = torch.Generator().manual_seed(seed + ROBUST_SEED_OFFSET)
    retain_weight = config.retain_weight * (config.robust_retain_scale if config.robust else 1.0)
    attack_tokens: Optional[torch.Tensor] = None
    with adapters.attached(denoiser.unet), recomputed_in_backward(blocks, denoiser.blocks_modify_inputs):
        for step in range(config.steps):
            if config.robust and step % config.robust_every == 0:
                attack_tokens = _inner_attack(denoiser, adapters, timesteps, forget, config, attack_generator,
                                              attack_tokens, seed + step)
            if not pending:
                # Draws for the steps up to the next erasure check (where training may stop), in the order a
                # step-by-step loop would draw them, so the run does not depend on how many share a pass.
                next_check = (step // config.check_every + 1) * config.check_every
                count = min(per_pass, next_check - step, config.steps - step)
                pending = [_draw_step(denoiser, timesteps, forget, surrogate, retain, batch, generator, neighbours)
                           for _ in range(count)]
                with adapters.disabled():
                    _teacher_targets(denoiser, pending, config.overshoot)
            draw = pending.pop(0)
            optimizer.zero_grad(set_to_none=True)
            # Gradient accumulation when micro_batch < batch: the same rows in parts, each part's mean weighed by its
            # share of the batch, so the summed gradient is the whole batch's (up to float rounding). The whole
            # batch is one part of share 1.0 (x * 1.0 == x exactly, so that path trains bit for bit as before).
            parts = [(None, 1.0)] if micro_batch >= batch else [
                (torch.arange(start, min(start + micro_batch, batch)), min(micro_batch, batch - start) / batch)
                for start in range(0, batch, micro_batch)]
            value = forget_value = retain_value = 0.0
            for rows, share in parts:
                part, part_forget, part_retain = _student_loss(denoiser, draw, rows, retain_weight,
                                                               config.adjacency_weight, attack_tokens)
                value += _finite(float(part.detach()), step, config) * share
                forget_value += float(part_forget.detach()) * share
                retain_value += float(part_retain.detach()) * share
                (part * share).backward()
            optimizer.step()
            losses.append(value)
            forget_losses.append(forget_value)
            retain_losses.append(retain_value)
            done = step + 1
            if done % config.check_every == 0 or done == config.steps:
                checks.append(_student_check(denoiser, check, teacher, done, config.overshoot))
                if config.erase_target is not None and checks[-1].gap_closed >= config.erase_target:
                    on_step(step, value, checks[-1])
                    break
            on_step(step, value, checks[-1] if checks[-1].step == done else None)
    return TrainResult(adapters.kohya_state_dict(), tuple(losses), tuple(forget_losses), tuple(retain_losses),
                       tuple(checks))
