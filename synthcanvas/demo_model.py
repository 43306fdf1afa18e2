"""The SynthCanvas demo checkpoint: a small diffusion model that knows 8 objects × 8 styles, in SD1.x's formats.

Parts, all read by ComfyUI's stock CheckpointLoaderSimple:
- UNet: SD1.x layout (context 768, eps-prediction, SD1.5's noise schedule), narrow enough to train in minutes.
  ComfyUI detects it through the pack's compact SD1 registration (``door.models.register_compact_sd1``).
- VAE: TAESD's architecture trained on the renders, with ``vae_scale`` set so the UNet sees unit-variance latents.
- Text encoder: CLIP-L's architecture with frozen random weights (the UNet learned to read them). It is never
  trained, so it is not shipped: ``text_encoder_state`` regenerates it bit for bit from a seed.

The trained UNet and VAE (float16) live in ``weights/demo_model.safetensors``; ``build_checkpoint`` adds the
text encoder and writes one ordinary SD1-style checkpoint.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from spare_core.adapter import write_safetensors_atomically

from .rng import FrozenRandom

WEIGHTS = Path(__file__).with_name("weights") / "demo_model.safetensors"
CHECKPOINT_NAME = "synthcanvas_demo.safetensors"
TEXT_ENCODER_SEED = 20260207
RESOLUTION = 64

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

# SD1.x layout at demo size: 8×8 latents → two levels (8×8, 4×4), cross-attention in every block. 5.8 M
# parameters: with TAESD (2.4 M) and the classifier the shipped weights stay under 20 MB in float16.
UNET_CONFIG = {
    "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 64, "num_res_blocks": [2, 1],
    "channel_mult": [1, 2], "transformer_depth": [1, 1, 1], "transformer_depth_output": [1, 1, 1, 1, 1],
    "transformer_depth_middle": 1, "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
    "use_linear_in_transformer": False, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "use_checkpoint": False, "attention_resolutions": [1, 2],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def _clip_l_shapes() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    import comfy.sd1_clip
    with torch.device("meta"), torch.no_grad():
        encoder = comfy.sd1_clip.SDClipModel(device="meta")
    return {key: (tuple(t.shape), t.dtype) for key, t in encoder.transformer.state_dict().items()}


def text_encoder_state(seed: int = TEXT_ENCODER_SEED) -> dict[str, torch.Tensor]:
    """CLIP-L-shaped weights from a frozen stream: uniform with fan-in variance for matrices, CLIP's 0.02 scale
    for the embeddings, ones and zeros for norm scales and biases. Keys in sorted order, so a seed gives the same
    bytes on any machine."""
    rng = FrozenRandom(seed)
    state = {}
    for key, (shape, dtype) in sorted(_clip_l_shapes().items()):
        if not dtype.is_floating_point:  # position_ids in some versions
            state[key] = torch.arange(shape[-1], dtype=dtype).expand(shape).clone()
        elif "embedding" in key:
            state[key] = torch.from_numpy(rng.uniform_array(shape, 0.02 * math.sqrt(3)))
        elif len(shape) >= 2:
            state[key] = torch.from_numpy(rng.uniform_array(shape, math.sqrt(3 / math.prod(shape[1:]))))
        elif key.endswith("bias"):
            state[key] = torch.zeros(shape)
        else:
            state[key] = torch.ones(shape)
    return state


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over keys and float16 bytes, in key order: identifies a text encoder across machines."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].to(torch.float16 if state[key].is_floating_point() else state[key].dtype)
                      .contiguous().numpy().tobytes())
    return digest.hexdigest()


def trained_state(path: Path = WEIGHTS) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the demo weights ship with the pack; "
                                f"`python scripts/train_synthcanvas.py` trains them anew")
    return load_file(str(path))


def assemble(unet_vae: dict[str, torch.Tensor], text_seed: int = TEXT_ENCODER_SEED) -> dict[str, torch.Tensor]:
    """UNet and VAE (keys already prefixed as in a checkpoint) plus the regenerated text encoder, float16."""
    state = dict(unet_vae)
    state.update({TEXT_PREFIX + k: v for k, v in text_encoder_state(text_seed).items()})
    return {k: (v.half() if v.is_floating_point() and k != VAE_PREFIX + "vae_scale" else v).contiguous()
            for k, v in state.items()}


def write_atomically(state: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> Path:
    return write_safetensors_atomically(state, path, metadata)


def build_checkpoint(path: Path, overwrite: bool = False, weights: Path = WEIGHTS) -> Path:
    """Write the demo checkpoint (about 250 MB, nearly all of it the regenerated text encoder) to ``path``.
    An existing file is kept unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        return path
    metadata = {"spare.synthcanvas": "demo model: 8 objects x 8 styles at 64x64",
                "spare.text_encoder_seed": str(TEXT_ENCODER_SEED)}
    return write_atomically(assemble(trained_state(weights)), path, metadata)


def unet_vae_state(unet: torch.nn.Module, vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The shippable part of the checkpoint: UNet and TAESD weights in float16 (vae_scale kept in float32)."""
    state = {UNET_PREFIX + k: v.detach().half().cpu() for k, v in unet.state_dict().items()}
    for key, value in vae.state_dict().items():
        value = value.detach().cpu()
        state[VAE_PREFIX + key] = value.float() if key == "vae_scale" else value.half()
    return {k: v.contiguous() for k, v in state.items()}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE (N, H, W, 3) floats in [0, 1] → uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
