"""What kind of MODEL this is, where it lives, and the conditioning it needs: model family, native size,
sampling schedule, loading, the pack's compact SD1 registration, prompt encoding and latents."""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

import comfy.model_base
import comfy.model_management
import torch

from ..denoiser import TOKEN_COUNT, Conditioning

SUPPORTED_MODELS = ("SD1.x, SD2.x (epsilon or v-prediction) and SDXL; on ComfyUI 0.3 or newer also Flux.1 (dev, "
                    "schnell), SD3 / SD3.5 and Lumina 2 / Z-Image")

# Families whose conditioning and noise schedule come from ComfyUI's own machinery for the model (extra_conds,
# flow-matching model_sampling) rather than from the SD-specific code below.
DIT_FAMILIES = ("flux", "sd3", "lumina2")

# The text encoders each family's CLIP input must come from, for the error a mismatched CLIP gets.
TEXT_ENCODERS = {
    "sd1": "CLIP-L (the SD1.x checkpoint's own CLIP)",
    "sd2": "OpenCLIP-H (the SD2.x checkpoint's own CLIP)",
    "sdxl": "CLIP-L + CLIP-G (the SDXL checkpoint's own CLIP)",
    "flux": "CLIP-L + T5-XXL (DualCLIPLoader, type flux)",
    "sd3": "CLIP-L + CLIP-G + T5-XXL (TripleCLIPLoader; or fewer with CLIPLoader / DualCLIPLoader, type sd3)",
    "lumina2": "Gemma 2 2B for Lumina 2, Qwen3 4B for Z-Image (CLIPLoader, type lumina2)",
}


def _dit_family(base) -> Optional[str]:
    # Exact classes: Flux's subclasses (Chroma, Flux 2, Kontext-style edits) take other inputs and are refused.
    for family, class_name in (("flux", "Flux"), ("sd3", "SD3"), ("lumina2", "Lumina2")):
        model_class = getattr(comfy.model_base, class_name, None)  # absent from the 2024 ComfyUI
        if model_class is not None and type(base) is model_class:
            return family
    return None


def model_family(model) -> str:
    """'sd1', 'sd2', 'sdxl', 'flux', 'sd3' or 'lumina2' (Lumina 2 and Z-Image); anything else is refused with a
    message naming what was given."""
    base = getattr(model, "model", None)
    unet = getattr(base, "diffusion_model", None)
    kind = type(base).__name__
    if base is None or unet is None:
        raise ValueError(f"model input is not a ComfyUI diffusion MODEL (got {type(model).__name__})")
    family = _dit_family(base)
    if family is None and type(base) is comfy.model_base.SDXL:
        family = "sdxl"
    if family is None and type(base) is comfy.model_base.BaseModel:
        family = {768: "sd1", 1024: "sd2"}.get(base.model_config.unet_config.get("context_dim"))
    if family is None:
        raise ValueError(f"model input is a {kind} ({type(base.model_config).__name__}); SPARE can train "
                         f"{SUPPORTED_MODELS}")
    # The config's count, not the module's: Flux's module counts channels after 2x2 patching.
    in_channels = base.model_config.unet_config.get("in_channels", getattr(unet, "in_channels", None))
    latent_channels = latent_channel_count(base)
    if in_channels != latent_channels:
        raise ValueError(f"model input is an inpainting or concat-conditioned {kind} model ({in_channels} input "
                         f"channels for {latent_channels} latent channels); SPARE can train {SUPPORTED_MODELS} "
                         f"text-to-image models")
    return family


def text_widths(model) -> tuple[Optional[int], Optional[int]]:
    """(context width, pooled width) the model's text inputs take; None where it takes none or does not say."""
    family = model_family(model)
    unet = model.model.diffusion_model
    if family == "flux":
        vector_in = getattr(unet, "vector_in", None)
        return unet.txt_in.in_features, None if vector_in is None else vector_in.in_layer.in_features
    if family == "sd3":
        context = getattr(unet, "context_embedder", None)
        pooled = getattr(unet, "y_embedder", None)
        return (None if context is None else context.in_features,
                None if pooled is None else pooled.mlp[0].in_features)
    if family == "lumina2":
        return unet.cap_embedder[1].in_features, None
    return model.model.model_config.unet_config.get("context_dim"), 1280 if family == "sdxl" else None


def free_device_memory(device: torch.device) -> Optional[int]:
    """Bytes free on ``device`` as ComfyUI counts them (the driver's free memory plus what torch holds unused);
    None on a CPU, where the planner sets no limit."""
    if device.type == "cpu":
        return None
    return int(comfy.model_management.get_free_memory(device, torch_free_too=False))


def native_resolution(model) -> int:
    """The image side the model was trained at: SD1.x 512, SD2.x 768 (v-prediction) or 512, SDXL and the DiT
    families (Flux, SD3, Lumina 2 / Z-Image) 1024, and 64 for the SD1-layout models narrower than SD1.5 that the
    pack registers (its SynthCanvas demo and test models)."""
    family = model_family(model)
    if family in ("sdxl",) + DIT_FAMILIES:
        return 1024
    if getattr(model.model.model_config, "spare_compact_sd1", False):
        return 64
    if family == "sd2" and model.model.model_type == comfy.model_base.ModelType.V_PREDICTION:
        return 768
    return 512


def sample_guidance_scale(model) -> float:
    """Classifier-free guidance for the self-generated samples: Flux.1 is guidance-distilled (its guidance input
    does that work, and users sample it at CFG 1); the other families at the pack's default."""
    from ..config import SampleConfig
    return 1.0 if model_family(model) == "flux" else SampleConfig().cfg


def latent_channel_count(base) -> int:
    """Channels of the model's latent space (4 for SD1.x/2.x/SDXL, 16 for Flux, SD3 and Lumina 2)."""
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


def tokenizer_words(clip) -> list[str]:
    """Whole English words the CLIP's tokenizers know (CLIP's BPE marks them with '</w>'), alphabetic and 3+
    letters, sorted: the discrete search's vocabulary. Empty where no sub-tokenizer
    exposes its vocabulary (then the caller falls back to its own word list)."""
    words = set()
    for part in vars(getattr(clip, "tokenizer", None) or object()).values():
        inner = getattr(part, "tokenizer", None)
        if inner is None or not hasattr(inner, "get_vocab"):
            continue
        for token in inner.get_vocab():
            word = token[:-len("</w>")] if token.endswith("</w>") else None
            if word and word.isascii() and word.isalpha() and len(word) >= 3:
                words.add(word.lower())
    return sorted(words)


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
    """Conditioning from a text encoder's outputs: the context (N, L, D) and, where the family takes it, the pooled
    text (N, P). SDXL gets its ADM vector (pooled text + size embedding); the DiT families get what ComfyUI's own
    ``extra_conds`` for the model makes (pooled vector, Flux's default guidance, Lumina 2's token count); SD1/SD2
    need only the context."""
    family = model_family(model)
    if family in DIT_FAMILIES:
        rows = [_model_inputs(model, {"cond": context[i:i + 1],
                                      **({} if pooled is None else {"pooled_output": pooled[i:i + 1]})},
                              width, height) for i in range(context.shape[0])]
        return Conditioning.cat(rows)
    if family != "sdxl":
        return Conditioning(context.float())
    if pooled is None:
        raise ValueError("SDXL conditioning needs the pooled text embedding")
    rows = [model.model.encode_adm(pooled_output=pooled[i:i + 1], width=width, height=height, crop_w=0, crop_h=0,
                                   target_width=width, target_height=height, device=pooled.device)
            for i in range(pooled.shape[0])]
    return Conditioning(context.float(), {"y": torch.cat(rows).float()})


def _model_inputs(model, encoded: dict, width: int, height: int) -> Conditioning:
    """One prompt's model inputs as ComfyUI's sampler makes them: the model's ``extra_conds`` applied to the text
    encoder's outputs (``encoded``: ``cond`` and e.g. ``pooled_output``), each input under the name the
    diffusion model's forward takes it."""
    base = model.model
    family = model_family(model)
    context_width, pooled_width = text_widths(model)
    context = encoded["cond"]
    pooled = encoded.get("pooled_output")
    if context_width is not None and context.shape[-1] != context_width:
        raise ValueError(f"clip input gives {context.shape[-1]}-wide text features, but this {family} model takes "
                         f"{context_width}: connect the {family} text encoders, {TEXT_ENCODERS[family]}")
    if pooled_width is not None and (pooled is None or pooled.shape[-1] != pooled_width):
        got = "no pooled text" if pooled is None else f"a {pooled.shape[-1]}-wide pooled text vector"
        raise ValueError(f"clip input gives {got}, but this {family} model takes a {pooled_width}-wide one: connect "
                         f"the {family} text encoders, {TEXT_ENCODERS[family]}")
    # A zero latent of the sample size stands in for the sampler's noise; it is read only for its shape.
    noise = torch.zeros(1, latent_channel_count(base), height // 8, width // 8)
    extras = {k: v for k, v in encoded.items() if k != "cond"}
    conds = base.extra_conds(cross_attn=context, noise=noise, device=torch.device("cpu"), width=width, height=height,
                             **extras)
    inputs = {}
    for name, cond in conds.items():
        value = getattr(cond, "cond", None)
        if name == TOKEN_COUNT and isinstance(value, int):
            # Lumina 2's text encoders do not pad, so each prompt keeps its own length (see Conditioning.cat).
            if value != context.shape[1] or "attention_mask" in conds:
                raise ValueError(f"this {family} conditioning is padded ({value} of {context.shape[1]} tokens used); "
                                 f"SPARE needs each prompt encoded on its own, as CLIP Text Encode does")
            inputs[name] = torch.tensor([value])
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"this {family} conditioning carries {name!r} ({type(cond).__name__}), which SPARE cannot "
                             f"batch; remove the node that adds it (e.g. a reference image) before training")
        inputs[name] = value.float()
    context_rows = inputs.pop("c_crossattn")
    return Conditioning(context_rows, inputs)


def encode_prompts(model, clip, prompts: Sequence[str], width: int, height: int, input_name: str) -> Conditioning:
    if clip is None:
        raise ValueError(f"clip input is empty, so {input_name} cannot be encoded: connect the CLIP output of "
                         f"your checkpoint loader (this checkpoint may have no text encoder)")
    family = model_family(model)
    contexts, pooled, dit_rows = [], [], []
    for prompt in prompts:
        tokens = clip.tokenize(prompt)
        if any(len(chunks) > 1 for chunks in tokens.values()):
            raise ValueError(f"{input_name}: {prompt[:80]!r} is longer than one 75-token CLIP chunk; SPARE needs "
                             f"each prompt (and a concept phrase with its caption template) to fit in one")
        if family in DIT_FAMILIES:
            encoded = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
            dit_rows.append(_model_inputs(model, encoded, width, height))
            contexts.append(dit_rows[-1].context)
        else:
            cond, pool = clip.encode_from_tokens(tokens, return_pooled=True)
            contexts.append(cond)
            pooled.append(pool)
    lengths = {c.shape[1] for c in contexts}
    if len(lengths) > 1:
        raise ValueError(f"{input_name}: prompts must each fit in one 75-token chunk (token lengths "
                         f"{sorted(lengths)}); shorten the longer prompts")
    if family in DIT_FAMILIES:
        return Conditioning.cat(dit_rows)
    context_width, _ = text_widths(model)
    if context_width is not None and contexts[0].shape[-1] != context_width:
        raise ValueError(f"clip input gives {contexts[0].shape[-1]}-wide text features, but this {family} model "
                         f"takes {context_width}: connect the {family} text encoder, {TEXT_ENCODERS[family]}")
    pooled_tensor = None if any(p is None for p in pooled) else torch.cat(pooled)
    return conditioning_from_tensors(model, torch.cat(contexts), pooled_tensor, width, height)


def latents_from_comfy(model, latent: dict) -> torch.Tensor:
    """A LATENT (VAE-encoded images) in the model's internal scale."""
    return model.model.process_latent_in(latent["samples"].clone()).float()
