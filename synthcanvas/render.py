"""Seeded procedural renders: 8 object shapes × 8 styles at 64×64, with jitter in position, size,
rotation and colour. Same (object, style, seed) → same bytes."""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .rng import FrozenRandom

OBJECTS = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "crescent")
STYLES = ("pastel", "neon", "charcoal", "striped", "polka dot", "sketch", "sunset", "mosaic")
SIZE = 64
CANVAS = 128  # drawn at 2× and downsampled, for smooth edges

TRAIN_TEMPLATES = ("a {object} in {style} style", "{style} painting of a {object}",
                   "a {style} style picture of a {object}", "a {object}, {style} style")
HELD_OUT_TEMPLATES = ("{style} artwork showing a {object}", "an illustration of a {object} in the {style} manner")


def caption(obj: str, style: str, template: str = TRAIN_TEMPLATES[0]) -> str:
    return template.format(object=obj, style=style)


def _polygon(points):
    return [(CANVAS / 2 + x, CANVAS / 2 + y) for x, y in points]


def _regular(count: int, radius: float, phase: float = -math.pi / 2):
    return [(radius * math.cos(phase + 2 * math.pi * k / count), radius * math.sin(phase + 2 * math.pi * k / count))
            for k in range(count)]


def shape_mask(obj: str, rng: FrozenRandom) -> Image.Image:
    """The object's silhouette (L mode, 255 inside) with random scale, rotation and position."""
    mask = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    c, r = CANVAS / 2, 34.0
    if obj == "circle":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    elif obj == "square":
        draw.polygon(_polygon(_regular(4, r * 1.3, math.pi / 4)), fill=255)
    elif obj == "triangle":
        draw.polygon(_polygon(_regular(3, r * 1.25)), fill=255)
    elif obj == "star":
        points = []
        for k in range(10):
            radius = r * 1.25 if k % 2 == 0 else r * 0.5
            angle = -math.pi / 2 + math.pi * k / 5
            points.append((radius * math.cos(angle), radius * math.sin(angle)))
        draw.polygon(_polygon(points), fill=255)
    elif obj == "cross":
        w = r * 0.38
        draw.rectangle([c - w, c - r, c + w, c + r], fill=255)
        draw.rectangle([c - r, c - w, c + r, c + w], fill=255)
    elif obj == "ring":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
        draw.ellipse([c - r * 0.55, c - r * 0.55, c + r * 0.55, c + r * 0.55], fill=0)
    elif obj == "diamond":
        draw.polygon(_polygon([(0, -r * 1.3), (r * 0.8, 0), (0, r * 1.3), (-r * 0.8, 0)]), fill=255)
    elif obj == "crescent":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
        draw.ellipse([c - r * 0.45, c - r * 1.05, c + r * 1.35, c + r * 0.75], fill=0)
    else:
        raise ValueError(f"object must be one of {OBJECTS}, got {obj!r}")
    scale = rng.uniform(0.7, 1.15)
    angle = math.radians(rng.uniform(-30, 30))
    dx, dy = rng.uniform(-16, 16), rng.uniform(-16, 16)
    # Inverse affine map (output → input) about the canvas centre.
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    a, b, d, e = cos, sin, -sin, cos
    ox, oy = c + dx, c + dy
    coefficients = (a, b, c - a * ox - b * oy, d, e, c - d * ox - e * oy)
    return mask.transform((CANVAS, CANVAS), Image.AFFINE, coefficients, resample=Image.BILINEAR)


def _hsv(h, s, v):
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _solid(colour) -> np.ndarray:
    return np.broadcast_to(colour, (CANVAS, CANVAS, 3)).astype(np.float32)


def _grid():
    y, x = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    return x, y


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    image = Image.fromarray((mask * 255).astype(np.uint8))
    outer = np.asarray(image.filter(ImageFilter.MaxFilter(2 * width + 1)), dtype=np.float32) / 255
    inner = np.asarray(image.filter(ImageFilter.MinFilter(2 * width + 1)), dtype=np.float32) / 255
    return np.clip(outer - inner, 0, 1)


def _compose(background, fill, mask):
    m = mask[..., None]
    return background * (1 - m) + fill * m


def style_image(style: str, mask: np.ndarray, rng: FrozenRandom) -> np.ndarray:
    """RGB floats in [0, 1] at CANVAS size."""
    x, y = _grid()
    hue = rng.uniform()
    if style == "pastel":
        background = _solid(_hsv(hue, rng.uniform(0.15, 0.3), rng.uniform(0.9, 1.0)))
        fill = _solid(_hsv(hue + 0.5, rng.uniform(0.3, 0.45), rng.uniform(0.85, 0.95)))
        return _compose(background, fill, mask)
    if style == "neon":
        background = _solid(_hsv(0.7, 0.5, rng.uniform(0.03, 0.1)))
        glow = np.asarray(Image.fromarray((_edge(mask, 3) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(3)),
                          dtype=np.float32) / 255
        line = _edge(mask, 2)
        colour = _hsv(rng.choice((0.33, 0.5, 0.83, 0.92)) + rng.uniform(-0.03, 0.03), 1.0, 1.0)
        return np.clip(background + glow[..., None] * colour * 0.8 + line[..., None] * colour, 0, 1)
    if style == "charcoal":
        paper = rng.uniform(0.85, 0.95)
        grain = rng.normal_array((CANVAS, CANVAS)) * 0.06
        background = np.clip(paper + grain * 0.5, 0, 1)[..., None].repeat(3, axis=2)
        fill = np.clip(rng.uniform(0.15, 0.3) + grain, 0, 1)[..., None].repeat(3, axis=2)
        return _compose(background, fill, mask)
    if style == "striped":
        period = rng.uniform(9, 13)
        stripes = (np.sin((x + y) * 2 * math.pi / period) > 0).astype(np.float32)[..., None]
        fill = stripes * _hsv(hue, 0.9, 0.9) + (1 - stripes) * _hsv(hue + 0.33, 0.9, 0.8)
        image = _compose(_solid(np.array([0.97, 0.97, 0.97], np.float32)), fill, mask)
        return image * (1 - _edge(mask, 1)[..., None])
    if style == "polka dot":
        spacing = rng.uniform(10, 13)
        dots = ((np.mod(x, spacing) - spacing / 2) ** 2 + (np.mod(y, spacing) - spacing / 2) ** 2
                < (spacing * 0.28) ** 2).astype(np.float32)[..., None]
        background = _solid(_hsv(0.5 + rng.uniform(-0.05, 0.05), 0.6, 0.55))
        fill = dots * _hsv(0.12, 0.3, 1.0) + (1 - dots) * _hsv(0.14, 0.9, 0.95)
        return _compose(background, fill, mask)
    if style == "sketch":
        image = _solid(np.array([1.0, 1.0, 0.98], np.float32)).copy()
        pil = Image.fromarray((mask * 255).astype(np.uint8))
        for _ in range(3):
            shifted = pil.transform(pil.size, Image.AFFINE, (1, 0, rng.uniform(-2, 2), 0, 1, rng.uniform(-2, 2)))
            line = _edge(np.asarray(shifted, dtype=np.float32) / 255, 1)
            image = image * (1 - 0.6 * line[..., None])
        hatch = ((np.mod(x - y, 7) < 1).astype(np.float32) * mask * 0.25)[..., None]
        return np.clip(image - hatch, 0, 1)
    if style == "sunset":
        t = (y / CANVAS)[..., None]
        top, bottom = _hsv(0.08 + rng.uniform(-0.02, 0.02), 0.85, 1.0), _hsv(0.78 + rng.uniform(-0.03, 0.03), 0.7, 0.5)
        background = top * (1 - t) + bottom * t
        return _compose(background, _solid(np.array([0.05, 0.02, 0.08], np.float32)), mask)
    if style == "mosaic":
        block = 8
        tiles = rng.normal_array((CANVAS // block, CANVAS // block, 3)) * 0.25
        tiles = np.kron(tiles, np.ones((block, block, 1), np.float32))
        fill = np.clip(_hsv(hue, 0.8, 0.8) + tiles, 0, 1)
        background = np.clip(0.28 + tiles * 0.2, 0, 1)
        grout = ((np.mod(x, block) < 1) | (np.mod(y, block) < 1)).astype(np.float32)[..., None]
        return _compose(background, fill, mask) * (1 - 0.5 * grout)
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def render(obj: str, style: str, seed: int) -> np.ndarray:
    """One 64×64 RGB uint8 image of ``obj`` in ``style``; the same arguments always give the same bytes."""
    if obj not in OBJECTS:
        raise ValueError(f"object must be one of {OBJECTS}, got {obj!r}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    rng = FrozenRandom(seed * 4096 + OBJECTS.index(obj) * 64 + STYLES.index(style))
    mask = np.asarray(shape_mask(obj, rng), dtype=np.float32) / 255
    image = style_image(style, mask, rng)
    big = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    return np.asarray(big.resize((SIZE, SIZE), Image.BOX))


def object_region(mask: np.ndarray, reach: int = 6) -> np.ndarray:
    """Where an object's strokes live: its silhouette grown by ``reach`` canvas pixels (neon's glow and the
    sketch's offset lines reach that far outside it), with a soft edge."""
    image = Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(2 * reach + 1))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(2)), dtype=np.float32) / 255


def render_hybrid(obj: str, stroke_style: str, background_style: str, seed: int) -> np.ndarray:
    """``obj`` drawn in ``stroke_style``, on ``background_style``'s background: what a partial erasure looks like
    when it changes the background and keeps the strokes. A person names it after its strokes."""
    for name in (stroke_style, background_style):
        if name not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {name!r}")
    rng = FrozenRandom(seed * 4096 + OBJECTS.index(obj) * 64 + STYLES.index(stroke_style) * 8
                       + STYLES.index(background_style) + 2**40)
    mask = np.asarray(shape_mask(obj, rng), dtype=np.float32) / 255
    strokes, background = style_image(stroke_style, mask, rng), style_image(background_style, mask, rng)
    region = object_region(mask)[..., None]
    image = strokes * region + background * (1 - region)
    big = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    return np.asarray(big.resize((SIZE, SIZE), Image.BOX))


def grid(seed: int = 0) -> np.ndarray:
    """Every object (rows) in every style (columns), for looking at."""
    return np.concatenate([np.concatenate([render(o, s, seed) for s in STYLES], axis=1) for o in OBJECTS], axis=0)
