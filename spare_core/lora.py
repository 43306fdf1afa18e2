"""Sparse LoRA on an existing module tree, attached with forward hooks.

The hooks add ``scale * up(down(x))`` to the output of each targeted Linear / Conv2d. That equals
patching the weight with ``scale * up @ down`` (the form every LoRA loader applies), so the adapter a
user loads from file computes what was trained. Hooks rather than module replacement (as peft does)
because ComfyUI's MODEL is shared between graph branches and addressed by module path: replacing
modules would change its state-dict keys and leak into every other branch.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .adapter import KeyNames  # the file's key names live with the file format


def adaptable_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """Linear and ungrouped Conv2d layers by module path: the layers saliency ranks and LoRA can patch."""
    found = {}
    for name, module in unet.named_modules():
        if isinstance(module, nn.Linear):
            found[name] = module
        elif isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros":
            found[name] = module
    return found


def max_rank(module: nn.Module) -> int:
    weight = module.weight
    return min(weight.shape[0], math.prod(weight.shape[1:]))


class SparseLoRA(nn.Module):
    """One low-rank update on one base layer; ``row_mask`` pins unselected output rows to exact zero.

    Starts as an exact no-op (up = 0), as in the LoRA paper (Hu et al. 2021, §4.1).
    Parameters are float32 whatever the base model's dtype. On a float16 / bfloat16 model the update is
    computed in that dtype from casts of the float32 parameters (gradients still reach them in float32):
    casting every adapted layer's input up to float32 instead takes about a fifth more training memory (measured
    on SD1.5 and SDXL, docs/benchmarks.md) and buys no precision, since the update is added to a float16 /
    bfloat16 output anyway.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, row_mask: Optional[torch.Tensor],
                 generator: torch.Generator):
        super().__init__()
        limit = max_rank(base)
        if rank > limit:
            raise ValueError(f"rank {rank} is too large for a layer of weight shape {tuple(base.weight.shape)}: "
                             f"at most {limit}")
        weight = base.weight
        self.is_conv = isinstance(base, nn.Conv2d)
        out_features = weight.shape[0]
        down_shape = (rank,) + tuple(weight.shape[1:])
        up_shape = (out_features, rank) + ((1, 1) if self.is_conv else ())
        fan_in = math.prod(weight.shape[1:])
        down = torch.randn(down_shape, generator=generator) / math.sqrt(fan_in)
        self.down = nn.Parameter(down.to(weight.device))
        self.up = nn.Parameter(torch.zeros(up_shape, device=weight.device))
        if row_mask is None:
            row_mask = torch.ones(out_features, dtype=torch.bool)
        if row_mask.shape != (out_features,):
            raise ValueError(f"row mask of shape {tuple(row_mask.shape)} does not fit {out_features} output rows")
        mask_shape = (out_features, 1) + ((1, 1) if self.is_conv else ())
        self.register_buffer("row_mask", row_mask.to(weight.device, torch.float32).reshape(mask_shape))
        self.all_rows = bool(row_mask.all())
        self.alpha = float(alpha)
        self.rank = rank
        if self.is_conv:
            self.conv_args = dict(stride=base.stride, padding=base.padding, dilation=base.dilation)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def masked_up(self) -> torch.Tensor:
        # Every row free (the default row_fraction 1.0): no mask to multiply in each forward and backward.
        return self.up if self.all_rows else self.up * self.row_mask

    def unscaled_delta(self, x: torch.Tensor) -> torch.Tensor:
        """up(down(x)) before the alpha / rank scale, in x's dtype if half precision (see the class), else float32."""
        if x.dtype in (torch.float16, torch.bfloat16):
            down, up = self.down.to(x.dtype), self.masked_up().to(x.dtype)
        else:
            x, down, up = x.float(), self.down, self.masked_up()
        if self.is_conv:
            return F.conv2d(F.conv2d(x, down, None, **self.conv_args), up)
        return F.linear(F.linear(x, down), up)

    def delta_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.unscaled_delta(x) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The weight update this adapter is equivalent to (at strength 1)."""
        up = self.masked_up().flatten(1)
        return (up @ self.down.flatten(1)).reshape(self.row_mask.shape[:1] + self.down.shape[1:]) * self.scale


class SparseLoRASet(nn.Module):
    """All adapters of one erasure; ``attached`` hooks them into the base module tree."""

    def __init__(self, unet: nn.Module, rank: int, alpha: float, row_masks: Mapping[str, Optional[torch.Tensor]],
                 seed: int):
        super().__init__()
        modules = adaptable_modules(unet)
        missing = [name for name in row_masks if name not in modules]
        if missing:
            raise ValueError(f"saliency selects modules this model does not have: {missing[:5]}")
        generator = torch.Generator().manual_seed(seed)
        self.paths = list(row_masks)
        self.key_names = KeyNames.for_modules(modules)
        adapters = []
        for name in self.paths:
            try:
                adapters.append(SparseLoRA(modules[name], rank, alpha, row_masks[name], generator))
            except ValueError as error:
                raise ValueError(f"module {name}: {error}") from error
        self.adapters = nn.ModuleList(adapters)
        self.enabled = True

    @staticmethod
    def from_kohya_state_dict(unet: nn.Module, state: Mapping[str, torch.Tensor]) -> "SparseLoRASet":
        """Rebuild trainable hooks from a saved adapter (e.g. to fine-tune it further or compare forwards)."""
        stems = sorted({key.split(".")[0] for key in state})
        paths = KeyNames.for_modules(adaptable_modules(unet)).module_paths(stems)
        unknown = [s for s in stems if paths[s] is None]
        if unknown:
            raise ValueError(f"{len(unknown)} of {len(stems)} adapter modules are not in this model "
                             f"(e.g. {unknown[0]})")
        first_down = state[f"{stems[0]}.lora_down.weight"]
        alpha = float(state.get(f"{stems[0]}.alpha", torch.tensor(float(first_down.shape[0]))))
        lora_set = SparseLoRASet(unet, first_down.shape[0], alpha, {paths[s]: None for s in stems}, seed=0)
        with torch.no_grad():
            for stem, adapter in zip(stems, lora_set.adapters, strict=True):
                adapter.down.copy_(state[f"{stem}.lora_down.weight"])
                adapter.up.copy_(state[f"{stem}.lora_up.weight"])
                adapter.alpha = float(state.get(f"{stem}.alpha", torch.tensor(float(adapter.rank))))
        return lora_set

    def items(self) -> Iterator[tuple[str, SparseLoRA]]:
        return zip(self.paths, self.adapters, strict=True)

    @contextlib.contextmanager
    def attached(self, unet: nn.Module):
        """Hooks live on the shared model: they are always removed, whatever happens inside."""
        modules = adaptable_modules(unet)
        handles = []
        try:
            for path, adapter in self.items():
                handles.append(modules[path].register_forward_hook(self._hook(adapter)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, adapter: SparseLoRA):
        def add_delta(module, inputs, output):
            if not self.enabled:
                return None
            # scale folded into the add: one kernel fewer per adapted layer (a GPU training step is launch-bound)
            return torch.add(output, adapter.unscaled_delta(inputs[0]).to(output.dtype), alpha=adapter.scale)
        return add_delta

    @contextlib.contextmanager
    def disabled(self):
        """The teacher: the same network with the adapter off."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def kohya_state_dict(self) -> dict[str, torch.Tensor]:
        """lora_down / lora_up / alpha per module, float32 on CPU; masked rows of lora_up are exact zeros."""
        state = {}
        for path, adapter in self.items():
            stem = self.key_names.stem(path)
            state[f"{stem}.lora_down.weight"] = adapter.down.detach().float().cpu().contiguous()
            state[f"{stem}.lora_up.weight"] = adapter.masked_up().detach().float().cpu().contiguous()
            state[f"{stem}.alpha"] = torch.tensor(adapter.alpha, dtype=torch.float32)
        return state
