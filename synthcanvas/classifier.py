"""A small CNN with an object head and a style head, the judge of the SynthCanvas benchmark."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .render import OBJECTS, STYLES, render, render_hybrid

log = logging.getLogger("spare.synthcanvas")
WEIGHTS = Path(__file__).with_name("weights") / "classifier.safetensors"
HELD_OUT_SEED_OFFSET = 1_000_000  # render seeds at or above this are never used for training


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        channels = [3, 32, 64, 128, 128]
        self.features = nn.Sequential(*[
            layer for i in range(4) for layer in (
                nn.Conv2d(channels[i], channels[i + 1], 3, padding=1), nn.BatchNorm2d(channels[i + 1]), nn.ReLU(),
                nn.MaxPool2d(2) if i < 3 else nn.AdaptiveAvgPool2d(1))])
        self.object_head = nn.Linear(128, len(OBJECTS))
        self.style_head = nn.Linear(128, len(STYLES))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images: (N, 3, 64, 64) floats in [0, 1]."""
        features = self.features(images * 2 - 1).flatten(1)
        return self.object_head(features), self.style_head(features)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        objects, styles = [], []
        for start in range(0, images.shape[0], batch):
            o, s = self(images[start:start + batch])
            objects.append(o.argmax(1))
            styles.append(s.argmax(1))
        return torch.cat(objects), torch.cat(styles)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, 64, 64, 3) uint8 → (N, 3, 64, 64) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


def render_set(seeds: range) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every object × style for each seed: images, object labels, style labels."""
    images, objects, styles = [], [], []
    for seed in seeds:
        for o, obj in enumerate(OBJECTS):
            for s, style in enumerate(STYLES):
                images.append(render(obj, style, seed))
                objects.append(o)
                styles.append(s)
    return to_tensor(np.stack(images)), torch.tensor(objects), torch.tensor(styles)


# Styles whose strokes carry the style. Sunset's object is a plain dark silhouette (its style is the sky behind
# it), so "sunset strokes" on another background look like that background's style, not like sunset.
STROKE_STYLES = tuple(s for s in STYLES if s != "sunset")


def hybrid_set(seeds: range) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every object × stroke style for each seed, on the background of another style (rotating with the seed),
    labelled with the object and the stroke style."""
    images, objects, styles = [], [], []
    for seed in seeds:
        for o, obj in enumerate(OBJECTS):
            for s, style in enumerate(STYLES):
                if style not in STROKE_STYLES:
                    continue
                background = STYLES[(s + 1 + (seed + o) % (len(STYLES) - 1)) % len(STYLES)]
                images.append(render_hybrid(obj, style, background, seed))
                objects.append(o)
                styles.append(s)
    return to_tensor(np.stack(images)), torch.tensor(objects), torch.tensor(styles)


def _fit(model: Classifier, images, objects, styles, optimizer, schedule, epochs: int, seed: int, label: str,
         report) -> None:
    """Shuffled batches of 128, half of them mirrored, both heads' cross-entropy summed."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        started, order = time.perf_counter(), torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), 128):
            index = order[start:start + 128]
            batch = images[index]
            if torch.rand((), generator=generator) < 0.5:
                batch = batch.flip(3)  # shapes are drawn at random rotations; mirrors are fair too
            predicted_objects, predicted_styles = model(batch)
            loss = F.cross_entropy(predicted_objects, objects[index]) + F.cross_entropy(predicted_styles, styles[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
        report(f"{label} {epoch + 1}/{epochs}: loss {float(loss.detach()):.4f} ({time.perf_counter() - started:.0f} s)")


def train(seeds: int = 200, epochs: int = 10, seed: int = 0, report=log.info) -> Classifier:
    torch.manual_seed(seed)
    images, objects, styles = render_set(range(seeds))
    model = Classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(images) + 127) // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    _fit(model, images, objects, styles, optimizer, schedule, epochs, seed, "epoch", report)
    return model


def adapt(model: Classifier, round_trip, seeds: int = 200, epochs: int = 2, seed: int = 0, report=log.info,
          hybrids: bool = False) -> Classifier:
    """Fine-tune on renders and on their ``round_trip`` (the demo VAE's encode → decode): generated images pass
    through that decoder, which cannot carry the finest textures (thin stripes, tile edges), so the judge learns
    what each style looks like after it. ``hybrids`` adds as many hybrid renders (strokes of one style on
    another's background, labelled by the strokes), so that a changed background alone does not read as a
    changed style. Same seeds as training; held-out seeds stay unseen."""
    torch.manual_seed(seed)
    images, objects, styles = render_set(range(seeds))
    if hybrids:
        mixed = hybrid_set(range(seeds))
        images, objects, styles = (torch.cat([a, b]) for a, b in zip((images, objects, styles), mixed, strict=True))
    with torch.no_grad():
        decoded = torch.cat([round_trip(images[i:i + 512]) for i in range(0, len(images), 512)]).clamp(0, 1)
    images, objects, styles = torch.cat([images, decoded]), objects.repeat(2), styles.repeat(2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    _fit(model, images, objects, styles, optimizer, None, epochs, seed, "adapt epoch", report)
    return model.eval()


def accuracy(model: Classifier, seeds: range, hybrids: bool = False) -> tuple[float, float]:
    """Object and style accuracy on renders (or on hybrid renders, judged by their strokes' style)."""
    images, objects, styles = (hybrid_set if hybrids else render_set)(seeds)
    predicted_objects, predicted_styles = model.predict(images)
    return float((predicted_objects == objects).float().mean()), float((predicted_styles == styles).float().mean())


def accuracy_on(images: torch.Tensor, objects: torch.Tensor, styles: torch.Tensor,
                model: Classifier | None = None) -> dict:
    """Object and style accuracy of (N, 3, 64, 64) images in [0, 1] against their labels."""
    predicted_objects, predicted_styles = (model or load()).predict(images)
    return {"object": round(float((predicted_objects == objects).float().mean()), 4),
            "style": round(float((predicted_styles == styles).float().mean()), 4)}


def save(model: Classifier, path: Path = WEIGHTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"objects": ",".join(OBJECTS), "styles": ",".join(STYLES)})


def load(path: Path = WEIGHTS) -> Classifier:
    model = Classifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()
