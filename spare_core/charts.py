"""Small PIL charts returned as ComfyUI IMAGE tensors (1, H, W, 3) in [0, 1]."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 640, 360
MARGIN = 40
BACKGROUND, AXIS, BAR, HIGHLIGHT, TEXT = (250, 250, 250), (60, 60, 60), (90, 140, 200), (220, 90, 60), (20, 20, 20)


def _to_image_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)


def _canvas(title: str) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 10), title, fill=TEXT)
    draw.line([(MARGIN, HEIGHT - MARGIN), (WIDTH - 10, HEIGHT - MARGIN)], fill=AXIS)
    draw.line([(MARGIN, MARGIN), (MARGIN, HEIGHT - MARGIN)], fill=AXIS)
    return image, draw


def bar_chart(values: Sequence[float], labels: Sequence[str], title: str,
              highlighted: Sequence[bool] = (), log_scale: bool = False, notes: Sequence[str] = ()) -> torch.Tensor:
    """Bars from a zero axis, or with ``log_scale`` from half the smallest positive value, so that values spanning
    several orders of magnitude all show (the top and bottom values are written on the axis). ``notes``: a short
    text above each bar."""
    image, draw = _canvas(title)
    count = max(1, len(values))
    top = max([abs(v) for v in values] + [1e-12])
    positive = [v for v in values if v > 0]
    low = min(positive) / 2 if log_scale and positive else 0.0
    slot = (WIDTH - MARGIN - 10) / count
    plot_height = HEIGHT - 2 * MARGIN - 10
    label_every = max(1, count // 12)

    def bar_height(value: float) -> float:
        if not log_scale:
            return plot_height * max(value, 0.0) / top
        return plot_height * math.log(value / low) / math.log(top / low) if value > 0 else 0.0

    for i, value in enumerate(values):
        height = bar_height(value)
        x0 = MARGIN + i * slot + slot * 0.15
        x1 = MARGIN + (i + 1) * slot - slot * 0.15
        colour = HIGHLIGHT if i < len(highlighted) and highlighted[i] else BAR
        draw.rectangle([x0, HEIGHT - MARGIN - height, max(x0 + 1, x1), HEIGHT - MARGIN], fill=colour)
        if i < len(notes) and notes[i]:
            draw.text((x0, HEIGHT - MARGIN - height - 12), str(notes[i])[:8], fill=TEXT)
        if i % label_every == 0:
            draw.text((x0, HEIGHT - MARGIN + 4), str(labels[i])[:10], fill=TEXT)
    draw.text((4, MARGIN - 4), f"{top:.3g}", fill=TEXT)
    if log_scale and positive:
        draw.text((4, HEIGHT - MARGIN - 12), f"{low:.2g}", fill=TEXT)
    return _to_image_tensor(image)


def line_chart(values: Sequence[float], title: str) -> torch.Tensor:
    image, draw = _canvas(title)
    if values:
        low, high = min(values), max(values)
        span = high - low if high > low else 1.0
        width = WIDTH - MARGIN - 10
        plot_height = HEIGHT - 2 * MARGIN - 10
        points = [(MARGIN + width * i / max(1, len(values) - 1),
                   HEIGHT - MARGIN - plot_height * (v - low) / span) for i, v in enumerate(values)]
        if len(points) == 1:
            points = points * 2
        draw.line(points, fill=BAR, width=2)
        draw.text((4, MARGIN - 4), f"{high:.3g}", fill=TEXT)
        draw.text((4, HEIGHT - MARGIN - 12), f"{low:.3g}", fill=TEXT)
        draw.text((WIDTH - 80, HEIGHT - MARGIN + 4), f"step {len(values)}", fill=TEXT)
    return _to_image_tensor(image)
