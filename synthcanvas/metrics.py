"""UnlearnCanvas metrics (Zhang et al., arXiv 2402.11846, §4), from classifier predictions.

For an erased concept c of domain D (styles or objects):
    UA  = share of images generated for c that are NOT classified as c           (unlearning accuracy)
    IRA = accuracy on images of the other concepts of the same domain D           (in-domain retain accuracy)
    CRA = accuracy on images of the concepts of the other domain                  (cross-domain retain accuracy)
Every SynthCanvas image has both an object and a style; CRA here is measured on the images not prompted with c
(so it counts collateral damage only, like IRA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Scores:
    ua: float
    ira: float
    cra: float


def erasure_scores(domain: str, concept: int, true_objects: Sequence[int], true_styles: Sequence[int],
                   predicted_objects: Sequence[int], predicted_styles: Sequence[int]) -> Scores:
    """Each image was prompted with (true object, true style); ``domain`` is "style" or "object"."""
    if domain not in ("style", "object"):
        raise ValueError(f"domain must be 'style' or 'object', got {domain!r}")
    same_true, same_pred = (true_styles, predicted_styles) if domain == "style" else (true_objects, predicted_objects)
    other_true, other_pred = (true_objects, predicted_objects) if domain == "style" else (true_styles, predicted_styles)
    forgotten = [p != concept for t, p in zip(same_true, same_pred, strict=True) if t == concept]
    kept = [p == t for t, p in zip(same_true, same_pred, strict=True) if t != concept]
    cross = [p == t for t, p, own in zip(other_true, other_pred, same_true, strict=True) if own != concept]

    def mean(values):
        if not values:
            raise ValueError("no images for this part of the metric")
        return sum(values) / len(values)
    return Scores(mean(forgotten), mean(kept), mean(cross))
