"""Small random-weight models in Stable Diffusion's and the DiT families' shapes, built with ComfyUI's own classes.

No weights can be downloaded, so tests make their own: an SD1.5-shaped checkpoint (one-level UNet with
320 channels and context 768, a TAESD VAE and a CLIP-L-shaped text encoder) that ComfyUI's
CheckpointLoaderSimple detects as SD1.5, and an SDXL-shaped UNet (context 2048, ADM 2816) driven with
conditioning tensors. On ComfyUI 0.3.x also SD3.5's MMDiT (a file the UNETLoader detects), Flux.1, Lumina 2,
Z-Image and Wan 2.1 layouts at small width, and a CLIP-L text-encoder file. Every tensor is drawn from a seeded
generator, so a seed gives the same model.
"""

from __future__ import annotations

import copy
import inspect
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

SD15_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [1],
    "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1], "transformer_depth_middle": 1,
    "context_dim": 768, "num_heads": 8, "num_head_channels": -1, "use_linear_in_transformer": False,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None, "use_checkpoint": False,
    "attention_resolutions": [1], "use_temporal_attention": False, "use_temporal_resblock": False,
}


def seeded_like(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic values for every tensor of a state dict: fan-in scaled normals for weights,
    ones for normalisation scales, zeros for biases."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(state):
        tensor = state[key]
        if not tensor.is_floating_point():
            out[key] = tensor.clone()
        elif tensor.ndim >= 2:
            fan_in = math.prod(tensor.shape[1:])
            out[key] = torch.randn(tensor.shape, generator=generator) / math.sqrt(fan_in)
        elif key.endswith("bias"):
            out[key] = torch.zeros(tensor.shape)
        else:
            out[key] = torch.ones(tensor.shape)
    return out


def unet_config(config: dict) -> dict:
    """The config keys this ComfyUI's UNetModel accepts (the set grew between versions)."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    accepted = inspect.signature(UNetModel.__init__).parameters
    return {k: copy.deepcopy(v) for k, v in config.items() if k in accepted}


def sd15_unet_state(seed: int, channels: int = 320) -> dict[str, torch.Tensor]:
    import comfy.supported_models
    with torch.no_grad():
        model = comfy.supported_models.SD15(unet_config(dict(SD15_UNET, model_channels=channels))).get_model({})
        return seeded_like(model.diffusion_model.state_dict(), seed)


def taesd_state(seed: int) -> dict[str, torch.Tensor]:
    import comfy.taesd.taesd
    with torch.no_grad():
        state = seeded_like(comfy.taesd.taesd.TAESD().state_dict(), seed)
    state["vae_scale"] = torch.tensor(1.0 / 0.18215)
    return state


def clip_l_state(seed: int) -> dict[str, torch.Tensor]:
    """A CLIP-L-shaped text encoder (12 layers, width 768) with seeded weights, keys as in SD1.5 checkpoints."""
    import comfy.sd1_clip
    with torch.no_grad():
        encoder = comfy.sd1_clip.SDClipModel(device="cpu")
        state = seeded_like(encoder.transformer.state_dict(), seed)
    # Token and position embeddings of real CLIP have small norms; keep the same scale.
    for key in state:
        if "embedding" in key:
            state[key] = state[key] * 0.02 * math.sqrt(state[key].shape[-1])
    return state


def build_sd15_checkpoint(path: Path, seed: int = 0, channels: int = 320) -> Path:
    """channels 320 is detected as SD1.5 by ComfyUI itself; other widths as the pack's compact SD1 layout."""
    state = {f"model.diffusion_model.{k}": v for k, v in sd15_unet_state(seed, channels).items()}
    state.update({f"first_stage_model.{k}": v for k, v in taesd_state(seed + 1).items()})
    state.update({f"cond_stage_model.transformer.{k}": v for k, v in clip_l_state(seed + 2).items()})
    # float16 on disk halves the file (CLIP-L dominates it); ComfyUI casts to its compute dtype on load.
    save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in state.items()}, str(path))
    return path


SDXL_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 64, "num_res_blocks": [1],
    "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1], "transformer_depth_middle": 1,
    "context_dim": 2048, "num_heads": -1, "num_head_channels": 32, "use_linear_in_transformer": True,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": 2816, "num_classes": "sequential",
    "use_checkpoint": False, "use_temporal_attention": False, "use_temporal_resblock": False,
}


def _patched_model(model_config, seed: int, dtype: torch.dtype = torch.float32):
    """A ComfyUI ModelPatcher (the MODEL type) around a freshly built model with seeded weights, on the CPU."""
    import comfy.model_patcher
    if dtype != torch.float32:
        model_config.set_inference_dtype(dtype, None)
    with torch.no_grad():
        model = model_config.get_model({})
        model.diffusion_model.load_state_dict(seeded_like(model.diffusion_model.state_dict(), seed))
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def small_sd15_model(seed: int = 0, channels: int = 64, dtype: torch.dtype = torch.float32):
    """SD1.5 architecture with fewer channels, for fast CPU training tests (built directly: detection
    only recognises SD1.5 at 320 channels); ``dtype`` as a GPU would hold it (float16 / bfloat16)."""
    import comfy.supported_models
    config = dict(SD15_UNET, model_channels=channels, num_heads=-1, num_head_channels=32)
    return _patched_model(comfy.supported_models.SD15(unet_config(config)), seed, dtype)


def small_sdxl_model(seed: int = 0):
    """SDXL's conditioning shapes (context 2048, pooled 1280 + size embedding = ADM 2816) on a one-level UNet."""
    import comfy.supported_models
    return _patched_model(comfy.supported_models.SDXL(unet_config(SDXL_UNET)), seed)


def small_sd2_vpred_model(seed: int = 0):
    """SD2.x's context (1024, OpenCLIP-H width) and v-prediction on a 64-channel one-level UNet."""
    import comfy.supported_models
    config = dict(SD15_UNET, model_channels=64, context_dim=1024, num_heads=-1, num_head_channels=32,
                  use_linear_in_transformer=True)
    model_config = comfy.supported_models.SD20(unet_config(config))
    # ComfyUI tells v-prediction SD2 checkpoints apart by the spread of one norm bias; give it a wide one.
    marker = {"output_blocks.11.1.transformer_blocks.0.norm1.bias": torch.linspace(-1, 1, 64)}
    import comfy.model_patcher
    with torch.no_grad():
        model = model_config.get_model(marker)
        model.diffusion_model.load_state_dict(seeded_like(model.diffusion_model.state_dict(), seed))
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


# Flux.1's layout (double- then single-stream blocks, 2x2 patches of a 16-channel latent, guidance embedding) at a
# CPU-trainable width. Its context and pooled widths are CLIP-L's 768, so that a CLIP-L drives it: T5-XXL (Flux's
# context encoder, 4.7 B parameters) cannot be built on a CI machine. ComfyUI's detection fixes Flux at 24 heads of
# 128 (width 3072, over 500 M parameters even at one block each), so this model is built with ComfyUI's Flux class
# directly rather than detected from a file.
FLUX_DIT = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 768,
    "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 12, 12],
    "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}

# SD3.5's MMDiT (joint blocks, RMS q/k norm, SD3.5 Medium's extra self-attention in the first block) at depth 2,
# i.e. width 128 with 2 heads (MMDiT ties width and heads to depth). Context 4096 and pooled 2048 are SD3's: a
# CLIP-L loaded as an sd3 text encoder pads its outputs to them. ComfyUI's UNETLoader detects this from the file.
SD3_MMDIT_DEPTH = 2


def small_flux_model(seed: int = 0, in_channels: int = 16):
    """A MODEL with Flux.1-dev's architecture (guidance-distilled) at width 64, built with ComfyUI's classes;
    ``in_channels`` 96 gives Flux Fill's inpainting input (latent, masked image and an 8x8 mask)."""
    import comfy.supported_models
    return _patched_model(comfy.supported_models.Flux(dict(copy.deepcopy(FLUX_DIT), in_channels=in_channels)), seed)


def sd3_mmdit_state(seed: int) -> dict[str, torch.Tensor]:
    """An SD3.5-layout MMDiT state dict (keys as in SD3 diffusion-model files) with seeded weights."""
    import comfy.supported_models
    hidden = 64 * SD3_MMDIT_DEPTH
    config = {
        "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": SD3_MMDIT_DEPTH, "input_size": None,
        "adm_in_channels": 2048, "pos_embed_scaling_factor": None, "pos_embed_max_size": 16, "num_patches": 256,
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": 4096, "out_features": hidden}},
        "qk_norm": "rms", "x_block_self_attn_layers": [0],
    }
    with torch.no_grad():
        model = comfy.supported_models.SD3(config).get_model({})
        return seeded_like(model.diffusion_model.state_dict(), seed)


def build_sd3_diffusion_model(path: Path, seed: int = 0) -> Path:
    """A diffusion-model file (for models/diffusion_models) that the stock UNETLoader detects as SD3."""
    save_file({k: v.contiguous() for k, v in sd3_mmdit_state(seed).items()}, str(path))
    return path


def build_clip_l(path: Path, seed: int = 0) -> Path:
    """A CLIP-L-shaped text-encoder file (for models/clip or models/text_encoders), keys as the stock CLIPLoader
    reads them."""
    state = clip_l_state(seed)
    save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in state.items()}, str(path))
    return path


# Lumina 2's NextDiT (caption and noise refiners, then joint blocks over caption + image tokens) at width 64, built
# with ComfyUI's class (detection fixes it at 2304 wide, or 3840 for Z-Image). Caption features 32 wide stand in for
# Gemma 2 2B's 2304 (Z-Image: Qwen3 4B's 2560), which no CI machine can run; z_image=True gives Z-Image's
# modulation and time scale on the same layout, at width 256 (its modulation takes a 256-wide time embedding in).
LUMINA2_DIT = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64, "cap_feat_dim": 32, "n_layers": 1,
    "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "axes_dims": [8, 12, 12], "axes_lens": [300, 512, 512],
    "qk_norm": True, "rope_theta": 10000.0, "ffn_dim_multiplier": 4.0, "multiple_of": 16,
}


def small_lumina2_model(seed: int = 0, z_image: bool = False):
    """A MODEL with Lumina 2's architecture at width 64, or Z-Image's (the same layout) at width 256."""
    import comfy.supported_models
    config = copy.deepcopy(LUMINA2_DIT)
    if z_image:
        config.update(z_image_modulation=True, time_scale=1000.0, rope_theta=256.0, dim=256, n_heads=8, n_kv_heads=8)
        return _patched_model(comfy.supported_models.ZImage(config), seed)
    return _patched_model(comfy.supported_models.Lumina2(config), seed)


def small_wan21_model(seed: int = 0):
    """A MODEL with Wan 2.1's text-to-video layout at width 64: a family SPARE refuses, for the error tests."""
    import comfy.supported_models
    config = {"image_model": "wan2.1", "model_type": "t2v", "dim": 64, "ffn_dim": 128, "num_heads": 2,
              "num_layers": 1, "in_dim": 16, "out_dim": 16, "text_dim": 32, "freq_dim": 256, "patch_size": (1, 2, 2),
              "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}
    return _patched_model(comfy.supported_models.WAN21_T2V(config), seed)
