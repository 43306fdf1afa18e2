"""What kind of MODEL this is, where it lives, and the conditioning it needs: model family, native size,
sampling schedule, loading, the pack's compact SD1 registration, prompt encoding and latents."""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

import comfy.model_base
import comfy.model_management
import torch

from ..denoiser import Conditioning

SUPPORTED_MODELS = "SD1.x, SD2.x (epsilon or v-prediction) and SDXL"


def model_family(model) -> str:
    """'sd1', 'sd2' or 'sdxl'; anything else is refused with a message naming what was given."""
    base = getattr(model, "model", None)
    unet = getattr(base, "diffusion_model", None)
    kind = type(base).__name__
    if base is None or unet is None:
        raise ValueError(f"model input is not a ComfyUI diffusion MODEL (got {type(model).__name__})")
    in_channels = getattr(unet, "in_channels", None)
    latent_channels = latent_channel_count(base)
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


def latent_channel_count(base) -> int:
    """Channels of the model's latent space (4 for SD1.x/2.x/SDXL)."""
    # The 2024 latent formats do not declare their channel count; all of its SD families use 4.
    return getattr(base.latent_format, "latent_channels", 4)


def model_sampling(model):
    """The MODEL's noise schedule object, as patched on the ModelPatcher where the version supports it."""
    getter = getattr(model, "get_model_object", None)
    if getter is not None:
        try:
            return getter("model_sampling")
        except (AttributeError, KeyError):
            pass
    return model.model.model_sampling


def load_to_device(model) -> None:
    """Load the MODEL fully where ComfyUI puts it (no-op when it is already there)."""
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
