"""Generation with ComfyUI's stock nodes (CLIPTextEncode, EmptyLatentImage, KSampler, VAEDecode), batched: one
KSampler call renders many prompts, each latent row under its own prompt."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .demo_model import RESOLUTION


@dataclass(frozen=True)
class SamplerSettings:
    steps: int = 20
    cfg: float = 4.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    negative: str = ""


def encode(nodes, clip, prompts: list[str], cache: dict | None = None) -> list:
    """One CONDITIONING whose batch holds every prompt in order. Encodings are cached by text (the text
    encoder is never changed by an erasure)."""
    cache = {} if cache is None else cache
    rows = []
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = nodes.CLIPTextEncode().encode(clip, prompt)[0][0]
        rows.append(cache[prompt])
    cond = torch.cat([row[0] for row in rows])
    extras = dict(rows[0][1])
    if all(row[1].get("pooled_output") is not None for row in rows):
        extras["pooled_output"] = torch.cat([row[1]["pooled_output"] for row in rows])
    return [[cond, extras]]


def generate(nodes, model, clip, vae, prompts: list[str], seed: int, settings: SamplerSettings = SamplerSettings(),
             cache: dict | None = None, batch: int = 256, extra_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """IMAGE (len(prompts), 64, 64, 3). Row i is prompts[i]; the noise of chunk c comes from seed + c.
    ``extra_tokens`` (n, width): text-feature rows appended to every prompt's conditioning (the soft-token attack's
    tokens), the negative prompt left as it is."""
    images = []
    for chunk, start in enumerate(range(0, len(prompts), batch)):
        part = prompts[start:start + batch]
        positive = encode(nodes, clip, part, cache)
        if extra_tokens is not None:
            cond, extras = positive[0]
            tokens = extra_tokens.to(cond.dtype).unsqueeze(0).expand(cond.shape[0], -1, -1)
            positive = [[torch.cat([cond, tokens], dim=1), extras]]
        negative = encode(nodes, clip, [settings.negative] * len(part), cache)
        latent = nodes.EmptyLatentImage().generate(RESOLUTION, RESOLUTION, len(part))[0]
        with torch.inference_mode():
            sampled = nodes.KSampler().sample(model, seed + chunk, settings.steps, settings.cfg, settings.sampler_name,
                                              settings.scheduler, positive, negative, latent)[0]
            images.append(nodes.VAEDecode().decode(vae, sampled)[0].float().cpu())
    return torch.cat(images)
