"""The erasure adapter: a kohya-format LoRA state dict plus metadata, and its safetensors file.

Keys are kohya's: lora_unet_<module>.lora_down.weight / .lora_up.weight / .alpha. The module part is named the
way the other tools name it (``KeyNames``): for the UNet families (SD1.x, SD2.x, SDXL) the diffusers block names
that kohya's sd-scripts writes (down_blocks_0_attentions_0_…), which ComfyUI's stock LoraLoader and diffusers'
load_lora_weights both map; for the DiT families ComfyUI's own module paths (double_blocks_0_img_attn_qkv, …).
Files written before key format 2 named UNet modules by ComfyUI's paths (input_blocks_1_1_…); they still load.
Metadata lives in the safetensors header as strings; structured values are JSON.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig
from .neighbours import Neighbourhood
from .prompts import ErasurePrompts

FORMAT_NAME = "spare-erasure-lora"
KOHYA_PREFIX = "lora_unet_"
_KEY = rf"^({KOHYA_PREFIX}[A-Za-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha)$"


# 1: every module named by its ComfyUI path. 2: UNet modules by their diffusers block names (see KeyNames).
KEY_FORMAT_VERSION = 2


def kohya_name(module_path: str) -> str:
    """lora_unet_<path with dots as underscores>: a kohya key stem for a module path, as the path is spelled."""
    return KOHYA_PREFIX + module_path.replace(".", "_")


# Inside a UNet's blocks, where ComfyUI's (the original LDM) layer names differ from diffusers'; attention blocks are
# named alike in both. Norm layers are absent: no adapter goes on them (lora.adaptable_modules).
_RESNET_LAYERS = {"in_layers.2": "conv1", "out_layers.3": "conv2", "emb_layers.1": "time_emb_proj",
                  "skip_connection": "conv_shortcut"}
# SDXL's size embedding keeps its original name: diffusers' kohya conversion reads label_emb_0_0 as add_embedding
# .linear_1 but misreads add_embedding_linear_1 (diffusers 0.42), and ComfyUI reads both.
_UNET_STEM_AND_HEAD = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
                       "label_emb.0.0": "label_emb.0.0", "label_emb.0.2": "label_emb.0.2",
                       "input_blocks.0.0": "conv_in", "out.2": "conv_out"}
_BLOCK = r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)\."


def _unet_block_names(paths: set[str]) -> Optional[dict[str, str]]:
    """ComfyUI UNet block prefix -> diffusers block prefix, read off the UNet's own layout: a level of down blocks
    ends at a Downsample (`input_blocks.K.0.op`), a level of up blocks at an Upsample (`output_blocks.K.L.conv`),
    and within a block layer 0 is the resnet and the next, when it is not the sampler, the attention. So any depth,
    width or number of levels of the SD1.x / SD2.x / SDXL kind is named as diffusers' UNet2DConditionModel names
    it. None when ``paths`` are not such a UNet, or when its levels hold different numbers of resnets: ComfyUI's
    own map of diffusers names (comfy.utils.unet_to_diffusers) numbers blocks as if every level held the same
    number, so for such a UNet (the SynthCanvas demo model) it would read those names onto the wrong modules."""
    layers: dict[tuple[str, int], set[int]] = {}
    for path in paths:
        match = re.match(_BLOCK, path)
        if match:
            layers.setdefault((match.group(1), int(match.group(2))), set()).add(int(match.group(3)))
    if not any(kind == "input_blocks" for kind, _ in layers) or "middle_block.0.in_layers.2" not in paths:
        return None
    names = {}
    level = index = 0
    resnets_per_level = []
    for block in sorted(number for kind, number in layers if kind == "input_blocks" and number > 0):
        if f"input_blocks.{block}.0.op" in paths:
            names[f"input_blocks.{block}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
            resnets_per_level.append(index)
            level, index = level + 1, 0
            continue
        names[f"input_blocks.{block}.0"] = f"down_blocks.{level}.resnets.{index}"
        names[f"input_blocks.{block}.1"] = f"down_blocks.{level}.attentions.{index}"
        index += 1
    if len(set(resnets_per_level + [index])) > 1:
        return None
    level = index = 0
    for block in sorted(number for kind, number in layers if kind == "output_blocks"):
        names[f"output_blocks.{block}.0"] = f"up_blocks.{level}.resnets.{index}"
        sampler = next((layer for layer in sorted(layers[("output_blocks", block)])
                        if layer > 0 and f"output_blocks.{block}.{layer}.conv" in paths), None)
        if sampler != 1:
            names[f"output_blocks.{block}.1"] = f"up_blocks.{level}.attentions.{index}"
        if sampler is None:
            index += 1
        else:
            names[f"output_blocks.{block}.{sampler}.conv"] = f"up_blocks.{level}.upsamplers.0.conv"
            level, index = level + 1, 0
    resnets = attentions = 0
    for layer in sorted({int(p.split(".")[1]) for p in paths if p.startswith("middle_block.")}):
        if f"middle_block.{layer}.in_layers.2" in paths:
            names[f"middle_block.{layer}"] = f"mid_block.resnets.{resnets}"
            resnets += 1
        else:
            names[f"middle_block.{layer}"] = f"mid_block.attentions.{attentions}"
            attentions += 1
    return names


def _diffusers_path(path: str, blocks: Mapping[str, str]) -> Optional[str]:
    """One ComfyUI UNet module path in diffusers' spelling; None when the layout does not account for it."""
    if path in _UNET_STEM_AND_HEAD:
        return _UNET_STEM_AND_HEAD[path]
    if path in blocks:  # the samplers' convs are named whole
        return blocks[path]
    parts = path.split(".")
    block = ".".join(parts[:3]) if parts[0] != "middle_block" else ".".join(parts[:2])
    if block not in blocks:
        return None
    inner = path[len(block) + 1:]
    if ".resnets." in blocks[block]:
        inner = _RESNET_LAYERS.get(inner)
        if inner is None:
            return None
    return f"{blocks[block]}.{inner}"


@dataclass(frozen=True)
class KeyNames:
    """The adapter file's key stem for each adaptable module of one model, and back: the one place where the
    pack decides what its files call a module. ``naming`` is "diffusers" (UNet families: diffusers block names,
    as kohya's sd-scripts writes them) or "comfyui" (ComfyUI's module paths: the DiT families, and any UNet
    whose layout is not recognised)."""

    stems: Mapping[str, str]  # module path -> key stem
    naming: str

    @staticmethod
    def for_modules(module_paths) -> "KeyNames":
        paths = set(module_paths)
        blocks = _unet_block_names(paths)
        if blocks is not None:
            stems = {path: _diffusers_path(path, blocks) for path in paths}
            if all(stems.values()):
                return KeyNames({path: kohya_name(name) for path, name in stems.items()}, "diffusers")
        return KeyNames({path: kohya_name(path) for path in paths}, "comfyui")

    def stem(self, module_path: str) -> str:
        return self.stems[module_path]

    def module_paths(self, stems) -> dict[str, Optional[str]]:
        """Each stem's module path: this naming's stems and those of files from before key format 2 (ComfyUI's
        paths) alike; None for a stem that names no module of this model."""
        by_stem = {stem: path for path, stem in self.stems.items()}
        by_stem.update({kohya_name(path): path for path in self.stems})
        return {stem: by_stem.get(stem) for stem in stems}


@dataclass(frozen=True, eq=False)
class ErasureAdapter:
    """Tensors in kohya layout and string metadata. Tensors are never copied once built, so a model
    patched with this adapter can be recognised by identity when the adapter is removed."""

    tensors: Mapping[str, torch.Tensor]
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        stems = {}
        for key in self.tensors:
            match = re.match(_KEY, key)
            if match is None:
                raise ValueError(f"adapter key {key!r} is not a kohya LoRA key (lora_unet_*.lora_down.weight / "
                                 f".lora_up.weight / .alpha)")
            stems.setdefault(match.group(1), set()).add(match.group(2))
        incomplete = [s for s, parts in stems.items() if not {"lora_down.weight", "lora_up.weight"} <= parts]
        if incomplete:
            raise ValueError(f"adapter modules without both lora_down and lora_up: {incomplete[:5]}")
        if not stems:
            raise ValueError("adapter has no LoRA weights")
        for stem in stems:
            self._check_module(stem)

    def _check_module(self, stem: str) -> None:
        """A damaged or hand-edited file must fail here, with the key, not as black images or deep in ComfyUI."""
        down, up = self.tensors[f"{stem}.lora_down.weight"], self.tensors[f"{stem}.lora_up.weight"]
        for name, tensor in (("lora_down.weight", down), ("lora_up.weight", up),
                             ("alpha", self.tensors.get(f"{stem}.alpha"))):
            if tensor is None:
                continue
            if not tensor.is_floating_point():
                raise ValueError(f"adapter key {stem}.{name} holds {tensor.dtype} values; LoRA weights are floats")
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ValueError(f"adapter key {stem}.{name} holds {bad} non-finite (NaN or infinite) values of "
                                 f"{tensor.numel()}; the file is damaged: train or download it again")
        if down.ndim not in (2, 4) or up.ndim != down.ndim:
            raise ValueError(f"adapter module {stem}: lora_down {tuple(down.shape)} and lora_up {tuple(up.shape)} "
                             f"must both be 2-D (Linear) or both 4-D (Conv2d)")
        if up.shape[1] != down.shape[0]:
            raise ValueError(f"adapter module {stem}: lora_up {tuple(up.shape)} has rank {up.shape[1]} but lora_down "
                             f"{tuple(down.shape)} has rank {down.shape[0]}; the two must agree")
        alpha = self.tensors.get(f"{stem}.alpha")
        if alpha is not None and alpha.numel() != 1:
            raise ValueError(f"adapter key {stem}.alpha must be one number, got shape {tuple(alpha.shape)}")

    @property
    def module_stems(self) -> tuple[str, ...]:
        return tuple(sorted({k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0]
                             for k in self.tensors}))

    def info(self, key: str, default=None):
        """A metadata value, JSON-decoded where it was stored as JSON."""
        return header_value(self.metadata, key, default)


def build_metadata(**values) -> dict[str, str]:
    """Header metadata: every value JSON-encoded except plain strings; common kohya fields added."""
    metadata = {"format": FORMAT_NAME, "spare_version": __version__, "key_format": str(KEY_FORMAT_VERSION)}
    for key, value in values.items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    if "rank" in values:
        metadata["ss_network_dim"] = str(values["rank"])
    if "alpha" in values:
        metadata["ss_network_alpha"] = str(values["alpha"])
    metadata["ss_network_module"] = "networks.lora"
    return metadata


# --- The header -----------------------------------------------------------------------------------------------------
# Key names are kept as the first versions wrote them, so that older files describe and list the same; the settings
# of the sample, saliency and timestep stages (added later) are JSON objects under *_config keys.
_FIGURE_KEYS = {"steps_done": "steps_done", "gap_closed": "erasure_gap_closed",
                "retain_drift": "erasure_retain_drift", "concept_gap": "erasure_concept_gap",
                "nearer_surrogate": "erasure_nearer_surrogate",
                "guided_nearer_surrogate": "erasure_guided_nearer_surrogate", "verdict": "erasure_verdict",
                "checks": "erasure_checks", "final_loss": "final_loss"}
_TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig))  # stored flat: rank, alpha, steps, ... as kohya tools expect
# Training settings added after headers recorded every setting: an older header without them trained at the default.
_TRAIN_KEYS_ADDED_LATER = ("adjacency_weight", "robust", "robust_every", "robust_attack_steps", "robust_tokens",
                           "robust_retain_scale", "micro_batch", "capture_step")
GIVEN = "given"  # a stage's config key when its result came from a stage node, not from the training job


def header_value(header: Mapping[str, str], key: str, default=None):
    """One header value, JSON-decoded where it was stored as JSON; ``default`` when absent."""
    raw = header.get(key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return raw


# The verdict a user reads beside the figures. It comes from the erasure check's guided share: on how many held-out
# draws the concept's guidance direction ε(c_f) − ε(∅) lies nearer the surrogate's than the concept's own (the plain
# share, without the empty prompt, read 1.0 on adapters the judge still saw the concept in: they had moved every
# prompt alike). Share ≥ hi erased, < lo not erased, partly between. Figure and thresholds were chosen on
# benchmarks/verdict_calibration.py's dev split against the SynthCanvas judge (its classes: UA ≥ 0.9 erased, ≥ 0.5
# partly): the pair that agreed with the judge on most of its 44 rows (38). With the check's 16 draws: erased from
# 8 draws, partly erased at 6 or 7, not erased at 5 or fewer. docs/synthcanvas.md reports the agreement on the
# held-out split.
VERDICT_THRESHOLDS = (0.375, 0.5)  # (lo, hi)
VERDICT_FIGURE = "guided_nearer_surrogate"  # the ErasureCheck / ErasureFigures field the verdict reads
VERDICTS = ("erased", "partly erased", "not erased")


def verdict_of(check) -> tuple[Optional[str], Optional[float]]:
    """The verdict of an erasure check (trainer.ErasureCheck) or of a file's figures, with the share it read."""
    share = getattr(check, VERDICT_FIGURE, None)
    return erasure_verdict(share), share


def erasure_verdict(share: Optional[float], thresholds: tuple[float, float] = VERDICT_THRESHOLDS) -> Optional[str]:
    """"erased", "partly erased" or "not erased" from a share of draws nearer the surrogate (the shipped verdict
    reads VERDICT_FIGURE); None when it was not measured (files older than the figure)."""
    if share is None:
        return None
    lo, hi = thresholds
    if share >= hi:
        return VERDICTS[0]
    return VERDICTS[1] if share >= lo else VERDICTS[2]


@dataclass(frozen=True)
class ErasureFigures:
    """What the training measured: steps run, and the last held-out erasure check (share of the concept-to-target
    gap closed, drift of the retained concepts, the gap's size) with every earlier check as (step, gap closed, retain
    drift)."""

    steps_done: Optional[int] = None
    gap_closed: Optional[float] = None
    retain_drift: Optional[float] = None
    concept_gap: Optional[float] = None
    nearer_surrogate: Optional[float] = None  # share of held-out draws nearer the surrogate (absent in older files)
    guided_nearer_surrogate: Optional[float] = None  # the same for the guidance direction (absent in older files)
    verdict: Optional[str] = None  # erasure_verdict of the final check (absent in older files)
    checks: tuple[tuple[int, float, float], ...] = ()
    final_loss: Optional[float] = None

    def to_header(self) -> dict[str, object]:
        values = {name: getattr(self, name) for name in _FIGURE_KEYS}
        values["checks"] = [list(check) for check in self.checks]
        if self.concept_gap is not None:
            values["concept_gap"] = round(self.concept_gap, 6)
        return {_FIGURE_KEYS[name]: value for name, value in values.items() if value is not None}

    @staticmethod
    def from_header(header: Mapping[str, str]) -> "ErasureFigures":
        """Tolerant: any LoRA file gives figures, None where its header has none (the batch ledger, the library)."""
        values = {name: header_value(header, key) for name, key in _FIGURE_KEYS.items()}
        checks = values["checks"]
        values["checks"] = tuple(tuple(check) for check in checks if isinstance(check, list)) \
            if isinstance(checks, list) else ()
        return ErasureFigures(**values)


@dataclass(frozen=True)
class AdapterMetadata:
    """Everything an erasure adapter's header records: the prompts, the settings of every stage, the seed, the
    timestep distribution it trained with and the figures, so that the header alone can train the same adapter
    again (``not_reproducible_because`` says when it cannot). ``saliency`` / ``timestep_config`` are None when that
    stage's result came from its own node (Compute Saliency Mask, Timestep Selector) instead of the training job."""

    prompts: ErasurePrompts
    base_model: str
    seed: int
    samples: SampleConfig
    train: TrainConfig
    saliency: Optional[SaliencyConfig]
    timestep_config: Optional[TimestepConfig]
    timestep_bin_edges: tuple[int, ...]
    timestep_scores: tuple[float, ...]
    timestep_probabilities: tuple[float, ...]
    modules: int
    module_fraction: float
    row_fraction: float
    forget_latents_given: bool = False
    neighbourhood: Optional[Neighbourhood] = None  # where prompts.neighbours came from (Concept Neighbourhood)
    figures: ErasureFigures = ErasureFigures()
    created: str = ""
    memory_plan: Optional[Mapping[str, object]] = None  # what the memory planner chose and why (spare_core.memory)

    @property
    def not_reproducible_because(self) -> Optional[str]:
        if self.forget_latents_given:
            return "it was trained on the user's own forget latents, which the file does not hold"
        if self.saliency is None:
            return ("its saliency map came from a Compute Saliency Mask node, whose samples and seed the file does "
                    "not hold")
        return None

    def to_header(self) -> dict[str, str]:
        prompts = self.prompts
        return build_metadata(
            forget_prompts=list(prompts.forget), surrogate_prompt=prompts.surrogate,
            retain_prompts=list(prompts.retain), concept=prompts.concept,
            surrogate_concept=prompts.surrogate_concept, concepts=[list(pair) for pair in prompts.concepts],
            **({"neighbour_prompts": list(prompts.neighbours)} if prompts.neighbours else {}),
            **({"neighbourhood": self.neighbourhood.to_json()} if self.neighbourhood else {}),
            surrogate_prompts=list(prompts.surrogates),
            base_model=self.base_model, seed=self.seed, modules=self.modules,
            module_fraction=self.module_fraction, row_fraction=self.row_fraction,
            sample_config=asdict(self.samples),
            saliency_config=GIVEN if self.saliency is None else asdict(self.saliency),
            timestep_config=GIVEN if self.timestep_config is None else asdict(self.timestep_config),
            timestep_bin_edges=list(self.timestep_bin_edges), timestep_scores=list(self.timestep_scores),
            timestep_probabilities=list(self.timestep_probabilities),
            forget_samples="given latents" if self.forget_latents_given else "generated",
            created=self.created, **self.figures.to_header(), **asdict(self.train),
            **({"memory_plan": dict(self.memory_plan)} if self.memory_plan else {}))

    @staticmethod
    def from_header(header: Mapping[str, str]) -> "AdapterMetadata":
        """Strict: ValueError naming what is missing when the header is not a complete SPARE record (another
        LoRA, or a file from a version that did not record every stage's settings)."""
        if header.get("format") != FORMAT_NAME:
            raise ValueError(f"not a SPARE erasure adapter (header format {header.get('format')!r}, expected "
                             f"{FORMAT_NAME!r})")
        missing = [key for key in ("forget_prompts", "surrogate_prompts", "retain_prompts", "sample_config",
                                   "saliency_config", "timestep_config", "timestep_scores", "seed", *_TRAIN_KEYS)
                   if key not in header and key not in _TRAIN_KEYS_ADDED_LATER]
        if missing:
            raise ValueError(f"the adapter's header lacks {', '.join(missing)}: it was made by SPARE "
                             f"{header.get('spare_version', 'of an unknown version')}, before every setting was "
                             f"recorded")

        def config(config_class, key):
            value = header_value(header, key)
            return None if value == GIVEN else config_class(**value)
        concept = header.get("concept", "")
        prompts = ErasurePrompts(
            tuple(header_value(header, "forget_prompts")), header.get("surrogate_prompt", ""),
            tuple(header_value(header, "retain_prompts")), concept=concept,
            surrogate_concept=header.get("surrogate_concept", ""),
            expanded_surrogates=tuple(header_value(header, "surrogate_prompts")) if concept else None,
            concepts=tuple(tuple(pair) for pair in header_value(header, "concepts", [])),
            neighbours=tuple(header_value(header, "neighbour_prompts", [])))
        return AdapterMetadata(
            prompts=prompts, base_model=header.get("base_model", ""), seed=header_value(header, "seed"),
            samples=SampleConfig(**header_value(header, "sample_config")),
            train=TrainConfig(**{key: header_value(header, key) for key in _TRAIN_KEYS if key in header}),
            saliency=config(SaliencyConfig, "saliency_config"),
            timestep_config=config(TimestepConfig, "timestep_config"),
            timestep_bin_edges=tuple(header_value(header, "timestep_bin_edges")),
            timestep_scores=tuple(header_value(header, "timestep_scores")),
            timestep_probabilities=tuple(header_value(header, "timestep_probabilities")),
            modules=header_value(header, "modules"), module_fraction=header_value(header, "module_fraction"),
            row_fraction=header_value(header, "row_fraction"),
            forget_latents_given=header.get("forget_samples") == "given latents",
            neighbourhood=Neighbourhood.from_json(header["neighbourhood"]) if "neighbourhood" in header else None,
            figures=ErasureFigures.from_header(header), created=header.get("created", ""))


def _default_file_mode() -> int:
    """The mode open() would give a new file under this process's umask (0644 under the usual 022). Linux reports
    the umask in /proc; elsewhere it can only be read by setting it, which other threads would briefly see."""
    try:
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


def write_safetensors_atomically(tensors: Mapping[str, torch.Tensor], path: os.PathLike,
                                 metadata: Mapping[str, str] | None = None, replace: bool = True) -> Path:
    """Temp file in the same folder, then rename: a reader never sees half a file. The temp file is created
    private (0600), so it gets the umask's mode before the rename, as ComfyUI's own files have. With
    ``replace=False`` an existing file is never touched (FileExistsError), even when another writer creates it
    while this one is writing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                  metadata=None if metadata is None else dict(metadata))
        os.chmod(tmp, _default_file_mode())
        if replace:
            os.replace(tmp, path)
        else:
            _publish_without_replacing(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _publish_without_replacing(tmp: str, path: Path) -> None:
    # A hard link fails when the name exists, so check and publish are one step; a rename would replace silently.
    exists = FileExistsError(f"{path} already exists; choose another file name, turn on counter or enable overwrite")
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise exists from None
    except OSError:  # a file system without hard links: check, then rename (a narrow race remains)
        if path.exists():
            raise exists from None
        os.replace(tmp, path)


COUNTER_DIGITS = 5


def numbered_path(path: os.PathLike, number: int) -> Path:
    """``name.safetensors`` → ``name_00001_.safetensors``, the scheme ComfyUI's own savers use."""
    path = Path(path)
    return path.with_name(f"{path.stem}_{number:0{COUNTER_DIGITS}d}_{path.suffix}")


def next_free_number(path: os.PathLike) -> int:
    """One above the highest counter that a file ``name_NNNNN_.suffix`` in the folder carries (1 when none)."""
    path = Path(path)
    taken = rf"^{re.escape(path.stem)}_(\d{{{COUNTER_DIGITS},}})_{re.escape(path.suffix)}$"
    numbers = [int(m.group(1)) for p in (path.parent.iterdir() if path.parent.is_dir() else ())
               if (m := re.match(taken, p.name))]
    return max(numbers, default=0) + 1


WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def save_adapter(adapter: ErasureAdapter, path: os.PathLike, overwrite: bool = False, counter: bool = False,
                 weights: str = "float32") -> Path:
    """Write atomically and return where. ``counter``: ``path`` plus the next free counter (name_00001_...),
    never replacing a file; else exactly ``path``, refusing to replace a file unless ``overwrite``. ``weights``:
    the dtype lora_down / lora_up are stored in ("float16" halves the file; alpha stays float32)."""
    if weights not in WEIGHT_DTYPES:
        raise ValueError(f"weights must be one of {sorted(WEIGHT_DTYPES)}, got {weights!r}")
    dtype = WEIGHT_DTYPES[weights]
    tensors = {key: tensor if key.endswith(".alpha") else tensor.to(dtype) for key, tensor in adapter.tensors.items()}
    metadata = {**adapter.metadata, "weights_dtype": weights} if adapter.metadata else adapter.metadata
    if not counter:
        return write_safetensors_atomically(tensors, path, metadata, replace=overwrite)
    number = next_free_number(path)
    while True:
        try:
            return write_safetensors_atomically(tensors, numbered_path(path, number), metadata, replace=False)
        except FileExistsError:  # another save took this number meanwhile
            number += 1


def read_metadata(path: os.PathLike) -> dict[str, str]:
    """The safetensors header metadata alone (no tensors are read); ValueError if the file is not safetensors."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{Path(path).name} is not a readable .safetensors file: {error}") from error


def describe(metadata: Mapping[str, str]) -> dict:
    """What a person wants to see about an adapter; tolerant of files that are not ours or have broken metadata."""
    def value(key, default=None):
        return header_value(metadata, key, default)
    forget = value("forget_prompts", [])
    figures = ErasureFigures.from_header(metadata)
    return {
        "is_spare": metadata.get("format") == FORMAT_NAME,
        "forget_prompts": forget if isinstance(forget, list) else [str(forget)],
        "surrogate_prompt": value("surrogate_prompt", ""),
        "retain_prompts": value("retain_prompts", []),
        "rank": value("rank", value("ss_network_dim")),
        "steps": value("steps"),
        "base_model": value("base_model"),
        "created": value("created"),
        "modules": value("modules"),
        "concept": value("concept", ""),
        "surrogate_concept": value("surrogate_concept", ""),
        "concepts": value("concepts", []),
        "neighbours": _neighbours_shown(metadata.get("neighbourhood")),
        "steps_done": figures.steps_done,
        "gap_closed": figures.gap_closed,
        "retain_drift": figures.retain_drift,
        "nearer_surrogate": figures.nearer_surrogate,
        "guided_nearer_surrogate": figures.guided_nearer_surrogate,
        "verdict": figures.verdict,
        "verdict_share": getattr(figures, VERDICT_FIGURE) if figures.verdict else None,
        "memory_plan": _plan_reason(value("memory_plan")),
    }


def _plan_reason(plan) -> Optional[str]:
    """What the memory planner chose and why, from the header's record (None for files without one)."""
    return plan.get("reason") if isinstance(plan, dict) else None


def _neighbours_shown(recorded: Optional[str]) -> list[str]:
    """The neighbours the adjacency term kept, or none (also for a header whose record is broken)."""
    try:
        return list(Neighbourhood.from_json(recorded).neighbours) if recorded else []
    except (ValueError, KeyError, TypeError):
        return []


def load_adapter(path: os.PathLike) -> ErasureAdapter:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path.name} is not a readable .safetensors file: {error}") from error
    unet_keys = {k: v for k, v in tensors.items() if k.startswith(KOHYA_PREFIX)}
    if not unet_keys:
        raise ValueError(f"{path.name} holds no lora_unet_* keys; it is not a UNet LoRA "
                         f"(first keys: {sorted(tensors)[:3]})")
    return ErasureAdapter(unet_keys, metadata)
