"""A training session on ComfyUI's shared UNet: load it, make it usable under autograd, expose it as a
Denoiser, and put everything back afterwards."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..denoiser import TOKEN_COUNT, Conditioning, Denoiser, flow_sigmas_as_noise_levels
from .models import latent_channel_count, load_to_device, model_family, model_sampling

# Blocks that add residuals in place (`x += n`) onto tensors their LayerNorms saved for backward, and those norms:
# the 2024 BasicTransformerBlock, and Flux's double- and single-stream blocks.
_IN_PLACE_RESIDUAL_NORMS = {
    "BasicTransformerBlock": ("norm1", "norm2", "norm3"),
    "DoubleStreamBlock": ("img_norm1", "img_norm2", "txt_norm1", "txt_norm2"),
    "SingleStreamBlock": ("pre_norm",),
}


def guard_in_place_residuals(unet: nn.Module) -> list:
    """Cloning what those norms are given keeps backward valid (the values are the same, so the forward is
    unchanged). Returns the hook handles (remove them after)."""
    hooks = []
    for module in unet.modules():
        for norm_name in _IN_PLACE_RESIDUAL_NORMS.get(type(module).__name__, ()):
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
    """The model's residual and transformer blocks, for gradient checkpointing: SD UNets' openaimodel ResBlock and
    SpatialTransformer, Flux's double- and single-stream blocks, SD3's MMDiT joint blocks, Lumina 2's joint
    transformer blocks (its caption and noise refiners included)."""
    kinds = _block_classes()
    return tuple(m for m in unet.modules() if isinstance(m, kinds))


def _block_classes() -> tuple:
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock
    kinds = [ResBlock, SpatialTransformer]
    try:  # the 2024 ComfyUI has neither
        from comfy.ldm.flux.layers import DoubleStreamBlock, SingleStreamBlock
        from comfy.ldm.lumina.model import JointTransformerBlock
        from comfy.ldm.modules.diffusionmodules.mmdit import JointBlock
        kinds += [DoubleStreamBlock, SingleStreamBlock, JointBlock, JointTransformerBlock]
    except ImportError:
        pass
    return tuple(kinds)


def _is_flow(sampling) -> bool:
    """Flow matching (Flux, SD3, Lumina 2): ComfyUI mixes x_t = s * noise + (1 - s) * x_0 (its CONST sampling)."""
    import comfy.model_sampling
    flow = getattr(comfy.model_sampling, "CONST", None)
    return flow is not None and isinstance(sampling, flow)


@contextlib.contextmanager
def denoiser_session(model) -> Iterator[Denoiser]:
    """Load the MODEL where ComfyUI puts it and expose it as a Denoiser with gradients enabled."""
    family = model_family(model)
    load_to_device(model)
    base = model.model
    sampling = model_sampling(model)
    device = model.load_device
    flow = _is_flow(sampling)

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """ComfyUI's denoised prediction; rows with their own context lengths run in one call per length, each
        without its padding, as ComfyUI's sampler runs conditionings it cannot concatenate."""
        if TOKEN_COUNT not in cond.extra:
            return base.apply_model(x, sigma, c_crossattn=cond.context, **cond.extra).float()
        counts = cond.extra[TOKEN_COUNT].long().cpu()
        others = {k: v for k, v in cond.extra.items() if k != TOKEN_COUNT}
        out = None
        for count in counts.unique().tolist():
            rows = (counts == count).nonzero().flatten()
            on_device = rows.to(x.device)
            context = cond.context[rows.to(cond.context.device), :count]
            part = base.apply_model(x[on_device], sigma[on_device], c_crossattn=context, num_tokens=count,
                                    **{k: v[rows.to(v.device)] for k, v in others.items()}).float()
            out = part.new_empty((x.shape[0],) + part.shape[1:]) if out is None else out
            out = out.index_copy(0, on_device, part)
        return out

    def predict_noise(x_t: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        sigma = sigma.view(-1, 1, 1, 1)
        if not flow:
            return (x_t - denoise(x_t, sigma.flatten(), cond)) / sigma
        # x_t = x_0 + sigma * eps is the flow model's input scaled by 1 / (1 - s), with s = sigma / (1 + sigma).
        s = sigma / (1 + sigma)
        x_flow = x_t / (1 + sigma)
        # eps from x_flow = (1 - s) x_0 + s eps; no large terms cancel even where sigma is in the thousands.
        return (x_flow - (1 - s) * denoise(x_flow, s.flatten(), cond)) / s

    sigmas = sampling.sigmas.detach().float().cpu().clone()
    if flow:
        sigmas = flow_sigmas_as_noise_levels(sigmas)
    with torch.inference_mode(False), torch.enable_grad(), \
            _trainable(base.diffusion_model):
        yield Denoiser(
            unet=base.diffusion_model,
            predict_noise=predict_noise,
            sigmas=sigmas,
            latent_channels=latent_channel_count(base),
            device=torch.device(device),
            dtype=torch.float32,
            family=family,
            blocks=_checkpoint_blocks(base.diffusion_model),
            blocks_modify_inputs=family == "flux",
        )
