"""Adapters as MODEL patches: applied through ComfyUI's own LoRA path, removed patch by patch."""

from __future__ import annotations

import logging
import uuid
from typing import Iterator

import comfy.lora
import comfy.sd
import torch

from ..adapter import ErasureAdapter

log = logging.getLogger("spare")


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
