"""Concept neighbourhoods on the SynthCanvas demo model: what an erasure does to the concepts next to the erased one,
with no retain lines, with the neighbourhood as retain lines, with the neighbourhood and the adjacency term, and at
today's default (every other concept as a retain phrase); and which ranking predicts the damage.

    python benchmarks/synthcanvas_adjacency.py                         # the held-out split, every row
    python benchmarks/synthcanvas_adjacency.py --rows no_retain:style:neon,all_retain:style:neon
    python benchmarks/synthcanvas_adjacency.py --split dev             # the dev split that chose adjacency_weight

Rows are METHOD:CONCEPT. Every Train job runs at the Train node's defaults, the concept typed as a phrase onto the
benchmark's usual surrogate (the first other concept of its domain); the neighbourhood is the Concept Neighbourhood
node's (K = 3, the 'synthcanvas' vocabulary, its default ranking):
- no_retain: the retain box empty;
- neighbourhood: the three neighbours as the only retain lines;
- neighbourhood_adjacency: the same, and the neighbours wired into Train's neighbours input (the adjacency term);
- all_retain: every other concept as a retain phrase (15 lines: what benchmarks/unlearncanvas.py does);
- adjacency_w<W> (dev split only): neighbourhood_adjacency at adjacency_weight W.

Per erased concept: UA; adjacent accuracy, FADE's figure, the accuracy on its two nearest concepts, nearest by the
unerased model's confusion (the classifier's mean probability of the erased concept's class on images of each other
concept of its domain) and, separately, by the node's ranking; IRA, CRA; seconds of the whole Train job; and the
unerased model's figures on the same images ("base"). The ranking comparison: over the 15 other concepts, Spearman's
ρ between nearness (minus the distance) and the damage a no_retain erasure did (accuracy before minus after), per
ranking, averaged over the concepts.

Splits (settings are chosen on dev, reported on held-out):
- heldout: neon and sketch (styles), star and ring (objects); every pair twice on the first training template,
  the benchmark's held-out sampler seed;
- dev: polka dot, charcoal (styles), crescent, diamond (objects); every pair once on training templates 2–4,
  sampler seed 3,000,000.

What dev chose, by rules written before its rows were measured:
- the default ranking: the higher mean ρ over the four dev concepts' no_retain rows;
- the default adjacency_weight: among adjacency_w1/2/4/8 on charcoal and diamond, the highest mean adjacent
  accuracy (nearest by confusion) among weights whose mean UA is ≥ 0.97; within 0.01 of it, the smallest weight.
  (First written for polka dot and crescent; moved before any adjacency row was measured, once their no_retain rows
  showed that erasing them barely touches the rest, IRA 0.98 / 0.96, so no weight could be told apart there.)
The JSON is written after every row; a re-run skips the rows already there unless --redo names them.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.resumable import row_parser, rows_to_measure
from benchmarks.unlearncanvas import (
    EVAL_SEED,
    Concept,
    all_concepts,
    node_defaults,
    parse_concepts,
    phrase,
    user_phrases,
)
from spare_core.runner import headless
from synthcanvas import classifier, demo_model
from synthcanvas.generation import generate
from synthcanvas.metrics import erasure_scores
from synthcanvas.render import OBJECTS, STYLES, TRAIN_TEMPLATES, caption

REPO = Path(__file__).resolve().parents[1]
NEIGHBOURS_K = 3
ADJACENT = 2  # FADE's adjacency figure: the accuracy on the erased concept's two nearest concepts


@dataclass(frozen=True)
class Split:
    concepts: str
    templates: tuple[str, ...]
    repeats: int
    seed: int
    json: Path
    methods: tuple[str, ...]


HELD_OUT_METHODS = ("no_retain", "neighbourhood", "neighbourhood_adjacency", "all_retain")
DEV_WEIGHTS = (1.0, 2.0, 4.0, 8.0)
SPLITS = {
    "heldout": Split("style:neon,style:sketch,object:star,object:ring", (TRAIN_TEMPLATES[0],), 2, EVAL_SEED,
                     REPO / "docs" / "results" / "synthcanvas_adjacency.json", HELD_OUT_METHODS),
    "dev": Split("style:polka dot,object:crescent,style:charcoal,object:diamond", TRAIN_TEMPLATES[1:], 1, 3_000_000,
                 REPO / "docs" / "results" / "synthcanvas_adjacency_dev.json",
                 ("no_retain", "neighbourhood") + tuple(f"adjacency_w{w:g}" for w in DEV_WEIGHTS)),
}


class Images:
    """The judged images: every (object, style) pair ``repeats`` times on each template."""

    def __init__(self, split: Split):
        self.prompts, self.objects, self.styles = [], [], []
        for template in split.templates:
            for _ in range(split.repeats):
                for o in OBJECTS:
                    for s in STYLES:
                        self.prompts.append(caption(o, s, template))
                        self.objects.append(OBJECTS.index(o))
                        self.styles.append(STYLES.index(s))

    def of(self, concept: Concept) -> np.ndarray:
        return np.array(self.styles if concept.domain == "style" else self.objects) == concept.index

    def accuracy(self, concept: Concept, predicted: dict, erased: Concept) -> float:
        """Share of the images of ``concept`` (none showing ``erased``) that its domain's head gets right."""
        rows = self.of(concept) & ~self.of(erased)
        return float((predicted[concept.domain][rows] == concept.index).mean())


def label_of(text: str) -> str:
    """'neon style' → 'style:neon', 'a ring' → 'object:ring'."""
    return f"style:{text[:-len(' style')]}" if text.endswith(" style") else f"object:{text[2:]}"


def spearman(x: list[float], y: list[float]) -> float:
    def ranks(values):
        order = np.argsort(values, kind="stable")
        result = np.empty(len(values))
        result[order] = np.arange(len(values))
        for value in set(values):  # ties share their mean rank
            tied = np.array(values) == value
            result[tied] = result[tied].mean()
        return result
    a, b = ranks(x), ranks(y)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def means(per_concept: dict) -> dict:
    """A method's figures over the concepts measured so far (the issue's keys), beside its per-concept ones."""
    rows = list(per_concept.values())
    summary = {key: round(float(np.mean([r[key] for r in rows])), 4) for key in ("UA", "IRA", "CRA")}
    summary["adjacent_accuracy"] = {by: round(float(np.mean([r["adjacent_accuracy"][by] for r in rows])), 4)
                                    for by in rows[0]["adjacent_accuracy"]}
    if "seconds" in rows[0]:
        summary["seconds"] = round(float(np.mean([r["seconds"] for r in rows])), 1)
    summary["concepts"] = list(per_concept)
    return summary


def main(argv=None) -> int:
    parser = row_parser(__doc__.splitlines()[0], SPLITS)
    args = parser.parse_args(argv)
    split = SPLITS[args.split]
    concepts = parse_concepts(split.concepts)
    every = [f"{m}:{c.label()}" for c in concepts for m in split.methods]
    json_path = args.json or split.json
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    todo = rows_to_measure(parser, args.rows, args.redo, every, results)
    if not todo:
        return 0

    runtime = headless.boot(Path(tempfile.mkdtemp(prefix="spare-adjacency-")), cpu=not torch.cuda.is_available())
    demo_model.build_checkpoint(runtime.folder("checkpoints") / demo_model.CHECKPOINT_NAME)
    nodes = runtime.nodes.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        model, clip, vae = runtime.node("CheckpointLoaderSimple").load_checkpoint(demo_model.CHECKPOINT_NAME)[:3]
    images = Images(split)
    judge = classifier.load()
    cache: dict = {}

    def judged(m) -> tuple[dict, dict]:
        pictures = generate(runtime.nodes, m, clip, vae, images.prompts, split.seed, cache=cache)
        with torch.no_grad():
            logits = judge(pictures.permute(0, 3, 1, 2).float().contiguous())
        predicted = {"object": logits[0].argmax(1).numpy(), "style": logits[1].argmax(1).numpy()}
        return predicted, {"object": logits[0].softmax(1).numpy(), "style": logits[1].softmax(1).numpy()}

    base, base_probabilities = judged(model)
    neighbourhoods: dict = {}

    def neighbourhood(concept: Concept, ranking: str | None = None, count: int = NEIGHBOURS_K):
        node = nodes["SpareConceptNeighbourhood"]
        inputs = {**node_defaults(node), "model": model, "clip": clip, "concept": phrase(concept.domain, concept.name),
                  "count": count, "vocabulary": "synthcanvas", **({"ranking": ranking} if ranking else {})}
        key = (concept.label(), inputs["ranking"], count)
        if key not in neighbourhoods:
            neighbourhoods[key] = node().find(**inputs)[0]
        return neighbourhoods[key]

    def figures(concept: Concept, predicted: dict, nearest: dict[str, list[Concept]]) -> dict:
        scores = erasure_scores(concept.domain, concept.index, images.objects, images.styles,
                                list(predicted["object"]), list(predicted["style"]))
        adjacent = {by: round(float(np.mean([images.accuracy(n, predicted, concept) for n in near])), 4)
                    for by, near in nearest.items()}
        return {"UA": round(scores.ua, 4),
                "adjacent_accuracy": adjacent, "IRA": round(scores.ira, 4), "CRA": round(scores.cra, 4)}

    for row in todo:
        method, label = row.split(":", 1)
        concept = next(c for c in concepts if c.label() == label)
        # The nearest concepts of its domain by the unerased model's confusion, and by the node's ranking.
        domain = [c for c in all_concepts() if c.domain == concept.domain and c != concept]
        confusion = {c.label(): float(base_probabilities[concept.domain][images.of(c) & ~images.of(concept),
                                                                          concept.index].mean()) for c in domain}
        found = neighbourhood(concept)
        nearest = {"confusion": sorted(domain, key=lambda c: -confusion[c.label()])[:ADJACENT],
                   "ranking": [Concept(*label_of(n).split(":")) for n in found.neighbours[:ADJACENT]]}
        forget, surrogate, every_other = user_phrases(concept)
        retain = {"no_retain": "", "all_retain": every_other}.get(method, found.retain_lines())
        adjacency = method == "neighbourhood_adjacency" or method.startswith("adjacency_w")
        inputs = {**node_defaults(nodes["SpareTrainAdapter"]), "model": model, "clip": clip,
                  "forget_prompts": forget, "surrogate_prompt": surrogate, "retain_prompts": retain,
                  **({"neighbours": found} if adjacency else {}),
                  **({"adjacency_weight": float(method[len("adjacency_w"):])} if method.startswith("adjacency_w")
                     else {})}
        started = time.perf_counter()
        trained = nodes["SpareTrainAdapter"]().job(**inputs)
        seconds = time.perf_counter() - started
        predicted, _ = judged(trained.model)
        results.setdefault(method, {}).setdefault("per_concept", {})[label] = {
            **figures(concept, predicted, nearest), "seconds": round(seconds, 1),
            "retain_lines": len([line for line in retain.splitlines() if line.strip()]),
            "nearest": {by: [c.label() for c in near] for by, near in nearest.items()}}
        results.setdefault("base", {}).setdefault("per_concept", {})[label] = figures(concept, base, nearest)
        for name in (method, "base"):
            results[name].update(means(results[name]["per_concept"]))
        results.setdefault("neighbourhoods", {})[label] = {"neighbours": list(found.neighbours),
                                                           "distances": list(found.distances),
                                                           "ranking": found.ranking, "confusion": confusion}
        if method == "no_retain":
            # Which ranking predicts the damage this plain erasure did to the 15 other concepts.
            others = [c for c in all_concepts() if c != concept]
            damage = [images.accuracy(c, base, concept) - images.accuracy(c, predicted, concept) for c in others]
            per_ranking = {}
            for ranking in ("text", "model"):
                full = neighbourhood(concept, ranking, len(others))
                distance = {label_of(n): d for n, d in zip(full.neighbours, full.distances, strict=True)}
                per_ranking[ranking] = round(spearman([-distance[c.label()] for c in others], damage), 4)
            results.setdefault("ranking_per_concept", {})[label] = {
                **per_ranking, "damage": {c.label(): round(d, 4) for c, d in zip(others, damage, strict=True)}}
            measured = results["ranking_per_concept"].values()
            results["ranking"] = {r: round(float(np.nanmean([m[r] for m in measured])), 4) for r in ("text", "model")}
        results.update(machine=torch.cuda.get_device_name() if torch.cuda.is_available()
                       else f"CPU {platform.machine()}, {torch.get_num_threads()} threads",
                       date=datetime.date.today().isoformat(), split=args.split,
                       command="python benchmarks/synthcanvas_adjacency.py " + " ".join(
                           argv if argv is not None else sys.argv[1:]),
                       protocol=__doc__)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        done = results[method]["per_concept"][label]
        print(f"{row}: UA {done['UA']:.3f} adjacent {done['adjacent_accuracy']} IRA {done['IRA']:.3f} "
              f"CRA {done['CRA']:.3f}, {done['seconds']} s; unerased adjacent "
              f"{results['base']['per_concept'][label]['adjacent_accuracy']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
