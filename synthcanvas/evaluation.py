"""How well a SynthCanvas model draws what it is asked for, judged by the shipped classifier."""

from __future__ import annotations

from dataclasses import asdict

import torch

from . import classifier
from .generation import SamplerSettings, generate
from .render import HELD_OUT_TEMPLATES, OBJECTS, STYLES, TRAIN_TEMPLATES, caption

HELD_OUT_SAMPLER_SEED = 1_000_000  # training never sees sampler noise; this keeps evaluation seeds apart anyway
_DEFAULT_SAMPLER = SamplerSettings()  # frozen: safe to share as an argument default


def all_pairs(seeds: int, template: str = TRAIN_TEMPLATES[0]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Prompts for every (object, style), ``seeds`` rows each, with their labels."""
    prompts, objects, styles = [], [], []
    for o, obj in enumerate(OBJECTS):
        for s, style in enumerate(STYLES):
            for _ in range(seeds):
                prompts.append(caption(obj, style, template))
                objects.append(o)
                styles.append(s)
    return prompts, torch.tensor(objects), torch.tensor(styles)


def classify(images: torch.Tensor, judge: classifier.Classifier | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE (N, H, W, 3) in [0, 1] → predicted object and style indices."""
    judge = judge or classifier.load()
    return judge.predict(images.permute(0, 3, 1, 2).float().contiguous())


def generation_accuracy(runtime, checkpoint_name: str, seeds: int = 4, settings: SamplerSettings = _DEFAULT_SAMPLER,
                        seed: int = HELD_OUT_SAMPLER_SEED, template: str = TRAIN_TEMPLATES[0]) -> dict:
    """Load the checkpoint with the stock CheckpointLoaderSimple, generate every pair ``seeds`` times, classify."""
    with torch.inference_mode():
        model, clip, vae = runtime.node("CheckpointLoaderSimple").load_checkpoint(checkpoint_name)[:3]
    prompts, objects, styles = all_pairs(seeds, template)
    images = generate(runtime.nodes, model, clip, vae, prompts, seed, settings)
    predicted_objects, predicted_styles = classify(images)
    return {"object": round(float((predicted_objects == objects).float().mean()), 4),
            "style": round(float((predicted_styles == styles).float().mean()), 4),
            "images": len(prompts), "template": template, "sampler": asdict(settings)}


def accuracy_report(runtime, checkpoint_name: str, seeds: int, cfgs=(4.0,)) -> list[dict]:
    """Generation accuracy for each CFG scale, on the first training template and on each held-out paraphrase."""
    rows = []
    for cfg in cfgs:
        for template in (TRAIN_TEMPLATES[0],) + HELD_OUT_TEMPLATES:
            rows.append(generation_accuracy(runtime, checkpoint_name, seeds, SamplerSettings(cfg=cfg),
                                            template=template))
    return rows
