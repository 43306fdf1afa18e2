"""The erasure verdict (erased / partly erased / not erased) against the SynthCanvas judge: what the Train node's own
check says beside what the judge sees in generated images, over concepts and step counts.

    python benchmarks/verdict_calibration.py --split dev        # the dev split: chooses the verdict's thresholds
    python benchmarks/verdict_calibration.py                    # the held-out split: reports the agreement
    python benchmarks/verdict_calibration.py --rows steps25:style:neon,steps50:style:neon
    python benchmarks/verdict_calibration.py --figures-only    # add a later candidate's figures to measured rows

Rows are steps<N>:CONCEPT and lr1e-4_steps<N>:CONCEPT. Each is one Train job at the node's defaults with ``steps``
= N (and learning rate 1e-4 instead of 3e-3 in the second kind), the concept typed as a phrase onto the benchmark's
usual surrogate, every other concept as a retain phrase (as benchmarks/unlearncanvas.py trains it).
The training's learning rate is constant and its draws do not depend on the step count, so N steps are exactly the
first N of a longer run: the rows of one concept and learning rate are one erasure seen at several points of its way.
Per row: the check's figures (share of held-out draws nearer the surrogate, gap closed, retain drift) and the judge's
UA on the concept's own images (share of them not classified as the concept).

The judge's classes, fixed before any row was measured: UA ≥ 0.9 erased, 0.5 ≤ UA < 0.9 partly erased, UA < 0.5 not
erased (most pictures still show the concept).

Splits (thresholds are chosen on dev, agreement is reported on held-out):
- dev: sketch, polka dot (styles), ring, crescent (objects) (benchmarks/recipe_dev.py's concepts); training seed
  DEV_TRAIN_SEED (not the node's default); judged on training templates 2–4, each of the concept's 8 pairs twice per
  template (48 images), sampler seed 3,000,000;
- heldout: all 16 concepts, at 5, 10, 25 and 300 steps and lr1e-4 at 100 and 300 (fewer rows than dev, for time;
  see SPLITS); the node's default training seed; judged on the first training template, each of the concept's
  pairs 8 times (64 images), the benchmark's held-out sampler seed (benchmarks/unlearncanvas.py's UA).
The four dev concepts are also among the 16 held-out ones, trained from another seed and judged on other images.

How dev chooses. For each figure F (the share of draws nearer the surrogate; the same share for the guidance
direction alone, "guided"; the same share for the prediction as a sampler at the pack's guidance scale combines it,
"cfg"; gap closed), every pair of thresholds lo ≤ hi over the values F took on dev (and 0 and 1.01); the verdict is
erased when F ≥ hi, not erased when F < lo, partly between; the pair that agrees with the judge's class on the most
dev rows wins, ties broken towards the higher hi (claim "erased" only when surer), then the higher lo. The figure
whose best pair agrees on the most dev rows drives the shipped verdict (spare_core.adapter: VERDICT_FIGURE,
VERDICT_THRESHOLDS); a tie keeps the figure shipped before. The held-out split reports its agreement and, beside it,
the other figures' at the thresholds dev chose for them.
What was seen before each candidate joined, said plainly: the first three dev rows (sketch at 5, 10 and 25 steps),
run as a smoke test with only the plain share, showed it at 1.0 on images the judge still read as sketch; the guided
share was added as a candidate then. The lr1e-4 rows were added after the 24 rows at the default learning rate
(5 of them not erased by the judge, 1 partly), before any lr1e-4 row was measured. The cfg share was added after the
whole held-out split had been measured with the guided verdict, which said "not erased" at the defaults for charcoal
and sunset although the judge and the pictures show them erased; every dev and held-out row was then trained again
(--figures-only; training is deterministic: all 132 rows reproduced their recorded figures exactly) to give it its
figures, and the choice between figures was made on dev as above (on the 36 rows it tied with the guided share).
The guided shares at guidance 2 and 10 are recorded beside it, never chosen from. The lr1e-4 rows at 150 and 200
steps joined dev after that (its 36 rows held only two partly-erased ones, too few to place a band for them),
before any of them was measured; held-out keeps its 96 rows.

The JSON is written after every row; a re-run skips the rows already there unless --redo names them.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from benchmarks.resumable import known_rows, row_parser, rows_to_measure
from benchmarks.unlearncanvas import EVAL_SEED, Concept, node_defaults, parse_concepts, user_phrases
from spare_core import trainer
from spare_core.adapter import VERDICT_FIGURE, VERDICT_THRESHOLDS, erasure_verdict
from spare_core.config import SampleConfig
from spare_core.runner import headless
from synthcanvas import demo_model, evaluation
from synthcanvas.generation import generate
from synthcanvas.render import OBJECTS, STYLES, TRAIN_TEMPLATES, caption

REPO = Path(__file__).resolve().parents[1]
STEP_COUNTS = (5, 10, 25, 50, 100, 300)
# The same at the node's earlier default learning rate, 30 times smaller: erasures that get part of the way, which
# the default learning rate passes through within a few steps.
WEAK_LEARNING_RATE = 1e-4
# 150 and 200 joined after the first 36 dev rows held only two partly-erased ones: on every dev concept the weak rate
# had not erased at 100 steps and had at 300 (polka dot partly), so the steps between are where partial erasures are.
WEAK_STEP_COUNTS = (25, 100, 150, 200, 300)
DEV_TRAIN_SEED = 1
JUDGE_CLASSES = ((0.9, "erased"), (0.5, "partly erased"), (0.0, "not erased"))
# The guidance scale the pack samples the demo model's family at (SampleConfig.cfg, which the Train node uses for its
# own samples; Flux: 1): the candidate figure that judges each draw as that sampler combines the predictions.
SAMPLE_GUIDANCE = SampleConfig().cfg
FIGURES = ("nearer_surrogate", "guided_nearer_surrogate", "cfg_nearer_surrogate", "gap_closed")
# Recorded beside the candidates, never chosen from: the guided share at other guidance scales, to see how the figure
# moves between the plain share (w = 1) and the pure direction (w = inf).
GUIDANCE_SWEEP = (2.0, 10.0)
ADDED = ("cfg_nearer_surrogate", *(f"guided_w{w:g}" for w in GUIDANCE_SWEEP))  # what --figures-only adds to a row
STRIP = 8  # images per row kept as a picture: the concept's 8 pairs, once each


@dataclass(frozen=True)
class Split:
    concepts: str
    templates: tuple[str, ...]
    repeats: int
    sampler_seed: int
    train_seed: int | None  # None: the Train node's default
    json: Path
    step_counts: tuple[int, ...] = STEP_COUNTS
    weak_step_counts: tuple[int, ...] = WEAK_STEP_COUNTS


SPLITS = {
    "dev": Split("style:sketch,style:polka dot,object:ring,object:crescent", TRAIN_TEMPLATES[1:], 2, 3_000_000,
                 DEV_TRAIN_SEED, REPO / "docs" / "results" / "verdict_calibration_dev.json"),
    # Fewer rows per concept than dev, so that the 16 concepts fit in about an hour on a 2-core CPU: 50 and 100
    # steps (at the default learning rate every dev row there was erased, like 300) and lr 1e-4 at 25 steps (every
    # dev row not erased, the model barely moved) are left out.
    "heldout": Split("all", TRAIN_TEMPLATES[:1], 8, EVAL_SEED, None,
                     REPO / "docs" / "results" / "verdict_calibration.json", (5, 10, 25, 300), (100, 300)),
}


class LastCheck:
    """Keeps the tensors of the Train job's last erasure check (the arguments of trainer.ErasureCheck.measure), so that
    figures the node does not record can be computed on the very draws the node's own figures came from. ComfyUI
    loads the pack as a custom node under a module name of its own, so the trainer the node runs is another module
    object than this file's ``spare_core.trainer``: every loaded copy is listened to."""

    def __enter__(self) -> "LastCheck":
        self.arguments: dict = {}
        self._checks = [module.ErasureCheck for name, module in list(sys.modules.items())
                        if name.endswith("spare_core.trainer") and hasattr(module, "ErasureCheck")]
        self._measure = [check.__dict__["measure"] for check in self._checks]
        for check, measure in zip(self._checks, self._measure, strict=True):
            check.measure = staticmethod(self._listening(measure.__func__))
        return self

    def _listening(self, original):
        def listening(step, concept, surrogate, student_forget, retain, student_retain, sigma_forget, sigma_retain,
                      overshoot=0.0, unconditional=None, student_unconditional=None):
            self.arguments = {"concept": concept, "surrogate": surrogate, "student": student_forget,
                              "unconditional": unconditional, "student_unconditional": student_unconditional}
            return original(step, concept, surrogate, student_forget, retain, student_retain, sigma_forget,
                            sigma_retain, overshoot, unconditional, student_unconditional)
        return listening

    def __exit__(self, *exc) -> None:
        for check, measure in zip(self._checks, self._measure, strict=True):
            check.measure = measure
        if not self.arguments:
            raise RuntimeError("the Train job ran no erasure check that this benchmark could listen to")

    def share_at(self, guidance: float) -> float:
        return trainer.nearer_surrogate_share(**self.arguments, guidance=guidance)


def judge_class(ua: float) -> str:
    return next(name for bound, name in JUDGE_CLASSES if ua >= bound)


class Images:
    """What the judge sees for one concept: its own 8 pairs ``repeats`` times on each of the split's templates
    (UA), then every other pair once on the split's first template (IRA: the same domain's accuracy there)."""

    def __init__(self, concept: Concept, split: Split):
        self.concept = concept
        mine = [(o, s) for o in OBJECTS for s in STYLES if (s if concept.domain == "style" else o) == concept.name]
        others = [(o, s) for o in OBJECTS for s in STYLES if (o, s) not in mine]
        self.forget = [caption(o, s, t) for t in split.templates for _ in range(split.repeats) for o, s in mine]
        self.others = [caption(o, s, split.templates[0]) for o, s in others]
        self.other_truth = torch.tensor([(STYLES.index(s) if concept.domain == "style" else OBJECTS.index(o))
                                         for o, s in others])

    @property
    def prompts(self) -> list[str]:
        return self.forget + self.others

    def judged(self, images: torch.Tensor) -> dict:
        objects, styles = evaluation.classify(images)
        own = styles if self.concept.domain == "style" else objects
        n = len(self.forget)
        return {"UA": round(float((own[:n] != self.concept.index).float().mean()), 4),
                "IRA": round(float((own[n:] == self.other_truth).float().mean()), 4)}


def save_strip(images: torch.Tensor, path: Path) -> None:
    """The first STRIP images side by side (the concept's pairs, once each), to look at."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tiles = (images[:STRIP].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(np.concatenate(list(tiles), axis=1)).save(path)


def grid(strips: Path, path: Path) -> None:
    """Every concept's strips one under the other (unerased first, then each row measured), half size, labelled."""
    concepts = sorted(folder for folder in strips.iterdir() if folder.is_dir()) if strips.exists() else []
    order = ["steps0"] + [f"steps{n}" for n in STEP_COUNTS] + [f"lr1e-4_steps{n}" for n in WEAK_STEP_COUNTS]
    lines = []
    for concept in concepts:
        lines.append((concept.name.replace("_", " ", 1), None))
        lines += [(name, Image.open(concept / f"{name}.png")) for name in order if (concept / f"{name}.png").exists()]
    if not lines:
        return
    tile = 32  # the 64 px images at half size
    label = 110
    picture = Image.new("RGB", (label + STRIP * tile, len(lines) * tile), "white")
    draw = ImageDraw.Draw(picture)
    for row, (text, strip) in enumerate(lines):
        draw.text((4, row * tile + 10), "unerased" if text == "steps0" else text, fill="black")
        if strip is not None:
            picture.paste(strip.resize((STRIP * tile, tile)), (label, row * tile))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, quality=88)


def recorded(results: dict, row: str) -> dict | None:
    """The figures a METHOD:CONCEPT row holds in the JSON (None when it was not measured)."""
    method, label = row.split(":", 1)
    return results.get(method, {}).get("per_concept", {}).get(label)


def measured_rows(results: dict) -> list[dict]:
    """Every measured row as {row, steps, figures…, UA}."""
    rows = []
    for method, entry in results.items():
        if "steps" in method and isinstance(entry, dict):
            for label, row in entry.get("per_concept", {}).items():
                rows.append({"row": f"{method}:{label}", **row})
    return rows


def agreement(rows: list[dict], figure: str, thresholds: tuple[float, float]) -> dict:
    """How often the verdict from ``figure`` at ``thresholds`` names the judge's class, and the confusion table
    (judge's class → verdict → rows)."""
    table = {name: {other: 0 for _, other in JUDGE_CLASSES} for _, name in JUDGE_CLASSES}
    for row in rows:
        table[judge_class(row["UA"])][erasure_verdict(row[figure], thresholds)] += 1
    agreeing = sum(table[name][name] for _, name in JUDGE_CLASSES)
    return {"figure": figure, "thresholds": list(thresholds), "rows": len(rows), "agreeing": agreeing,
            "agreement": round(agreeing / len(rows), 4) if rows else None, "judge_class_to_verdict": table}


def choose_thresholds(rows: list[dict], figure: str) -> dict:
    """The dev rule of the docstring: the (lo, hi) that agrees with the judge on the most rows."""
    values = sorted({0.0, 1.01, *(row[figure] for row in rows)})
    candidates = [(lo, hi) for lo in values for hi in values if lo <= hi]
    best = max(candidates, key=lambda pair: (agreement(rows, figure, pair)["agreeing"], pair[1], pair[0]))
    return agreement(rows, figure, best)


def summarise(results: dict, split_name: str) -> None:
    rows = measured_rows(results)
    if not rows:
        return
    # A figure added as a candidate later is compared only once every measured row has it.
    figures = [figure for figure in FIGURES if all(figure in row for row in rows)]
    if split_name == "dev":
        results["chosen"] = {figure: choose_thresholds(rows, figure) for figure in figures}
        # The best figure by rows agreeing; a tie keeps the figure already shipped.
        results["best_figure"] = max(figures, key=lambda figure: (results["chosen"][figure]["agreeing"],
                                                                  figure == VERDICT_FIGURE))
        return
    report = {"shipped": agreement(rows, VERDICT_FIGURE, VERDICT_THRESHOLDS)}
    dev = SPLITS["dev"].json
    chosen = json.loads(dev.read_text()).get("chosen", {}) if dev.exists() else {}
    for figure in figures:  # the other figures with the thresholds dev chose for each, for comparison
        if figure != VERDICT_FIGURE and figure in chosen:
            report[f"{figure} (dev's thresholds, not shipped)"] = agreement(rows, figure,
                                                                            tuple(chosen[figure]["thresholds"]))
    per_steps = {}
    for method in sorted({row["row"].split(":", 1)[0] for row in rows}):
        part = [row for row in rows if row["row"].startswith(f"{method}:")]
        per_steps[method] = agreement(part, VERDICT_FIGURE, VERDICT_THRESHOLDS)["agreement"]
    results["agreement"] = {**report, "shipped_by_steps": per_steps}


def main(argv=None) -> int:
    parser = row_parser(__doc__.splitlines()[0], SPLITS)
    parser.add_argument("--strips", type=Path, default=REPO / "out" / "verdict_calibration",
                        help="folder for each row's strip of images (split/concept/row.png)")
    parser.add_argument("--grid", type=Path, default=None,
                        help="the strips of every measured row as one picture (default: "
                             "docs/results/verdict_calibration/SPLIT.jpg)")
    parser.add_argument("--figures-only", action="store_true",
                        help="train the rows already measured again to add the figures they lack (a candidate added "
                             "later), keeping their judged images; a row whose recorded figures the training does "
                             "not reproduce is an error")
    args = parser.parse_args(argv)
    split = SPLITS[args.split]
    concepts = parse_concepts(split.concepts)
    # Concept-major, so that one concept's rows run together and share its samples (comfyui.reuse).
    every = [f"{kind}{n}:{c.label()}" for c in concepts
             for kind, counts in (("steps", split.step_counts), ("lr1e-4_steps", split.weak_step_counts))
             for n in counts]
    json_path = args.json or split.json
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    if args.figures_only:
        todo = [row for row in known_rows(parser, args.rows, every) if "UA" in (recorded(results, row) or {})
                and not set(ADDED) <= recorded(results, row).keys()]
        print(f"measured rows lacking figures: {', '.join(todo) or 'none'}", flush=True)
    else:
        todo = rows_to_measure(parser, args.rows, args.redo, every, results)
    grid_path = args.grid or REPO / "docs" / "results" / "verdict_calibration" / f"{args.split}.jpg"
    if not todo:
        results["protocol"] = __doc__
        summarise(results, args.split)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        grid(args.strips / args.split, grid_path)
        return 0

    runtime = headless.boot(Path(tempfile.mkdtemp(prefix="spare-verdict-")), cpu=not torch.cuda.is_available())
    demo_model.build_checkpoint(runtime.folder("checkpoints") / demo_model.CHECKPOINT_NAME)
    train = runtime.nodes.NODE_CLASS_MAPPINGS["SpareTrainAdapter"]
    with torch.inference_mode():
        model, clip, vae = runtime.node("CheckpointLoaderSimple").load_checkpoint(demo_model.CHECKPOINT_NAME)[:3]
    cache: dict = {}
    results["protocol"] = __doc__
    results["split"] = args.split
    for row in todo:
        method, label = row.split(":", 1)
        concept = next(c for c in concepts if c.label() == label)
        images = Images(concept, split)
        strips = args.strips / args.split / label.replace(":", "_").replace(" ", "_")
        base = results.setdefault("base", {}).setdefault("per_concept", {})
        if label not in base:
            pictures = generate(runtime.nodes, model, clip, vae, images.prompts, split.sampler_seed, cache=cache)
            base[label] = images.judged(pictures)
            save_strip(pictures, strips / "steps0.png")
        forget, surrogate, retain = user_phrases(concept)
        inputs = {**node_defaults(train), "model": model, "clip": clip, "forget_prompts": forget,
                  "surrogate_prompt": surrogate, "retain_prompts": retain,
                  "steps": int(method.rpartition("steps")[2])}
        if method.startswith("lr1e-4_"):
            inputs["learning_rate"] = WEAK_LEARNING_RATE
        if split.train_seed is not None:
            inputs["seed"] = split.train_seed
        with LastCheck() as last:
            trained = train().job(**inputs)
        check = trained.result.final_check
        figures = {"steps": trained.result.steps_done, "nearer_surrogate": check.nearer_surrogate,
                   "guided_nearer_surrogate": check.guided_nearer_surrogate,
                   "cfg_nearer_surrogate": last.share_at(SAMPLE_GUIDANCE),
                   **{f"guided_w{w:g}": last.share_at(w) for w in GUIDANCE_SWEEP},
                   "gap_closed": check.gap_closed, "retain_drift": check.retain_drift}
        if args.figures_only:
            before = recorded(results, row)
            differing = {k: (before[k], v) for k, v in figures.items() if k in before and before[k] != v}
            if differing:
                raise SystemExit(f"{row}: the training no longer reproduces the recorded figures {differing} "
                                 f"(recorded, now); measure the row whole with --redo {row}")
            before.update(figures)
            summarise(results, args.split)
            json_path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"{row:28s} reproduced; cfg{SAMPLE_GUIDANCE:g} {figures['cfg_nearer_surrogate']:.3f}", flush=True)
            continue
        pictures = generate(runtime.nodes, trained.model, clip, vae, images.prompts, split.sampler_seed, cache=cache)
        save_strip(pictures, strips / f"{method}.png")
        judged = images.judged(pictures)
        ua = judged["UA"]
        results.setdefault(method, {}).setdefault("per_concept", {})[label] = {
            **figures, **judged, "judge": judge_class(ua)}
        summarise(results, args.split)
        results["machine"] = {"date": datetime.date.today().isoformat(), "platform": platform.platform(),
                              "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "device": "cuda" if torch.cuda.is_available() else "cpu"}
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        grid(args.strips / args.split, grid_path)
        print(f"{row:28s} nearer {check.nearer_surrogate:.3f} guided {check.guided_nearer_surrogate:.3f} "
              f"cfg{SAMPLE_GUIDANCE:g} {figures['cfg_nearer_surrogate']:.3f} "
              f"gap {check.gap_closed:.3f} drift {check.retain_drift:.3f} UA {ua:.3f} IRA {judged['IRA']:.3f} "
              f"(base UA {base[label]['UA']:.3f} IRA {base[label]['IRA']:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
