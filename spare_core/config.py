"""Typed settings for each stage. The help text of each field doubles as the node tooltip."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


def help_text(config_class, name: str) -> str:
    """The documented meaning of one config field (used for node tooltips)."""
    for f in fields(config_class):
        if f.name == name:
            return f.metadata["help"]
    raise KeyError(f"{config_class.__name__} has no field {name!r}")


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class SampleConfig:
    samples_per_prompt: int = _help("Latents the frozen model generates per prompt; they stand in for a dataset.",
                                    default=2)
    steps: int = _help("Euler steps used to generate each sample latent (few are enough to show the concept).",
                       default=8)
    cfg: float = _help("Classifier-free guidance scale used while generating the sample latents.", default=5.0)
    width: int = _help("Width in pixels of the generated sample images (latent is width/8).", default=512)
    height: int = _help("Height in pixels of the generated sample images (latent is height/8).", default=512)

    def __post_init__(self):
        _check_positive_int("samples_per_prompt", self.samples_per_prompt)
        _check_positive_int("steps", self.steps)
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 8 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8 pixels, got {value!r}")

    @property
    def latent_size(self) -> tuple[int, int]:
        """(height, width) of the sample latents: the VAEs of every supported family downscale by 8."""
        return self.height // 8, self.width // 8


@dataclass(frozen=True)
class SaliencyConfig:
    module_fraction: float = _help(
        "Share of Linear/Conv modules that receive an adapter, ranked by mean gradient saliency. 1.0 = every "
        "module (the default: on the SynthCanvas dev split half the modules left some styles partly drawn at 200 "
        "steps); the SPARE reference keeps the top 0.5, for a smaller adapter.", default=1.0)
    row_fraction: float = _help(
        "Inside each kept module, share of output rows that may change (1.0 = whole module).", default=1.0)
    draws: int = _help("Noisy draws (random noise and timestep per sample) whose |gradient| is accumulated.", default=4)
    retain_contrast: float = _help(
        "Blend between plain forget saliency (0, SalUn's and the SPARE reference's score) and its contrast with "
        "the retain prompts on the same noisy latents (1), which scores low the modules that also carry retained "
        "concepts or ignore the text. Plain erased fully on the SynthCanvas dev split where the contrast did not.",
        default=0.0)

    def __post_init__(self):
        _check_fraction("module_fraction", self.module_fraction)
        _check_fraction("row_fraction", self.row_fraction)
        _check_positive_int("draws", self.draws)
        if not (math.isfinite(self.retain_contrast) and 0 <= self.retain_contrast <= 1):
            raise ValueError(f"retain_contrast must be in [0, 1], got {self.retain_contrast!r}")


@dataclass(frozen=True)
class TimestepConfig:
    bins: int = _help("Number of equal bins the model's timestep schedule is split into.", default=10)
    draws_per_bin: int = _help("Noisy draws per bin used to measure how much the concept changes the prediction.",
                               default=4)
    samples_per_draw: int = _help(
        "Concept samples in each draw (all of them when fewer): the phrase path makes dozens, and a bin's score "
        "needs only a few dozen noisy predictions.", default=16)
    temperature: float = _help(
        "Sharpness of the sampling distribution: p ∝ score^(1/temperature). Large = closer to uniform.", default=1.0)
    top_fraction: float = _help("Share of bins (highest scores) that training may sample; the rest get zero.",
                                default=1.0)

    def __post_init__(self):
        if not isinstance(self.bins, int) or isinstance(self.bins, bool) or self.bins < 1:
            raise ValueError(f"bins must be an integer >= 1, got {self.bins!r}")
        _check_positive_int("draws_per_bin", self.draws_per_bin)
        _check_positive_int("samples_per_draw", self.samples_per_draw)
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        _check_fraction("top_fraction", self.top_fraction)


@dataclass(frozen=True)
class TrainConfig:
    rank: int = _help("LoRA rank of each adapted module.", default=4)
    alpha: float = _help("LoRA alpha; the update is scaled by alpha / rank.", default=4.0)
    steps: int = _help("Optimisation steps of self-distillation.", default=300)
    learning_rate: float = _help("AdamW learning rate for the adapter weights.", default=3e-3)
    retain_weight: float = _help(
        "λ in loss = forget + λ·retain; higher protects retained concepts more. 2.0 was chosen on a dev split "
        "(docs/synthcanvas.md): it kept every dev concept erased and held the neighbours better than 1.0.",
        default=2.0)
    adjacency_weight: float = _help(
        "μ in loss = forget + λ·retain + μ·adjacency: how strongly the concepts next to the erased one (the "
        "neighbours input, from Concept Neighbourhood) are kept, apart from the retain prompts. Used only when "
        "neighbours are connected. 4.0 was chosen on a dev split (docs/synthcanvas.md) among 1, 2, 4 and 8.",
        default=4.0)
    batch_size: int = _help("Noisy samples per term (forget, retain, neighbours) in each step.", default=2)
    overshoot: float = _help(
        "Aim the concept's prediction this share of the concept→surrogate gap beyond the surrogate (negative "
        "guidance around the surrogate, as ESD does around the empty prompt). 0 = aim exactly at the surrogate; "
        "raise it when the concept fades but does not vanish, lower it when neighbouring concepts suffer. 1.0 "
        "was chosen on a dev split (docs/synthcanvas.md).", default=1.0)
    erase_target: Optional[float] = _help(
        "Stop once this share of the way from the concept's prediction to its target (the surrogate, overshot by "
        "overshoot) is closed on held-out noise and timesteps "
        "(checked every check_every steps; steps is then the cap). None = always train all steps.", default=None)
    check_every: int = _help("Steps between erasure checks (gap closed, retain drift) on held-out draws.", default=25)
    teacher_batch_steps: int = _help(
        "Training steps whose frozen-model targets are computed together in one batched pass (the draws and "
        "the result are the same either way). More is faster where small batches cost little more than one "
        "sample (CPUs, small latents) and takes that many times the activation memory of one pass; 0 = auto: on "
        "a CPU up to 8, fewer as latents grow (1 from SD1.5's 512 px), and 1 on a GPU.", default=0)
    check_samples: int = _help("Held-out noisy samples per term in each erasure check.", default=16)
    robust: bool = _help(
        "Train against prompt attacks (after AdvUnlearn and STEREO): every robust_every steps a soft-token attack "
        "(spare_core.attacks) finds robust_tokens token embeddings that, appended to the concept's prompt, bring the "
        "concept back on the adapter as trained so far; from then on the concept's prompt with those tokens joins "
        "the forget term, with the same target. Only the adapter trains; the text encoder is untouched, so the "
        "adapter stays an ordinary UNet LoRA. Costs time.", default=False)
    robust_every: int = _help("Steps between the robust mode's inner attacks (each continues from the tokens the "
                              "last one found).", default=25)
    robust_attack_steps: int = _help("Optimisation steps of each inner attack.", default=10)
    robust_tokens: int = _help("Token embeddings the inner attack appends to the concept's prompt.", default=4)
    robust_retain_scale: float = _help(
        "In robust mode retain_weight is multiplied by this: the attacked forget term pushes on directions the "
        "other concepts share, so the retain term needs more weight. 2.0 was chosen on a dev split "
        "(docs/robustness.md): at 1.0 mean IRA fell to 0.94, at 2.0 IRA and CRA stayed at 0.96.", default=2.0)
    micro_batch: int = _help(
        "Rows of each term per backward pass: with fewer than batch_size, each step runs the batch in parts and "
        "adds up their gradients (the same step, less activation memory, more time). 0 = the whole batch; the "
        "memory planner lowers it on a GPU when the step would not fit.", default=0)
    capture_step: bool = _help(
        "Compile the model's forward for training with torch.compile(mode='reduce-overhead') (CUDA graphs), for "
        "GPUs where a training step is bound by the host launching kernels. CUDA only, and off by default: it has "
        "not yet been checked on a GPU that it trains the same loss curve as eager mode. On a CPU training runs "
        "eagerly and says so.", default=False)
    gradient_checkpointing: bool = _help(
        "Recompute each UNet block's activations during backward instead of keeping them: a fraction of the "
        "GPU memory for about 1.6x the time per step. Turn on when training runs out of memory (SDXL at 1024px).",
        default=False)

    def __post_init__(self):
        _check_positive_int("rank", self.rank)
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")
        _check_positive_int("steps", self.steps)
        _check_positive_int("batch_size", self.batch_size)
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not (math.isfinite(self.retain_weight) and self.retain_weight >= 0):
            raise ValueError(f"retain_weight must be >= 0, got {self.retain_weight!r}")
        if not (math.isfinite(self.adjacency_weight) and self.adjacency_weight >= 0):
            raise ValueError(f"adjacency_weight must be >= 0, got {self.adjacency_weight!r}")
        if not (isinstance(self.overshoot, (int, float)) and math.isfinite(self.overshoot) and self.overshoot >= 0):
            raise ValueError(f"overshoot must be a number >= 0, got {self.overshoot!r}; 0 aims at the surrogate")
        if self.erase_target is not None and not (
                isinstance(self.erase_target, (int, float)) and math.isfinite(self.erase_target)
                and 0.0 < self.erase_target <= 1.0):
            raise ValueError(f"erase_target (train until this share of the gap is closed) must be in (0, 1], "
                             f"got {self.erase_target!r}; e.g. 0.9, or turn the stop on the gap off")
        _check_positive_int("check_every", self.check_every)
        _check_positive_int("check_samples", self.check_samples)
        if not isinstance(self.micro_batch, int) or isinstance(self.micro_batch, bool) or self.micro_batch < 0:
            raise ValueError(f"micro_batch must be a whole number >= 0 (0 = the whole batch), got {self.micro_batch!r}")
        if not isinstance(self.capture_step, bool):
            raise ValueError(f"capture_step must be true or false, got {self.capture_step!r}")
        if not isinstance(self.robust, bool):
            raise ValueError(f"robust must be true or false, got {self.robust!r}")
        for name in ("robust_every", "robust_attack_steps", "robust_tokens"):
            _check_positive_int(name, getattr(self, name))
        if not (isinstance(self.robust_retain_scale, (int, float)) and math.isfinite(self.robust_retain_scale)
                and self.robust_retain_scale >= 0):
            raise ValueError(f"robust_retain_scale must be a number >= 0, got {self.robust_retain_scale!r}")
        if self.robust and self.robust_every > self.steps:
            raise ValueError(f"robust_every ({self.robust_every}) is larger than steps ({self.steps}), so the robust "
                             f"mode's attack would never run: use at most {self.steps}, or more steps")
        if not isinstance(self.teacher_batch_steps, int) or isinstance(self.teacher_batch_steps, bool) \
                or self.teacher_batch_steps < 0:
            raise ValueError(f"teacher_batch_steps must be a whole number >= 0 (0 = auto), "
                             f"got {self.teacher_batch_steps!r}")



def steps_for_concepts(steps: int, concepts: int) -> int:
    """Training steps of a job that erases ``concepts`` concepts together, given ``steps`` for one: steps·√k,
    rounded (k = 1 keeps ``steps``). One job shares its steps among its concepts, so each sees about 1/k of the
    forget draws a job of its own would give it; √k was chosen on a dev split (benchmarks/multi_budget_dev.py,
    docs/synthcanvas.md) over constant steps, steps·k/2 and a batch of 2·ceil(√k): at k = 8 it was the one that
    kept IRA and CRA ≥ 0.95 within 3× the time of a single-concept job."""
    return max(1, round(steps * math.sqrt(max(1, concepts))))
