"""The protocol that chose how a several-concept job's training budget grows with the number of concepts k.

    python benchmarks/multi_budget_dev.py                       # every rule at k = 4 and 8, and the k = 1 reference
    python benchmarks/multi_budget_dev.py --rows sqrt:8,constant:8

Question: with k 'concept -> surrogate' lines, one job shares its steps and its batch among k concepts, so each
concept sees about 1/k of the forget draws a single-concept job gives it. How should steps and batch grow with k?

Candidate rules (fixed before the round; s = the Train node's steps, 300; b = its batch, 2):
- constant:    s steps, batch b (what the job did before this protocol);
- sqrt:        round(s·√k) steps, batch b;
- half_linear: max(s, s·k/2) steps, batch b;
- batch_sqrt:  s steps, batch b·ceil(√k).

How the rule is chosen (written before the round): the rule with the highest mean dev UA at k = 8, among those whose
whole k = 8 job takes at most 3× the k = 1 job of the same run (the issue's time target) and whose dev IRA and CRA at
k = 8 stay ≥ 0.95; a rule within 0.02 UA of the best but cheaper wins. k = 4 is measured to see the trend.

Dev split (never the benchmark's held-out figures, benchmarks/synthcanvas_multi.py):
- concepts: the eight SynthCanvas concepts the benchmark's sets do not contain, nested, styles and objects
  alternating (DEV_ORDER); surrogates 'neon style' and 'a triangle' (concepts the dev sets keep);
- images: every (object, style) pair once on each of SynthCanvas's training templates 2–4 (the benchmark judges on
  template 1 and the held-out templates), sampler seed 3,000,000 (the benchmark's is 1,000,007);
- per erased concept, UA / IRA / CRA as the benchmark computes them (images showing another erased concept of the
  set left out), and their means.
Every row trains through spare_core.comfyui.jobs.train_for_model, the job the Train node runs, with the node's other
defaults; the rule's steps and batch are passed as they are (this script never goes through the node, whose steps
input applies the chosen rule itself). Results are written after every row; a re-run skips rows already there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.synthcanvas_multi import Judged, joint_lines
from benchmarks.unlearncanvas import parse_concepts
from spare_core.config import SampleConfig, TrainConfig
from spare_core.prompts import ErasurePrompts
from spare_core.runner import headless
from synthcanvas import demo_model, evaluation
from synthcanvas.generation import generate
from synthcanvas.render import TRAIN_TEMPLATES

REPO = Path(__file__).resolve().parents[1]
DEV_ORDER = ("style:charcoal,object:square,style:polka dot,object:crescent,style:striped,object:diamond,"
             "style:pastel,object:circle")
DEV_SETS = {k: parse_concepts(DEV_ORDER)[:k] for k in (1, 2, 4, 8)}
DEV_SURROGATES = {"style": "neon", "object": "triangle"}
DEV_TEMPLATES = TRAIN_TEMPLATES[1:]
DEV_SEED = 3_000_000

BASE = TrainConfig()
RULES = {
    "constant": lambda k: (BASE.steps, BASE.batch_size),
    "sqrt": lambda k: (round(BASE.steps * math.sqrt(k)), BASE.batch_size),
    "half_linear": lambda k: (max(BASE.steps, BASE.steps * k // 2), BASE.batch_size),
    "batch_sqrt": lambda k: (BASE.steps, BASE.batch_size * math.ceil(math.sqrt(k))),
}
# The k = 1 reference first (the time target's denominator), then k = 8 (where the rule is chosen), then k = 4.
ROWS = ("constant:1",) + tuple(f"{rule}:{k}" for k in (8, 4) for rule in RULES)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"which rows, of {', '.join(ROWS)}")
    parser.add_argument("--redo", default="", help="rows to measure again although the file has them")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "multi_budget_dev.json")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    redo = {r.strip() for r in args.redo.split(",") if r.strip()}
    unknown = [r for r in rows + sorted(redo) if r.split(":")[0] not in RULES or int(r.split(":")[1]) not in DEV_SETS]
    if unknown:
        parser.error(f"unknown rows {unknown}; a row is RULE:K with RULE of {', '.join(RULES)} and K of 1, 2, 4, 8")
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    results.setdefault("rows", {})
    todo = [r for r in rows if r in redo or r not in results["rows"]]
    print(f"rows to measure: {', '.join(todo) or 'none'}", flush=True)
    if not todo:
        return 0

    runtime = headless.boot(Path(tempfile.mkdtemp(prefix="spare-multi-dev-")), cpu=not torch.cuda.is_available())
    from spare_core import comfyui as door  # its submodules import ComfyUI, so only after boot
    demo_model.build_checkpoint(runtime.folder("checkpoints") / demo_model.CHECKPOINT_NAME)
    with torch.inference_mode():
        model, clip, vae = runtime.node("CheckpointLoaderSimple").load_checkpoint(demo_model.CHECKPOINT_NAME)[:3]
    side = door.models.native_resolution(model)
    samples = SampleConfig(width=side, height=side, cfg=door.models.sample_guidance_scale(model))
    judged = Judged(repeats=1, paraphrase_set=None, templates=DEV_TEMPLATES)
    cache: dict = {}

    def classified(m):
        images = generate(runtime.nodes, m, clip, vae, judged.prompts, DEV_SEED, cache=cache)
        return [p.tolist() for p in evaluation.classify(images)]

    base_objects, base_styles = classified(model)
    for row in todo:
        rule, k = row.split(":")
        concepts = DEV_SETS[int(k)]
        steps, batch = RULES[rule](int(k))
        forget, retain = joint_lines(concepts, DEV_SURROGATES)
        door.reuse.forget()  # each erasure draws its own samples, as it would alone
        started = time.perf_counter()
        trained = door.jobs.train_for_model(model, clip, ErasurePrompts.parse(forget, "", retain), samples,
                                           TrainConfig(steps=steps, batch_size=batch), seed=0)
        seconds = time.perf_counter() - started
        figures = judged.scores(concepts, *classified(trained.model))
        results["rows"][row] = {**figures, "steps": steps, "batch_size": batch, "seconds": round(seconds, 1),
                                "training_seconds": round(trained.seconds["training"], 1),
                                "gap_closed": round(trained.result.final_check.gap_closed, 4),
                                "base": judged.scores(concepts, base_objects, base_styles),
                                "concepts": [c.label() for c in concepts]}
        results.update(protocol=__doc__, date=datetime.date.today().isoformat(),
                       machine=torch.cuda.get_device_name() if torch.cuda.is_available()
                       else f"CPU {platform.machine()}, {torch.get_num_threads()} threads",
                       command="python benchmarks/multi_budget_dev.py " + " ".join(
                           argv if argv is not None else sys.argv[1:]))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        base = results["rows"][row]["base"]
        print(f"{row}: {steps} steps, batch {batch}: UA {figures['UA']:.3f} IRA {figures['IRA']:.3f} "
              f"CRA {figures['CRA']:.3f}, {seconds:.1f} s (training {trained.seconds['training']:.1f} s); "
              f"unerased UA {base['UA']:.3f} IRA {base['IRA']:.3f} CRA {base['CRA']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
