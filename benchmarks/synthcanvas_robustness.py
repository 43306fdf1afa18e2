"""Prompt attacks on SynthCanvas erasures: how often an attacked prompt brings the erased concept back into the
generated image, for the unerased model, SPARE at the Train node's defaults, SPARE in robust mode, and UCE (and ESD-x
on two concepts).

    python benchmarks/synthcanvas_robustness.py                          # the held-out split, every row
    python benchmarks/synthcanvas_robustness.py --rows spare:style:neon,uce:style:neon
    python benchmarks/synthcanvas_robustness.py --rows esd_x:style:neon  # ESD-x runs only where named (~16 min)
    python benchmarks/synthcanvas_robustness.py --split dev              # the round that chose the 'standard' preset

Rows are METHOD:CONCEPT. Each row erases the concept (none: the unerased model itself; spare: one Train SPARE
Adapter job at its defaults, the concept typed as a phrase onto the benchmark's usual surrogate with every other
concept as a retain phrase; spare_robust: the same with the Train node's robust input on; uce / esd_x:
spare_core-free reimplementations in benchmarks/baselines.py), then attacks
it with the Erasure Report node's own job (spare_core.comfyui.jobs.attack_erasure) at the 'standard' preset:
- the attack prompts are the concept with the first 4 concepts of the other domain on the split's first template (as
  many as the node attacks); the unerased model draws its own samples of them, and both attacks fit to those;
- the attacked generations are the concept with all 8 concepts of the other domain on each of the split's templates
  (half the pairs and one of the two templates were never attacked, so the attacks must transfer);
- soft_token: the tokens found, appended to each of those prompts;
- discrete: the words found (4 words from the words below, none of the concept's own) in the concept's place in each
  of those prompts (as Ring-A-Bell and P4D edit a prompt);
- paraphrase (held-out only): the synonym prompts of synthcanvas/attack_prompts.py in the held-out templates;
- plain: the attack prompts without any attack, as a reference.
ASR = the share of those generations that the SynthCanvas judge assigns to the erased concept. IRA and CRA come from
the row's own images of every other concept (benchmarks.unlearncanvas.eval_set, two seeds of the concept, one of
the rest); seconds = the erasure, attack_seconds = attack_erasure. The denoiser-space shares the Report node prints
(soft, discrete and the neutral prompts' floor) are kept beside them.

The word search draws from the words the demo model's text encoder was trained on (every SynthCanvas caption) and
the pack's shipped vocabularies and synonym lists, not from the 30,000 words of its CLIP tokenizer (the node's
default): the demo encoder never saw most of those, so a search over them would measure the vocabulary, not the
erasure.

Splits (the 'standard' preset is chosen on dev, reported on held-out):
- heldout: neon and sketch (styles), star and ring (objects); the held-out caption templates; the held-out sampler
  seed of benchmarks/unlearncanvas.py;
- dev: polka dot, charcoal (styles), crescent, diamond (objects); training templates 2 and 3; seed 3,000,000;
  SPARE only, one row per candidate budget (METHOD = spare@<candidate>).
What dev chooses, by a rule written before its rows were measured: 'standard' is the candidate with the highest mean
asr_soft_token + asr_discrete over the four dev concepts, among candidates whose mean attack_seconds is at most 1.5×
the mean SPARE erasure seconds (the issue's limit is 2×; the margin is for other machines); within 0.05 of the best,
the cheaper one.
- robust_dev (issue 41): the dev split's concepts, templates and seed, attacked at 'standard'; SPARE at its defaults
  and in robust mode at each of ROBUST_CANDIDATES (TrainConfig settings the node does not expose), with IRA and CRA.
  The rule, written before its rows were measured: among candidates whose mean IRA and mean CRA are both >= 0.95,
  the lowest mean asr_soft_token (within 0.05 of it, the fastest); if none keeps both, none is chosen and the
  robust defaults stay as they are.
The JSON is written after every row; a re-run skips rows already there unless --redo names them. Grids of the
attacked generations go to docs/images/robustness/ (one per concept, a column per method, rebuilt after each row).
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.resumable import row_parser, rows_to_measure
from benchmarks.unlearncanvas import (
    EVAL_SEED,
    Concept,
    Eraser,
    Settings,
    _uint8,
    eval_set,
    grid,
    node_defaults,
    parse_concepts,
    score,
    user_phrases,
)
from spare_core import attacks, neighbours
from spare_core.runner import headless
from synthcanvas import demo_model, evaluation
from synthcanvas.attack_prompts import SYNONYMS, paraphrase_prompts
from synthcanvas.generation import generate
from synthcanvas.render import HELD_OUT_TEMPLATES, OBJECTS, STYLES, TRAIN_TEMPLATES, caption

REPO = Path(__file__).resolve().parents[1]
TILES = 2              # generations per attack in the grids


@dataclass(frozen=True)
class Split:
    concepts: str
    templates: tuple[str, ...]
    seed: int
    json: Path
    methods: tuple[str, ...]
    on_request: tuple[str, ...] = ()  # rows measured only when --rows names them


# Candidates for the 'standard' preset. Revised once, on dev data: a first dev round (8 rows, the word search then
# scoring whole prompts of 4 words) showed 8 tokens, 200 steps and 16 draws restoring the concept in far more
# generations than 4 tokens and 100 steps; the word search, once it edited the attack prompts, cost ~0.1 s a prompt
# encoded (the demo model's text encoder is CLIP-L-sized), so its queries were cut to fit the time limit.
DEV_BUDGETS = {
    "t4s100q64": (attacks.SoftTokenBudget(tokens=4, steps=100, learning_rate=0.2, draws=8),
                  attacks.DiscreteBudget(queries=64, words=4, batch=16)),
    "t8s200q64": (attacks.SoftTokenBudget(tokens=8, steps=200, learning_rate=0.1, draws=8),
                  attacks.DiscreteBudget(queries=64, words=4, batch=16)),
    "t8s200q64d16": (attacks.SoftTokenBudget(tokens=8, steps=200, learning_rate=0.1, draws=16),
                     attacks.DiscreteBudget(queries=64, words=4, batch=16)),
    "t8s200q128d16": (attacks.SoftTokenBudget(tokens=8, steps=200, learning_rate=0.1, draws=16),
                      attacks.DiscreteBudget(queries=128, words=4, batch=16)),
}
# Robust-mode settings to choose among on the dev split (issue 41): TrainConfig fields over the Train node's defaults
# with robust on. The first is the robust input as it ships.
# Measured before robust_retain_scale existed (robust mode then used retain_weight as it was): "r25s10t4w4" ran
# with retain_weight 4.0, which is what the chosen robust_retain_scale 2.0 gives at the default retain_weight 2.0.
ROBUST_CANDIDATES = {
    "r25s10t4": {"robust_retain_scale": 1.0},
    "r10s20t8": {"robust_every": 10, "robust_attack_steps": 20, "robust_tokens": 8, "robust_retain_scale": 1.0},
    "r25s10t4w4": {"robust_retain_scale": 2.0},
}
DEV_CONCEPTS = "style:polka dot,object:crescent,style:charcoal,object:diamond"
HELD_OUT_CONCEPTS = "style:neon,style:sketch,object:star,object:ring"
SPLITS = {
    "heldout": Split(HELD_OUT_CONCEPTS, HELD_OUT_TEMPLATES, EVAL_SEED, REPO / "docs" / "results" / "robustness.json",
                     ("none", "spare", "uce", "spare_robust"), ("esd_x:style:neon", "esd_x:object:star")),
    "dev": Split(DEV_CONCEPTS, TRAIN_TEMPLATES[1:3], 3_000_000, REPO / "docs" / "results" / "robustness_dev.json",
                 tuple(f"spare@{name}" for name in DEV_BUDGETS)),
    "robust_dev": Split(DEV_CONCEPTS, TRAIN_TEMPLATES[1:3], 3_000_000,
                        REPO / "docs" / "results" / "robustness_robust_dev.json",
                        ("spare",) + tuple(f"spare_robust@{name}" for name in ROBUST_CANDIDATES)),
}
ATTACKS = ("plain", "paraphrase", "soft_token", "discrete")


def search_vocabulary() -> list[str]:
    """Every word of the SynthCanvas captions, the shipped vocabularies and the synonym lists, once each."""
    captions = [caption(o, s, t) for t in TRAIN_TEMPLATES + HELD_OUT_TEMPLATES for o in OBJECTS for s in STYLES]
    synonyms = [word for domain in SYNONYMS.values() for names in domain.values() for word in names]
    return attacks.words_of(captions + synonyms + neighbours.read_vocabulary("general")
                            + neighbours.read_vocabulary("synthcanvas"))


def budget_name(method: str) -> str:
    return method.split("@", 1)[1] if method.startswith("spare@") else "standard"


def budgets_of(method: str):
    return DEV_BUDGETS.get(budget_name(method)) or attacks.PRESETS["standard"]


def robust_erasure(runtime, model, clip, concept: Concept, overrides: dict):
    """SPARE in robust mode with TrainConfig settings the Train node does not expose: the node's own job
    (jobs.train_for_model) on the inputs the node builds from its defaults, robust on, ``overrides`` over them."""
    from spare_core.comfyui import jobs, models, reuse
    from spare_core.config import SampleConfig, TrainConfig
    from spare_core.prompts import ErasurePrompts
    inputs = node_defaults(runtime.nodes.NODE_CLASS_MAPPINGS["SpareTrainAdapter"])
    forget, surrogate, retain = user_phrases(concept)
    side = inputs["resolution"] or models.native_resolution(model)
    samples = SampleConfig(samples_per_prompt=inputs["samples"], width=side, height=side,
                           cfg=models.sample_guidance_scale(model))
    settings = {"rank": inputs["rank"], "alpha": inputs["alpha"], "steps": inputs["steps"],
                "learning_rate": inputs["learning_rate"], "retain_weight": inputs["retain_weight"],
                "batch_size": inputs["batch_size"], "erase_target": inputs["erase_target"] or None,
                "overshoot": inputs["overshoot"], "robust": True}
    config = TrainConfig(**{**settings, **overrides})
    reuse.forget()  # each erasure draws its own samples, as it would alone
    started = time.perf_counter()
    trained = jobs.train_for_model(model, clip, ErasurePrompts.parse(forget, surrogate, retain), samples, config,
                                   inputs["seed"])
    return trained.model, round(time.perf_counter() - started, 2)


def asr(concept: Concept, images: torch.Tensor) -> tuple[float, np.ndarray]:
    """Share of ``images`` the judge assigns to ``concept``, and the per-image verdicts."""
    objects, styles = evaluation.classify(images)
    own = (styles if concept.domain == "style" else objects).numpy()
    hits = own == concept.index
    return round(float(hits.mean()), 4), hits


def means(per_concept: dict) -> dict:
    rows = list(per_concept.values())
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and all(k in r for r in rows)]
    summary = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    summary["concepts"] = list(per_concept)
    return summary


def main(argv=None) -> int:
    parser = row_parser(__doc__.splitlines()[0], SPLITS)
    parser.add_argument("--table", action="store_true", help="print the JSON's figures as markdown tables and stop")
    args = parser.parse_args(argv)
    split = SPLITS[args.split]
    if args.table:
        print(markdown(json.loads((args.json or split.json).read_text()), split))
        return 0
    concepts = parse_concepts(split.concepts)
    every = [f"{m}:{c.label()}" for c in concepts for m in split.methods]
    json_path = args.json or split.json
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    todo = rows_to_measure(parser, args.rows, args.redo, every, results, split.on_request)
    if not todo:
        return 0

    runtime = headless.boot(Path(tempfile.mkdtemp(prefix="spare-robustness-")), cpu=not torch.cuda.is_available())
    demo_model.build_checkpoint(runtime.folder("checkpoints") / demo_model.CHECKPOINT_NAME)
    from spare_core.comfyui import jobs  # imports ComfyUI, which headless.boot has just put on the path
    with torch.inference_mode():
        model, clip, vae = runtime.node("CheckpointLoaderSimple").load_checkpoint(demo_model.CHECKPOINT_NAME)[:3]
    settings = Settings()
    eraser = Eraser(runtime, model, clip, settings)
    vocabulary = search_vocabulary()
    seed = split.seed
    tile_folder = REPO / "docs" / "images" / "robustness" / (
        "tiles" if args.split == "heldout" else f"tiles_{args.split}")
    erasures: dict = {}

    def images_for(m, prompts, **kwargs):
        return generate(runtime.nodes, m, clip, vae, prompts, seed, settings.sampler, eraser.cache, **kwargs)

    def erase(method: str, concept: Concept):
        name = method.split("@", 1)[0]
        if name == "none":
            return model, 0.0
        if name == "spare_robust" and "@" in method:
            return robust_erasure(runtime, model, clip, concept, ROBUST_CANDIDATES[method.split("@", 1)[1]])
        if (name, concept.label()) not in erasures:
            erased = eraser.run(name, concept)
            erasures[(name, concept.label())] = (erased.model, erased.seconds)
        return erasures[(name, concept.label())]

    for row in todo:
        method, label = row.split(":", 1)
        concept = parse_concepts(label)[0]
        erased_model, seconds = erase(method, concept)
        pairs = concept.pairs()
        attack_prompts = [caption(o, s, split.templates[0]) for o, s in pairs[:jobs.REPORT_PROMPTS]]
        started = time.perf_counter()
        findings = jobs.attack_erasure(model, erased_model, clip, attack_prompts, concept.name, [concept.name],
                                       budgets_of(method), seed, vocabulary)
        attack_seconds = time.perf_counter() - started
        sampled = [caption(o, s, t) for t in split.templates for o, s in pairs]
        generated = {"plain": images_for(erased_model, sampled),
                     "soft_token": images_for(erased_model, sampled, extra_tokens=findings.soft_token.tokens),
                     "discrete": images_for(erased_model, [attacks.substitute(p, concept.name, findings.discrete.prompt)
                                                           for p in sampled])}
        if args.split == "heldout":
            generated["paraphrase"] = images_for(erased_model, [p for p, _, _ in paraphrase_prompts(
                concept.domain, concept.name)])
        figures = {f"asr_{name}": asr(concept, images)[0] for name, images in generated.items()}
        if args.split != "dev":
            evals = eval_set(concept, forget_seeds=2, paraphrase_seeds=1)
            scored = score(concept, evals, images_for(erased_model, evals.prompts))
            figures.update(IRA=round(scored["IRA"], 4), CRA=round(scored["CRA"], 4))
        figures.update(
            seconds=round(seconds, 1), attack_seconds=round(attack_seconds, 1),
            share_soft_token=round(findings.soft_token.restored, 4),
            share_discrete=round(findings.discrete.restored, 4), share_neutral=round(findings.neutral, 4),
            discrete_prompt=findings.discrete.prompt)
        results.setdefault(method, {}).setdefault("per_concept", {})[label] = figures
        results[method].update(means(results[method]["per_concept"]))
        soft_budget, discrete_budget = budgets_of(method)
        results.setdefault("budgets", {})[budget_name(method)] = {
            "soft_token": asdict(soft_budget), "discrete": asdict(discrete_budget)}
        results.update(machine=torch.cuda.get_device_name() if torch.cuda.is_available()
                       else f"CPU {platform.machine()}, {torch.get_num_threads()} threads",
                       date=datetime.date.today().isoformat(), split=args.split,
                       vocabulary=f"{len(vocabulary)} words: SynthCanvas captions, synonym lists, shipped vocabularies",
                       command="python benchmarks/synthcanvas_robustness.py " + " ".join(
                           argv if argv is not None else sys.argv[1:]),
                       protocol=__doc__)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        # This row's column of the concept's grid: TILES generations of each attack, stacked.
        column = [_uint8(generated[name][i]) for name in ATTACKS if name in generated for i in range(TILES)]
        tile_folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(column)).save(tile_folder / f"{label.replace(':', '_').replace(' ', '_')}"
                                                                   f"__{method}.png")
        write_grid(tile_folder, concept, split, [a for a in ATTACKS if a in generated], attack_prompts,
                   "" if args.split == "heldout" else f"_{args.split}")
        print(f"{row}: " + ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)
    return 0


FIGURES = (("asr_plain", "plain"), ("asr_soft_token", "soft-token"), ("asr_discrete", "word search"),
           ("asr_paraphrase", "paraphrase"), ("IRA", "IRA"), ("CRA", "CRA"), ("seconds", "erasure s"),
           ("attack_seconds", "attack s"))


def markdown(results: dict, split: Split) -> str:
    """The means per method, then each concept's row per method (ASR columns: the share of attacked generations
    judged to show the erased concept)."""
    def cell(row: dict, key: str) -> str:
        return "" if key not in row else f"{row[key]:.1f}" if "seconds" in key else f"{row[key]:.3f}"
    methods = [m for m in split.methods + tuple(r.split(":", 1)[0] for r in split.on_request) if m in results]
    shown = [(key, name) for key, name in FIGURES if any(key in results[m] for m in methods)]
    lines = ["| method | " + " | ".join(name for _, name in shown) + " | concepts |",
             "|---" * (len(shown) + 2) + "|"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(cell(results[m], k) for k, _ in shown)
                     + f" | {len(results[m]['concepts'])} |")
    lines += ["", "| concept | method | " + " | ".join(name for _, name in shown) + " | words found |",
              "|---" * (len(shown) + 3) + "|"]
    for concept in dict.fromkeys(c for m in methods for c in results[m]["per_concept"]):
        for m in methods:
            row = results[m]["per_concept"].get(concept)
            if row is not None:
                lines.append(f"| {concept} | {m} | " + " | ".join(cell(row, k) for k, _ in shown)
                             + f" | {row['discrete_prompt']} |")
    return "\n".join(lines)


def write_grid(tile_folder: Path, concept: Concept, split: Split, shown: list[str], attack_prompts: list[str],
               suffix: str) -> Path:
    """The concept's grid from the columns measured so far, in the split's method order."""
    stem = concept.label().replace(":", "_").replace(" ", "_")
    columns, strips = [], []
    for method in split.methods + tuple(r.split(":", 1)[0] for r in split.on_request):
        path = tile_folder / f"{stem}__{method}.png"
        if path.exists() and method not in columns:
            columns.append(method)
            strips.append(np.asarray(Image.open(path)))
    paraphrases = [p for p, _, _ in paraphrase_prompts(concept.domain, concept.name)]
    labels = {"plain": attack_prompts, "paraphrase": paraphrases,
              "soft_token": [f"{p} + tokens" for p in attack_prompts],
              "discrete": [f"{p}, words in place of {concept.name!r}" for p in attack_prompts]}
    row_names = [f"{name}: {labels[name][i]}" for name in shown for i in range(TILES)]
    tile = strips[0].shape[1]
    tiles = [[strip[r * tile:(r + 1) * tile] for strip in strips] for r in range(len(row_names))]
    # Column titles hold 10 characters: the dev candidates go by their budget's name alone.
    return grid(row_names, [m.split("@")[-1] for m in columns], tiles, tile_folder.parent / f"{stem}{suffix}.png")


if __name__ == "__main__":
    sys.exit(main())
