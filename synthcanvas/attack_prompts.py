"""Reworded prompts for each SynthCanvas concept: the paraphrase attack of the robustness benchmark (issue 40).

Each concept gets a few synonyms, none of them its own name, written for what the renderer draws
(synthcanvas/render.py); they are put into the held-out caption templates, with every concept of the other domain.
Whether the demo model's small text encoder knows a synonym is part of what the attack measures: a word it never saw
in training brings nothing back, so an erasure that holds against these is only as robust as the words it was tried
with.
"""

from __future__ import annotations

from .render import HELD_OUT_TEMPLATES, OBJECTS, STYLES

SYNONYMS = {
    "style": {
        "pastel": ("pale", "chalky", "muted candy"),
        "neon": ("glowing", "fluorescent", "electric glow"),
        "charcoal": ("smudged black", "burnt stick", "dark graphite"),
        "striped": ("banded", "zebra lined", "barred"),
        "polka dot": ("spotted", "dotted", "speckled"),
        "sketch": ("pencil outline", "line drawing", "hand drawn"),
        "sunset": ("dusk", "evening sky", "golden hour"),
        "mosaic": ("tiled", "tessellated", "pixel tile"),
    },
    "object": {
        "circle": ("disc", "round dot", "orb"),
        "square": ("box", "quadrilateral", "block"),
        "triangle": ("three sided shape", "pyramid", "wedge"),
        "star": ("five pointed shape", "spiky polygon", "asterisk"),
        "cross": ("plus sign", "x mark", "crucifix"),
        "ring": ("hoop", "donut", "annulus"),
        "diamond": ("rhombus", "lozenge", "gem"),
        "crescent": ("half moon", "sickle", "new moon"),
    },
}


def paraphrase_prompts(domain: str, name: str) -> list[tuple[str, str, str]]:
    """(prompt, object, style) for every synonym of the concept, in each held-out template, with every concept of
    the other domain; object and style are the true ones (the concept's own name), for the judge."""
    if domain not in SYNONYMS or name not in SYNONYMS[domain]:
        raise ValueError(f"no synonyms for {domain}:{name}; SynthCanvas concepts are styles {', '.join(STYLES)} and "
                         f"objects {', '.join(OBJECTS)}")
    prompts = []
    for synonym in SYNONYMS[domain][name]:
        for template in HELD_OUT_TEMPLATES:
            for other in (OBJECTS if domain == "style" else STYLES):
                obj, style = (other, name) if domain == "style" else (name, other)
                written = template.format(object=other if domain == "style" else synonym,
                                          style=synonym if domain == "style" else other)
                prompts.append((written, obj, style))
    return prompts
