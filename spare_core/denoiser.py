"""What the algorithm needs from a diffusion model, independent of ComfyUI.

``spare_core.comfyui.session`` builds a ``Denoiser`` from a ComfyUI MODEL; tests build one from a toy ``nn.Module``.
All algorithm code speaks in noise (epsilon) space, x_t = x_0 + sigma * eps, whatever the model
predicts natively, so eps-, v-prediction and SDXL models share one loss. Flow-matching models (Flux, SD3), whose
x_t = (1 - s) x_0 + s eps, are the same process rescaled: x_t / (1 - s) = x_0 + (s / (1 - s)) eps, and the session
presents them in this space (``spare_core.comfyui.session``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

# The per-row input giving each row's own context length, for families whose text encoders do not pad (Lumina 2 /
# Z-Image): rows of different lengths are batched zero-padded and the model sees each without its padding.
TOKEN_COUNT = "num_tokens"


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning for N prompts: the cross-attention context (N, L, D) and the model's other per-prompt
    inputs by the name its forward takes them (``y``: SDXL's ADM vector, Flux's and SD3's pooled text;
    ``guidance``: Flux's guidance strength; ``num_tokens``: each row's context length where they differ), each
    with N rows."""

    context: torch.Tensor
    extra: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.context.ndim != 3:
            raise ValueError(f"conditioning context must be (prompts, tokens, dim), got shape "
                             f"{tuple(self.context.shape)}")
        for name, tensor in self.extra.items():
            if tensor.shape[0] != self.context.shape[0]:
                raise ValueError(f"conditioning {name} has {tensor.shape[0]} rows but context has "
                                 f"{self.context.shape[0]}")

    def __len__(self) -> int:
        return self.context.shape[0]

    def select(self, index: torch.Tensor) -> "Conditioning":
        """Rows ``index`` (a 1-D long tensor), e.g. one prompt per batch element."""
        return Conditioning(self.context[index.to(self.context.device)],
                            {name: t[index.to(t.device)] for name, t in self.extra.items()})

    def to(self, device, dtype) -> "Conditioning":
        # Always copies: tensors made under ComfyUI's inference_mode cannot enter an autograd graph.
        return Conditioning(self.context.to(device=device, dtype=dtype, copy=True),
                            {name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype, copy=True)
                             for name, t in self.extra.items()})

    @staticmethod
    def cat(parts: "list[Conditioning]") -> "Conditioning":
        names = {frozenset(p.extra) for p in parts}
        if len(names) > 1:
            raise ValueError(f"cannot batch conditionings with different model inputs {sorted(map(sorted, names))}")
        lengths = {p.context.shape[1] for p in parts}
        contexts = [p.context for p in parts]
        if len(lengths) > 1 and TOKEN_COUNT not in parts[0].extra:
            # Prompts over 77 tokens give longer CLIP contexts; zero-padding would change attention, so refuse.
            raise ValueError(f"cannot batch conditionings of different token lengths {sorted(lengths)}")
        if len(lengths) > 1:  # rows that carry their own token counts: the padding is cut off before the model
            longest = max(lengths)
            contexts = [torch.nn.functional.pad(c, (0, 0, 0, longest - c.shape[1])) for c in contexts]
        return Conditioning(torch.cat(contexts),
                            {name: torch.cat([p.extra[name] for p in parts]) for name in parts[0].extra})


NoisePredictor = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


@dataclass(frozen=True)
class Denoiser:
    """A diffusion model seen as eps(x_t, sigma, cond).

    unet: the module tree whose Linear / Conv2d layers saliency scores and adapters target.
    predict_noise: (x_t (B,C,H,W), sigma (B,), cond with B rows) -> eps estimate (B,C,H,W), float32.
    sigmas: the model's own noise schedule, ascending, one entry per training timestep.
    blocks: the UNet's residual and transformer blocks, the units gradient checkpointing recomputes
    (empty where the ComfyUI session does not know the architecture's blocks).
    blocks_modify_inputs: the blocks add residuals in place onto their own inputs (Flux), so a recomputed block
    must run on copies of them.
    """

    unet: torch.nn.Module
    predict_noise: NoisePredictor
    sigmas: torch.Tensor
    latent_channels: int
    device: torch.device
    dtype: torch.dtype
    family: str = "unknown"
    blocks: tuple = ()
    blocks_modify_inputs: bool = False

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.shape[0])

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward process every stage trains or measures on: x_t = x0 + sigma_t * noise at the model's own
        sigma for each timestep index. Returns (x_t, sigma)."""
        sigma = self.sigmas.float().cpu()[timesteps].to(x0.device)
        return x0 + sigma.view(-1, 1, 1, 1) * noise, sigma


def draw_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Gaussian noise drawn from a CPU generator and moved to ``device``: a seed gives the same draws on every device
    (a CUDA generator's stream differs), so every stage draws its noise here."""
    return torch.randn(shape, generator=generator).to(device)


def flow_sigmas_as_noise_levels(flow_sigmas: torch.Tensor) -> torch.Tensor:
    """A flow schedule s as the noise levels s / (1 - s) of x_0 + sigma * eps (the same process, rescaled by
    1 / (1 - s)). Its top entry, s = 1 (pure noise, sigma infinite), takes the largest finite level of the schedule."""
    s = flow_sigmas.detach().double().cpu()
    below_one = s[s < 1]
    s = s.clamp(max=float(below_one.max()))
    return (s / (1 - s)).float()
