"""The protocol that chose the Train node's defaults: candidate recipes on a named dev split of SynthCanvas.

    python benchmarks/recipe_dev.py --variants base,lr3e-3 --json docs/results/recipe_dev.json

Dev split (never the benchmark's held-out figures):
- concepts: style:sketch, style:polka dot, object:ring, object:crescent (four of the hardest for the earlier
  setting: UA 0.00 / 0.00 / 0.31 / 0.06);
- prompts: the phrase path, as a user types it (concept phrase, surrogate phrase, retain phrases);
- evaluation templates: SynthCanvas's training templates 2–4 only (the benchmark judges UA on template 1 and
  paraphrase UA on the two held-out templates);
- sampler seeds: DEV_SEED, apart from the benchmark's;
- the other concepts' images (which IRA and CRA score): one per pair on the first dev template, or with
  `--others-on-every-template` one per pair on each of the three (168 instead of 56 per concept, for runs that
  must see a retention drop of a few images).
Each variant trains through spare_core.comfyui.jobs (the job the Train node runs), then the stock KSampler
generates and the shipped classifier judges. Results are written per concept as they come.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import unlearncanvas
from spare_core.config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig
from spare_core.prompts import ErasurePrompts
from spare_core.runner import headless
from synthcanvas import demo_model, evaluation
from synthcanvas.generation import generate
from synthcanvas.metrics import erasure_scores
from synthcanvas.render import OBJECTS, STYLES, TRAIN_TEMPLATES, caption

REPO = Path(__file__).resolve().parents[1]

DEV_CONCEPTS = "style:sketch,style:polka dot,object:ring,object:crescent"
DEV_TEMPLATES = TRAIN_TEMPLATES[1:]
DEV_SEED = 3_000_000

# Each variant is a set of overrides of TrainConfig / SampleConfig / SaliencyConfig / TimestepConfig, applied on
# top of EARLIER (the defaults before this protocol) unless it says "from": "defaults" (the defaults as they are).
EARLIER = {"train": {"learning_rate": 1e-4}, "saliency": {"retain_contrast": 1.0},
           "timesteps": {"samples_per_draw": 10**6}}
VARIANTS = {
    "node_defaults_before": {},
    "earlier_benchmark": {"train": {"learning_rate": 1e-3}},
    "lr3e-3": {"train": {"learning_rate": 3e-3}},
    "lr1e-2": {"train": {"learning_rate": 1e-2}},
    "lr3e-3_all_modules": {"train": {"learning_rate": 3e-3}, "saliency": {"module_fraction": 1.0}},
    "lr3e-3_modules0.75": {"train": {"learning_rate": 3e-3}, "saliency": {"module_fraction": 0.75}},
    "lr3e-3_plain_saliency": {"train": {"learning_rate": 3e-3}, "saliency": {"retain_contrast": 0.0}},
    "lr3e-3_flat_timesteps": {"train": {"learning_rate": 3e-3}, "timesteps": {"temperature": 4.0}},
    "lr3e-3_retain0.5": {"train": {"learning_rate": 3e-3, "retain_weight": 0.5}},
    "lr3e-3_batch4": {"train": {"learning_rate": 3e-3, "batch_size": 4}},
    "lr1e-3_all_modules": {"train": {"learning_rate": 1e-3}, "saliency": {"module_fraction": 1.0}},
    "lr3e-3_all_modules_100steps": {"train": {"learning_rate": 3e-3, "steps": 100},
                                    "saliency": {"module_fraction": 1.0}},
    "chosen_defaults": {"from": "defaults"},
    "chosen_defaults_target0.65": {"from": "defaults", "train": {"erase_target": 0.65}},
    "chosen_all_modules": {"from": "defaults", "saliency": {"module_fraction": 1.0}},
    "chosen_lr6e-3": {"from": "defaults", "train": {"learning_rate": 6e-3}},
    "chosen_rank8": {"from": "defaults", "train": {"rank": 8, "alpha": 8.0}},
    "defaults_overshoot0.5": {"from": "defaults", "train": {"overshoot": 0.5}},
    "defaults_overshoot1": {"from": "defaults", "train": {"overshoot": 1.0}},
    "defaults_lr6e-3": {"from": "defaults", "train": {"learning_rate": 6e-3}},
    "defaults_overshoot1_150steps": {"from": "defaults", "train": {"overshoot": 1.0, "steps": 150}},
    "defaults_overshoot1.5": {"from": "defaults", "train": {"overshoot": 1.5}},
    "defaults_300steps": {"from": "defaults", "train": {"steps": 300}},
    "defaults": {"from": "defaults"},
    "defaults_retain2": {"from": "defaults", "train": {"retain_weight": 2.0}},
    "defaults_retain4": {"from": "defaults", "train": {"retain_weight": 4.0}},
    # Since retain weight 2.0 became the default, "defaults" is λ = 2; the round that chose it ran "defaults" at 1.0.
    "defaults_retain1": {"from": "defaults", "train": {"retain_weight": 1.0}},
}


def dev_eval(concept: unlearncanvas.Concept, seeds: int, others_on_every_template: bool = False):
    prompts, objects, styles, forget = [], [], [], []
    for template in DEV_TEMPLATES:
        for o in OBJECTS:
            for s in STYLES:
                mine = (s if concept.domain == "style" else o) == concept.name
                if template != DEV_TEMPLATES[0] and not mine and not others_on_every_template:
                    continue
                for _ in range(seeds if mine else 1):
                    prompts.append(caption(o, s, template))
                    objects.append(OBJECTS.index(o))
                    styles.append(STYLES.index(s))
                    forget.append(mine)
    return prompts, objects, styles, forget


def judge(concept, evals, images) -> dict:
    prompts, objects, styles, _ = evals
    po, ps = (p.tolist() for p in evaluation.classify(images))
    s = erasure_scores(concept.domain, concept.index, objects, styles, po, ps)
    return {"UA": round(s.ua, 4), "IRA": round(s.ira, 4), "CRA": round(s.cra, 4)}


def configs(variant: dict):
    base = {} if variant.get("from") == "defaults" else EARLIER

    def merged(part, config):
        return replace(config, **{**base.get(part, {}), **variant.get(part, {})})
    return (merged("train", TrainConfig()), merged("samples", SampleConfig(width=64, height=64)),
            merged("saliency", SaliencyConfig()), merged("timesteps", TimestepConfig()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--concepts", default=DEV_CONCEPTS)
    parser.add_argument("--seeds", type=int, default=2, help="images per forget pair and dev template")
    parser.add_argument("--others-on-every-template", action="store_true",
                        help="judge the other concepts' pairs on all three dev templates, not only the first")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "recipe_dev.json")
    args = parser.parse_args(argv)
    runtime = headless.boot(Path(tempfile.mkdtemp(prefix="spare-recipe-")))
    from spare_core import comfyui as door  # its submodules import ComfyUI, so only after boot
    demo_model.build_checkpoint(runtime.folder("checkpoints") / demo_model.CHECKPOINT_NAME)
    with torch.inference_mode():
        model, clip, vae = runtime.node("CheckpointLoaderSimple").load_checkpoint(demo_model.CHECKPOINT_NAME)[:3]
    concepts = unlearncanvas.parse_concepts(args.concepts)
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    results.setdefault("protocol", __doc__)
    cache = {}
    for concept in concepts:
        evals = dev_eval(concept, args.seeds, args.others_on_every_template)
        base = results.setdefault("base", {})
        if concept.label() not in base:
            base[concept.label()] = judge(concept, evals, generate(runtime.nodes, model, clip, vae, evals[0], DEV_SEED,
                                                                   cache=cache))
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        train, samples, saliency, timesteps = configs(variant)
        for concept in concepts:
            forget, surrogate, retain = unlearncanvas.user_phrases(concept)
            prompts = ErasurePrompts.parse(forget, surrogate, retain)
            door.reuse.forget()  # each erasure draws its own samples, as it would alone
            started = time.perf_counter()
            trained = door.jobs.train_for_model(model, clip, prompts, samples, train, 0, saliency_config=saliency,
                                               timestep_config=timesteps)
            seconds = time.perf_counter() - started
            evals = dev_eval(concept, args.seeds, args.others_on_every_template)
            scores = judge(concept, evals, generate(runtime.nodes, trained.model, clip, vae, evals[0], DEV_SEED,
                                                    cache=cache))
            check = trained.result.final_check
            scores.update(seconds=round(seconds, 1), gap_closed=check.gap_closed, retain_drift=check.retain_drift,
                          steps=trained.result.steps_done)
            results.setdefault("variants", {}).setdefault(name, {"settings": variant, "per_concept": {}})
            results["variants"][name]["per_concept"][concept.label()] = scores
            print(f"{name:24s} {concept.label():18s} {scores}", flush=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
