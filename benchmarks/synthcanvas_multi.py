"""Several concepts in one adapter on the SynthCanvas demo model: joint, stacked and UCE, for k = 1, 2, 4, 8.

- joint: one Train SPARE Adapter job at its defaults with k 'concept -> surrogate' lines, every concept not erased as
  a retain phrase;
- stacked: k single-concept adapters (each as benchmarks/unlearncanvas.py trains it: the Train node's defaults, the
  concept as a phrase, every other concept as a retain phrase), applied together with the Apply node at strength 1;
- uce: UCE's closed-form edit of the k concepts at once (benchmarks/baselines.py), each onto the same surrogate.

The concept sets are nested and fixed before measuring (SETS). Every row is judged on the same images, drawn with
the benchmark's held-out sampler seed: every (object, style) pair on the first training template, REPEATS times,
plus each concept of the largest set on the two held-out templates (paraphrases), through the stock KSampler and the
shipped classifier. Per erased concept, UA / IRA / CRA are UnlearnCanvas's (synthcanvas/metrics.py) on the images
that do not show another erased concept of the same set; a row reports their means over its concepts, paraphrase
UA, seconds (the Train jobs' training stage, and the whole jobs), adapter MB, and the unerased model's figures on
the same images ("base" per k).

Slow on 2 cores, so it runs in rows: docs/results/synthcanvas_multi.json is written after every row, a re-run skips
the rows already there (unless --redo names them), and --rows picks a subset.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.unlearncanvas import (
    EVAL_SEED,
    Concept,
    Eraser,
    Settings,
    _base_unet,
    _weight_patched,
    _weights_mb,
    grid,
    node_defaults,
    parse_concepts,
    phrase,
    user_phrases,
)
from spare_core.runner import headless
from synthcanvas import demo_model, evaluation
from synthcanvas.generation import SamplerSettings, generate
from synthcanvas.metrics import erasure_scores
from synthcanvas.render import HELD_OUT_TEMPLATES, OBJECTS, STYLES, TRAIN_TEMPLATES, caption

REPO = Path(__file__).resolve().parents[1]
# Nested, styles and objects alternating; fixed before any row was measured.
ORDER = "style:neon,object:star,style:mosaic,object:ring,style:sketch,object:triangle,style:sunset,object:cross"
SETS = {k: parse_concepts(ORDER)[:k] for k in (1, 2, 4, 8)}
METHODS = ("joint", "stacked", "uce")
# k = 8 first: the joint and stacked rows there answer the question the benchmark asks.
ROWS = tuple(f"{method}:{k}" for k in (8, 1, 2, 4) for method in METHODS)
REPEATS = 2


class Judged:
    """The shared image set: prompts with their (object, style) and kind, the same for every row."""

    def __init__(self, repeats: int = REPEATS, paraphrase_set: int | None = 8,
                 templates: tuple[str, ...] = (TRAIN_TEMPLATES[0],)):
        """Every (object, style) pair ``repeats`` times on each of ``templates`` ("main"), and each concept of
        ``SETS[paraphrase_set]`` on the held-out templates (none when ``paraphrase_set`` is None)."""
        self.prompts, self.objects, self.styles, self.kind = [], [], [], []
        for template in templates:
            for _ in range(repeats):
                for o in OBJECTS:
                    for s in STYLES:
                        self._add(caption(o, s, template), o, s, "main")
        for concept in SETS[paraphrase_set] if paraphrase_set else ():
            for o, s in concept.pairs():
                for template in HELD_OUT_TEMPLATES:
                    self._add(caption(o, s, template), o, s, f"paraphrase:{concept.label()}")

    def _add(self, prompt, o, s, kind):
        self.prompts.append(prompt)
        self.objects.append(OBJECTS.index(o))
        self.styles.append(STYLES.index(s))
        self.kind.append(kind)

    def shows(self, i: int, concept: Concept) -> bool:
        return (self.styles[i] if concept.domain == "style" else self.objects[i]) == concept.index

    def scores(self, concepts: list[Concept], predicted_objects: list[int], predicted_styles: list[int]) -> dict:
        per_concept = {}
        for concept in concepts:
            others = [c for c in concepts if c is not concept]
            main = [i for i, kind in enumerate(self.kind) if kind == "main"
                    and not any(self.shows(i, other) for other in others)]
            scores = erasure_scores(concept.domain, concept.index, [self.objects[i] for i in main],
                                    [self.styles[i] for i in main], [predicted_objects[i] for i in main],
                                    [predicted_styles[i] for i in main])
            own = predicted_styles if concept.domain == "style" else predicted_objects
            paraphrased = [own[i] != concept.index for i, kind in enumerate(self.kind)
                           if kind == f"paraphrase:{concept.label()}"]
            per_concept[concept.label()] = {"UA": scores.ua, "IRA": scores.ira, "CRA": scores.cra}
            if paraphrased:
                per_concept[concept.label()]["paraphrase_UA"] = sum(paraphrased) / len(paraphrased)
        keys = next(iter(per_concept.values())).keys()
        return {**{key: round(float(np.mean([v[key] for v in per_concept.values()])), 4) for key in keys},
                "per_concept": {label: {k: round(v, 4) for k, v in values.items()}
                                for label, values in per_concept.items()}}


def joint_lines(concepts: list[Concept], surrogates: dict[str, str] | None = None) -> tuple[str, str]:
    """The forget box ('concept -> surrogate' lines) and the retain box (every concept not erased) of a joint job;
    ``surrogates`` by domain, else each concept's default surrogate."""
    erased = {c.label() for c in concepts}
    surrogates = surrogates or {}
    forget = "\n".join(f"{phrase(c.domain, c.name)} -> {phrase(c.domain, surrogates.get(c.domain, c.surrogate))}"
                       for c in concepts)
    retain = [phrase("style", s) for s in STYLES if f"style:{s}" not in erased] + \
             [phrase("object", o) for o in OBJECTS if f"object:{o}" not in erased]
    return forget, "\n".join(retain)


class Methods:
    """The three ways of erasing a set; single-concept adapters are trained once and reused by every stacked row."""

    def __init__(self, runtime, model, clip, train_overrides: dict | None = None):
        self.runtime, self.model, self.clip = runtime, model, clip
        self.train_overrides = train_overrides or {}
        self.nodes = runtime.nodes.NODE_CLASS_MAPPINGS
        self.eraser = Eraser(runtime, model, clip, Settings())
        self.singles: dict[str, dict] = {}

    def train_job(self, forget: str, retain: str):
        inputs = {**node_defaults(self.nodes["SpareTrainAdapter"]), "model": self.model, "clip": self.clip,
                  "forget_prompts": forget, "retain_prompts": retain, **self.train_overrides}
        started = time.perf_counter()
        trained = self.nodes["SpareTrainAdapter"]().job(**inputs)
        return trained, time.perf_counter() - started

    def joint(self, concepts: list[Concept]) -> dict:
        forget, retain = joint_lines(concepts)
        trained, seconds = self.train_job(forget, retain)
        return {"model": trained.model, "adapter": trained.adapter, "training_seconds": trained.seconds["training"],
                "seconds": seconds}

    def single(self, concept: Concept) -> dict:
        if concept.label() not in self.singles:
            forget, surrogate, retain = user_phrases(concept)
            trained, seconds = self.train_job(f"{forget} -> {surrogate}", retain)
            self.singles[concept.label()] = {"adapter": trained.adapter,
                                             "training_seconds": trained.seconds["training"], "seconds": seconds}
        return self.singles[concept.label()]

    def stacked(self, concepts: list[Concept]) -> dict:
        singles = [self.single(c) for c in concepts]
        model = self.model
        for one in singles:
            applied = self.nodes["SpareApplyErasure"]().apply(model=model, adapter=one["adapter"], strength=1.0)
            model = applied["result"][0]
        return {"model": model, "adapters": [one["adapter"] for one in singles],
                "training_seconds": sum(one["training_seconds"] for one in singles),
                "seconds": sum(one["seconds"] for one in singles)}

    def uce(self, concepts: list[Concept]) -> dict:
        from benchmarks.baselines import edit_uce
        started = time.perf_counter()
        context = self.eraser._context
        erase = [(context(phrase(c.domain, c.name))[0], context(phrase(c.domain, c.surrogate))[0]) for c in concepts]
        # Each concept's preserved prompts (UCE's own retain set), less those that show another erased concept.
        kept = [p for c in concepts for p in c.retain_prompts() if not any(e.name in p for e in concepts)]
        preserve = [context(p)[0] for p in dict.fromkeys(kept)]
        weights = edit_uce(_base_unet(self.model), erase, preserve)
        seconds = time.perf_counter() - started
        return {"model": _weight_patched(self.model, weights), "weights_mb": _weights_mb(weights),
                "training_seconds": seconds, "seconds": seconds}


def adapter_mb(result: dict) -> float:
    if "weights_mb" in result:
        return round(result["weights_mb"], 3)
    adapters = result.get("adapters") or [result["adapter"]]
    return round(sum(t.numel() * t.element_size() for a in adapters for t in a.tensors.values()) / 1e6, 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"which rows, of {', '.join(ROWS)}")
    parser.add_argument("--redo", default="", help="rows to measure again although the file has them")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "synthcanvas_multi.json")
    parser.add_argument("--grids", type=Path, default=REPO / "docs" / "results" / "synthcanvas_multi")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="images per (object, style) pair")
    # Only the smoke test shortens these, to check the benchmark's path without paying for it.
    parser.add_argument("--steps", type=int, default=None, help="Train steps (default: the node's)")
    parser.add_argument("--sampler-steps", type=int, default=SamplerSettings().steps, help="KSampler steps")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    redo = {r.strip() for r in args.redo.split(",") if r.strip()}
    unknown = [r for r in rows + sorted(redo) if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")

    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    todo = [r for r in rows if r in redo or r.split(":")[1] not in results.get(r.split(":")[0], {})]
    print(f"rows to measure: {', '.join(todo) or 'none'}")
    if not todo:
        return 0

    runtime = headless.boot(Path(tempfile.mkdtemp(prefix="spare-multi-")), cpu=not torch.cuda.is_available())
    demo_model.build_checkpoint(runtime.folder("checkpoints") / demo_model.CHECKPOINT_NAME)
    command = "python benchmarks/synthcanvas_multi.py " + " ".join(argv if argv is not None else sys.argv[1:])
    measure(runtime, todo, results, args.json, args.grids, args.repeats, args.steps, args.sampler_steps, command)
    return 0


def measure(runtime, todo: list[str], results: dict, json_path: Path, grids: Path, repeats: int = REPEATS,
            steps: int | None = None, sampler_steps: int = SamplerSettings().steps, command: str = "",
            paraphrase_set: int = 8, samples: int | None = None) -> dict:
    """Measures the rows in ``todo`` on a booted ComfyUI whose checkpoints hold the demo model, writing
    ``results`` to ``json_path`` after each row. Every row of one file must be judged on the same images: keep
    ``repeats`` and ``paraphrase_set`` at their defaults across runs. ``steps`` and ``samples`` replace the Train
    node's defaults (the smoke test's shortcuts)."""
    for method in METHODS:
        results.setdefault(method, {})
    with torch.inference_mode():
        model, clip, vae = runtime.node("CheckpointLoaderSimple").load_checkpoint(demo_model.CHECKPOINT_NAME)[:3]
    judged = Judged(repeats, paraphrase_set)
    overrides = {name: value for name, value in (("steps", steps), ("samples", samples)) if value is not None}
    methods = Methods(runtime, model, clip, overrides)
    sampler = SamplerSettings(steps=sampler_steps)
    cache: dict = {}

    def images(m) -> torch.Tensor:
        return generate(runtime.nodes, m, clip, vae, judged.prompts, EVAL_SEED, sampler, cache=cache)

    base_images = images(model)
    base_objects, base_styles = (p.tolist() for p in evaluation.classify(base_images))
    gpu = torch.cuda.is_available()
    machine = torch.cuda.get_device_name() if gpu else f"CPU {platform.machine()}, {torch.get_num_threads()} threads"

    for row in todo:
        method, k = row.split(":")
        concepts = SETS[int(k)]
        result = getattr(methods, method)(concepts)
        erased_images = images(result["model"])
        objects, styles = (p.tolist() for p in evaluation.classify(erased_images))
        figures = judged.scores(concepts, objects, styles)
        results[method][k] = {**figures, "seconds": round(result["seconds"], 1),
                              "training_seconds": round(result["training_seconds"], 1),
                              "adapter_mb": adapter_mb(result), "concepts": [c.label() for c in concepts]}
        results.setdefault("base", {})[k] = judged.scores(concepts, base_objects, base_styles)
        if method == "joint":
            _grid(judged, concepts, base_images, erased_images, grids / f"joint_{k}.png")
        results.update(machine=machine, date=datetime.date.today().isoformat(), command=command,
                       train_steps=steps or "the node's default", sampler_steps=sampler_steps,
                       sets={str(n): [c.label() for c in s] for n, s in SETS.items()},
                       images={"main": f"every (object, style) pair on '{TRAIN_TEMPLATES[0]}', {repeats} each",
                               "paraphrase": "each pair of a concept of the 8-set on both held-out templates",
                               "sampler_seed": EVAL_SEED},
                       settings="Train SPARE Adapter at its defaults (joint: 'concept -> surrogate' lines; stacked: "
                                "one job per concept as a phrase); surrogate = the first other concept of the "
                                "domain; UCE: erase scale 1, preserve scale 1, lambda 0.1",
                       seconds="seconds: the whole Train jobs (stacked: the sum of its k jobs; UCE: the edit); "
                               "training_seconds: their training stage only",
                       note="for a set with both a style and an object, mean IRA and mean CRA average the same two "
                            "accuracies (styles and objects on the images showing no erased concept) and coincide; "
                            "per_concept keeps them apart")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{row}: UA {figures['UA']:.3f} IRA {figures['IRA']:.3f} CRA {figures['CRA']:.3f} "
              f"paraphrase UA {figures['paraphrase_UA']:.3f}, {results[method][k]['seconds']} s "
              f"(training {results[method][k]['training_seconds']} s), {results[method][k]['adapter_mb']} MB; "
              f"base UA {results['base'][k]['UA']:.3f} IRA {results['base'][k]['IRA']:.3f} "
              f"CRA {results['base'][k]['CRA']:.3f}", flush=True)
    return results


def _grid(judged: Judged, concepts: list[Concept], before: torch.Tensor, after: torch.Tensor, path: Path) -> None:
    """Per erased concept, its first two images with concepts that are kept, unerased beside erased."""
    rows, tiles = [], []
    for concept in concepts:
        others = [c for c in concepts if c is not concept]
        picks = [i for i, kind in enumerate(judged.kind) if kind == "main" and judged.shows(i, concept)
                 and not any(judged.shows(i, o) for o in others)][:2]
        for i in picks:
            rows.append(judged.prompts[i])
            tiles.append([(t[i].numpy() * 255).astype(np.uint8) for t in (before, after)])
    grid(rows, ["unerased", f"joint {len(concepts)}"], tiles, path)


if __name__ == "__main__":
    sys.exit(main())
