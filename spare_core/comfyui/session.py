"""A training session on ComfyUI's shared UNet: load it, make it usable under autograd, expose it as a
Denoiser, and put everything back afterwards."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..denoiser import Conditioning, Denoiser
from .models import latent_channel_count, load_to_device, model_family, model_sampling


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
def _trainable(unet: nn.Module) -> Iterator[None]:
    """Make the shared UNet usable under autograd for the duration.

    Inside ComfyUI's executor nodes run under inference_mode and weights loaded there are inference
    tensors, which autograd cannot save. Each one is replaced by a plain tensor holding the same values.
    That copy stays in the model afterwards and the inference original is released, so the
    weights are never held twice (a full-size SDXL UNet is 5 GB in float16): the model computes exactly
    what it did, and ComfyUI patches, offloads and samples plain tensors like inference ones.
    In-place residuals are guarded (``guard_in_place_residuals``).
    """
    flags = []
    hooks = []
    try:
        for module in unet.modules():
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                if param.is_inference():
                    module._parameters[name] = nn.Parameter(param.detach().clone(), requires_grad=False)
                else:
                    flags.append((param, param.requires_grad))
                    param.requires_grad_(False)
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_inference():
                    module._buffers[name] = buffer.clone()
        hooks = guard_in_place_residuals(unet)
        yield
    finally:
        for handle in hooks:
            handle.remove()
        for param, flag in flags:
            param.requires_grad_(flag)


def _checkpoint_blocks(unet: nn.Module) -> tuple:
    """ComfyUI's SD UNet blocks (openaimodel ResBlock, attention SpatialTransformer), for gradient checkpointing."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock
    return tuple(m for m in unet.modules() if isinstance(m, (ResBlock, SpatialTransformer)))


@contextlib.contextmanager
def denoiser_session(model) -> Iterator[Denoiser]:
    """Load the MODEL where ComfyUI puts it and expose it as a Denoiser with gradients enabled."""
    family = model_family(model)
    load_to_device(model)
    base = model.model
    sampling = model_sampling(model)
    device = model.load_device

    def predict_noise(x_t: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        extra = {} if cond.y is None else {"y": cond.y}
        denoised = base.apply_model(x_t, sigma, c_crossattn=cond.context, **extra)
        return (x_t - denoised.float()) / sigma.view(-1, 1, 1, 1)

    with torch.inference_mode(False), torch.enable_grad(), \
            _trainable(base.diffusion_model):
        yield Denoiser(
            unet=base.diffusion_model,
            predict_noise=predict_noise,
            sigmas=sampling.sigmas.detach().float().cpu().clone(),
            latent_channels=latent_channel_count(base),
            device=torch.device(device),
            dtype=torch.float32,
            family=family,
            blocks=_checkpoint_blocks(base.diffusion_model),
        )
