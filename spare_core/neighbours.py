"""Concept neighbourhoods: the concepts an erasure of one concept is most likely to damage.

FADE (Fine-grained Attenuation for Diffusion Erasure, arXiv 2503.19783) shows that erasing a concept hurts the
concepts next to it ("adjacency") and keeps them with a term of their own. A user erasing "neon style" rarely knows
which other styles the model confuses with it, so the neighbourhood is found for them, among candidates (a shipped
vocabulary and the user's own lines), ranked one of two ways:

- "text": by the text encoder, 1 − cosine similarity of the two concepts' conditionings (the cross-attention context
  the denoiser reads);
- "model": by the denoiser, E‖ε(x_t, concept) − ε(x_t, candidate)‖² on the concept's own samples, noised at
  timesteps drawn over the whole schedule, with the same noise and timesteps for every candidate (as the Timestep
  Selector measures a concept against its surrogate). It costs one denoiser pass per candidate and draw, so it
  scores the MODEL_SHORTLIST candidates nearest by text.

Lower distance = nearer. benchmarks/synthcanvas_adjacency.py measures which ranking predicts the damage a plain
erasure does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .denoiser import Conditioning, Denoiser, draw_noise
from .prompts import _normalise  # one phrase normaliser: a neighbour compares with a forget concept exactly
from .samples import ConceptSamples

RANKINGS = ("model", "text")
MAX_NEIGHBOURS = 50
# Candidates the model ranking scores (the nearest by text): one pass per candidate and draw, so a few hundred
# would take minutes on a large model.
MODEL_SHORTLIST = 64
MODEL_DRAWS = 4
VOCABULARY_FOLDER = Path(__file__).resolve().parent / "vocabulary"
NO_VOCABULARY = "none"


def vocabularies() -> list[str]:
    """The shipped vocabularies by name ('general', 'synthcanvas'), then 'none' (the user's lines only)."""
    return sorted(p.stem for p in VOCABULARY_FOLDER.glob("*.txt")) + [NO_VOCABULARY]


def read_vocabulary(name: str) -> list[str]:
    if name == NO_VOCABULARY:
        return []
    path = VOCABULARY_FOLDER / f"{name}.txt"
    if not path.is_file():
        raise ValueError(f"vocabulary {name!r} does not exist; choose one of {', '.join(vocabularies())}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def candidate_list(concept: str, vocabulary: Sequence[str], user_lines: str = "") -> list[str]:
    """The user's lines first, then the vocabulary; each phrase once (case-insensitive), never the concept itself.
    A user line equal to the concept is an error; the vocabulary's own entry for the concept is simply skipped."""
    if len((concept or "").strip().splitlines()) > 1:
        raise ValueError("concept takes one phrase (e.g. 'neon style'), not several lines")
    concept = _normalise(concept or "")
    if not concept:
        raise ValueError("concept is empty: write the concept phrase to find the neighbours of (e.g. 'neon style')")
    names: dict[str, str] = {}
    for number, line in enumerate((user_lines or "").splitlines(), 1):
        phrase = _normalise(line)
        if not phrase:
            continue
        if phrase.lower() == concept.lower():
            raise ValueError(f"candidates line {number} {line.strip()!r} is the concept itself: a concept is not its "
                             f"own neighbour, so remove that line")
        names.setdefault(phrase.lower(), phrase)
    for phrase in vocabulary:
        phrase = _normalise(phrase)
        if phrase and phrase.lower() != concept.lower():
            names.setdefault(phrase.lower(), phrase)
    if not names:
        raise ValueError("there are no candidates to rank: choose a vocabulary other than 'none', or write candidate "
                         "concepts in the candidates box, one per line")
    return list(names.values())


def check_count(count: int, candidates: int) -> None:
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_NEIGHBOURS:
        raise ValueError(f"count (how many neighbours to keep) must be a whole number from 1 to {MAX_NEIGHBOURS}, "
                         f"got {count!r}")
    if count > candidates:
        raise ValueError(f"count is {count} but there are only {candidates} candidates: lower count, or add "
                         f"candidates (another vocabulary, or your own lines)")


def text_distances(concept: Conditioning, candidates: Conditioning) -> list[float]:
    """1 − cosine similarity between the concept's conditioning (one row) and each candidate's: the whole context
    where all have the same token count (CLIP's 77), else each one's mean token vector."""
    if candidates.context.shape[1:] == concept.context.shape[1:]:
        anchor, rows = concept.context[0].float().flatten(), candidates.context.float().flatten(1)
    else:
        anchor, rows = concept.context[0].float().mean(0), candidates.context.float().mean(1)
    similarity = torch.nn.functional.cosine_similarity(rows, anchor.expand_as(rows), dim=1)
    return [float(1.0 - s) for s in similarity]


@torch.no_grad()
def model_distances(denoiser: Denoiser, samples: ConceptSamples, candidates: Conditioning, seed: int,
                    draws: int = MODEL_DRAWS, on_draw: Callable[[int], None] = lambda draw: None) -> list[float]:
    """E‖ε(x_t, concept) − ε(x_t, candidate)‖² over ``draws`` noisings of every sample (``samples.cond`` is the
    concept's conditioning), the same noise and timesteps for every candidate."""
    generator = torch.Generator().manual_seed(seed)
    totals = torch.zeros(len(candidates), dtype=torch.float64)
    x0 = samples.latents.to(denoiser.device)
    count = x0.shape[0]
    for draw in range(draws):
        noise = draw_noise(x0.shape, generator, x0.device)
        index = torch.randint(0, denoiser.num_timesteps, (count,), generator=generator)
        x_t, sigma = denoiser.add_noise(x0, noise, index)
        own = denoiser.predict_noise(x_t, sigma, samples.cond.to(denoiser.device, denoiser.dtype)).float()
        for c in range(len(candidates)):
            rows = candidates.select(torch.full((count,), c, dtype=torch.long)).to(denoiser.device, denoiser.dtype)
            other = denoiser.predict_noise(x_t, sigma, rows).float()
            totals[c] += float((other - own).pow(2).mean())
        on_draw(draw)
    return [float(t / draws) for t in totals]


@dataclass(frozen=True)
class Neighbourhood:
    """The ``count`` candidates nearest to ``concept``, nearest first, with their distances (lower = nearer), and
    how they were ranked. Travels between nodes as SPARE_NEIGHBOURS and is recorded in the adapter's header."""

    concept: str
    ranking: str
    neighbours: tuple[str, ...]
    distances: tuple[float, ...]
    candidates: int = 0

    def __post_init__(self):
        if self.ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")
        if len(self.neighbours) != len(self.distances):
            raise ValueError("a neighbourhood needs one distance per neighbour")

    def retain_lines(self) -> str:
        """The neighbours one per line, as a retain box takes them."""
        return "\n".join(self.neighbours)

    def to_json(self) -> str:
        return json.dumps({"concept": self.concept, "ranking": self.ranking, "neighbours": list(self.neighbours),
                           "distances": [round(d, 6) for d in self.distances], "candidates": self.candidates})

    @staticmethod
    def from_json(text: str) -> "Neighbourhood":
        data = json.loads(text)
        return Neighbourhood(data["concept"], data["ranking"], tuple(data["neighbours"]),
                             tuple(float(d) for d in data["distances"]), int(data.get("candidates", 0)))


def nearest(concept: str, names: Sequence[str], distances: Sequence[float], count: int, ranking: str,
            candidates: int | None = None) -> Neighbourhood:
    """The ``count`` names with the lowest distance (ties keep the candidates' order); ``candidates``: how many
    the search started from, where ``names`` is a shortlist of them."""
    order = sorted(range(len(names)), key=lambda i: (distances[i], i))[:count]
    return Neighbourhood(_normalise(concept), ranking, tuple(names[i] for i in order),
                         tuple(float(distances[i]) for i in order), candidates or len(names))
