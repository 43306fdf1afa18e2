"""Adapters as MODEL patches: applied through ComfyUI's own LoRA path, removed patch by patch."""

from __future__ import annotations

import logging
import uuid
from typing import Iterator

import comfy.lora
import comfy.sd
import torch

from ..adapter import ErasureAdapter
from . import models

log = logging.getLogger("spare")


def _lora_key_map(model) -> dict[str, str]:
    return comfy.lora.model_lora_keys_unet(model.model, {})


def check_adapter_fits(model, adapter: ErasureAdapter) -> None:
    """Refuse an adapter whose modules this model lacks or whose shapes differ: a partial erasure is silent harm."""
    key_map = _lora_key_map(model)  # ComfyUI maps both namings the pack has written (adapter.KeyNames)
    stems = adapter.module_stems
    unmatched = [s for s in stems if s not in key_map]
    made_for = adapter.metadata.get("base_model", "an unknown model")
    if unmatched:
        raise ValueError(f"adapter does not fit this model: {len(unmatched)} of {len(stems)} modules match neither "
                         f"the diffusers block names nor ComfyUI's module names of this model (e.g. {unmatched[0]});"
                         f" it was made for {made_for}, this model is {_family_of(model)}")
    for stem in stems:
        weight = model.model.get_submodule(key_map[stem][:-len(".weight")]).weight
        up = adapter.tensors[f"{stem}.lora_up.weight"]
        down = adapter.tensors[f"{stem}.lora_down.weight"]
        if up.shape[0] != weight.shape[0] or down[0].numel() != weight[0].numel():
            raise ValueError(f"adapter does not fit this model: {stem} is {up.shape[0]}x{down[0].numel()} but the "
                             f"model's weight is {tuple(weight.shape)}; it was made for {made_for}, this model is "
                             f"{_family_of(model)}")


def _family_of(model) -> str:
    """The model's family as the adapter header names it ('sd1', 'sdxl', ...), or its class for other models."""
    try:
        return models.model_family(model)
    except ValueError:
        return f"a {type(model.model).__name__}"


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


def _same_values(tensor: torch.Tensor, reference: torch.Tensor) -> bool:
    """Equal values, compared at the coarser of the two dtypes: a model patched with the float32 adapter that Train
    gave is the same adapter as the float16 file Save wrote from it."""
    tensor = tensor.cpu()
    if tensor.dtype != reference.dtype:
        coarse = min(tensor.dtype, reference.dtype, key=lambda dtype: torch.finfo(dtype).bits)
        tensor, reference = tensor.to(coarse), reference.to(coarse)
    return torch.equal(tensor, reference)


def _is_adapter_patch(entry, up: torch.Tensor, down: torch.Tensor) -> bool:
    tensors = list(_tensors_in(entry))

    def holds(reference):
        return any(t is reference or (t.shape == reference.shape and t.is_floating_point()
                                      and _same_values(t, reference)) for t in tensors)
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
