"""The memory planner: before training, project the step's peak memory and pick the settings that fit the device.

Training's peak is the model's weights plus what a training step keeps for backward (the activations of every row
of every term). Both are projected from the model itself (``activation_bytes_per_row``: one forward of one row at a
small latent size, with every module's output counted, scaled by the latent's pixels) rather than from a table of
known models, so a new family or size is planned the same way. The plan, in order of cost:
  1. the settings as given, if they fit;
  2. gradient checkpointing (each UNet block recomputes its activations in backward: the step keeps only the
     blocks' outputs plus one block's internals), if the model has known blocks;
  3. with it, a smaller micro-batch with gradient accumulation (the same effective batch, more passes).
On a CPU there is no device limit (the system's memory is the user's to manage), so the settings stay as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

GIB = 1024 ** 3
HEADROOM = 0.9  # plan to use at most this share of the free memory: the allocator fragments, kernels need workspace
# With checkpointing, the share of the activations a step still keeps: the blocks' outputs and one block's
# internals. Projected, not measured; the GPU figures (docs/benchmarks.md: SDXL 36.1 -> 8.2 GB) show more saved.
CHECKPOINTED_SHARE = 0.25


@dataclass(frozen=True)
class MemoryPlan:
    """What the planner chose for the training stage and why (shown on the node, recorded in the header)."""

    gradient_checkpointing: bool
    micro_batch: int  # rows of each term per backward pass (the batch size: no accumulation)
    projected_gb: Optional[float]  # the chosen settings' projected peak (None: not projected, no limit)
    free_gb: Optional[float]
    reason: str

    def to_header(self) -> dict[str, object]:
        return {"gradient_checkpointing": self.gradient_checkpointing, "micro_batch": self.micro_batch,
                "projected_gb": self.projected_gb, "free_gb": self.free_gb, "reason": self.reason}


def projected_peak_bytes(weight_bytes: int, activation_bytes_per_row: int, rows: int,
                         gradient_checkpointing: bool) -> int:
    """Weights plus the activations ``rows`` rows keep for backward (a share of them with checkpointing)."""
    kept = activation_bytes_per_row * rows
    if gradient_checkpointing:
        kept = int(kept * CHECKPOINTED_SHARE)
    return weight_bytes + kept


def plan_training(free_bytes: Optional[int], weight_bytes: int, activation_bytes_per_row: int, terms: int,
                  batch_size: int, gradient_checkpointing: bool, can_checkpoint: bool,
                  micro_batch: int = 0) -> MemoryPlan:
    """The cheapest settings whose projected peak fits in ``HEADROOM`` of ``free_bytes``. ``terms``: rows per batch
    element of a training step (forget, retain, and neighbours / the attacked prompt when used); a user's own
    ``micro_batch`` and checkpointing are kept when they fit (the planner only ever saves more memory)."""
    given_micro = micro_batch or batch_size
    if free_bytes is None:
        return MemoryPlan(gradient_checkpointing, given_micro, None, None,
                          "no device memory limit (CPU): the settings as given")
    budget = free_bytes * HEADROOM

    def peak(checkpointing: bool, micro: int) -> int:
        return projected_peak_bytes(weight_bytes, activation_bytes_per_row, terms * micro, checkpointing)

    def plan(checkpointing: bool, micro: int, reason: str) -> MemoryPlan:
        return MemoryPlan(checkpointing, micro, round(peak(checkpointing, micro) / GIB, 2),
                          round(free_bytes / GIB, 2), reason)

    as_given = peak(gradient_checkpointing, given_micro)
    if as_given <= budget:
        return plan(gradient_checkpointing, given_micro,
                    f"the settings as given fit: {as_given / GIB:.1f} GB projected, {free_bytes / GIB:.1f} GB free")
    if not can_checkpoint:
        candidates = [(False, m) for m in _smaller(given_micro)]
    else:
        candidates = [(True, given_micro)] + [(True, m) for m in _smaller(given_micro)]
    for checkpointing, micro in candidates:
        if peak(checkpointing, micro) <= budget:
            what = ["gradient checkpointing on"] if checkpointing and not gradient_checkpointing else []
            if micro != given_micro:
                what.append(f"micro-batches of {micro} with gradient accumulation (effective batch {batch_size})")
            return plan(checkpointing, micro, f"{' and '.join(what)}: {as_given / GIB:.1f} GB projected as given, "
                                              f"{peak(checkpointing, micro) / GIB:.1f} GB so, "
                                              f"{free_bytes / GIB:.1f} GB free")
    checkpointing, micro = candidates[-1] if candidates else (gradient_checkpointing, given_micro)
    return plan(checkpointing, micro, f"does not fit even so: {peak(checkpointing, micro) / GIB:.1f} GB projected "
                                      f"at the smallest setting, {free_bytes / GIB:.1f} GB free; expect an "
                                      f"out-of-memory error (lower the resolution or the batch size)")


def _smaller(micro: int) -> list[int]:
    """Micro-batches below ``micro``, halving: 8 -> [4, 2, 1]."""
    sizes = []
    while micro > 1:
        micro = (micro + 1) // 2
        sizes.append(micro)
    return sizes


@torch.no_grad()
def activation_bytes_per_row(unet: nn.Module, forward, probe_latent: torch.Tensor, latent_pixels: int) -> int:
    """The bytes one row's forward produces in the modules' outputs (about what backward keeps), measured on
    ``probe_latent`` (one row, a small latent) by ``forward(probe_latent)`` and scaled by ``latent_pixels`` over the
    probe's pixels (activations grow with the latent's area)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    leaves = [module for module in unet.modules() if not any(True for _ in module.children())]
    handles = [module.register_forward_hook(count) for module in leaves]
    try:
        forward(probe_latent)
    finally:
        for handle in handles:
            handle.remove()
    probe_pixels = probe_latent.shape[-1] * probe_latent.shape[-2]
    return int(total * latent_pixels / probe_pixels)


def weight_bytes(unet: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in unet.parameters())
