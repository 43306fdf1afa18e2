"""Miniature UnlearnCanvas: erase SynthCanvas concepts with SPARE, its ablations, ESD-x and UCE, and report
UA / IRA / CRA / paraphrase UA, time, memory and adapter size per method.

    python benchmarks/synthcanvas.py                                   # every style and object, every method
    python benchmarks/synthcanvas.py --concepts style:neon,object:star --methods spare,uce

The "spare" row is the Train SPARE Adapter node at its defaults, the concept typed as a phrase (as a user does);
"spare_earlier" is the benchmark's earlier setting, kept so that old and new figures compare. The Train node's
defaults were chosen on a separate dev split (benchmarks/recipe_dev.py); nothing here was tuned on these figures.

Writes the JSON (docs/results/synthcanvas.json by default), a Markdown table and one PNG grid per concept
(rows: prompts; columns: before, then each method). A benchmark, not a test: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

import comfy_runtime  # noqa: E402

from synthcanvas import benchmark, classifier, demo_model  # noqa: E402


def main(argv=None) -> int:
    defaults = benchmark.Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", default="all", help="'all' or e.g. style:neon,object:star")
    parser.add_argument("--methods", default=",".join(benchmark.METHODS), help=f"any of {', '.join(benchmark.METHODS)}")
    parser.add_argument("--esd-concepts", default="style:neon",
                        help="ESD-x runs only on these ('all' for every concept): with its paper's 1000 iterations "
                             "it is the slowest method by far")
    parser.add_argument("--ablation-concepts", default="style:neon,object:star",
                        help="the SPARE ablations run only on these ('all' for every concept)")
    parser.add_argument("--dial-concepts", default="style:neon,object:star,style:striped,object:square",
                        help="concepts whose SPARE adapter is also judged at Apply strengths 0, 0.5, 1, 1.5")
    parser.add_argument("--second-judge", type=Path, default=None,
                        help="another classifier file (e.g. the judge before hybrid adaptation, from git history) "
                             "that scores the same images again, so figures under both judges compare")
    parser.add_argument("--esd-iterations", type=int, default=defaults.esd_iterations)
    parser.add_argument("--forget-seeds", type=int, default=defaults.forget_seeds,
                        help="images per (object, style) pair of the erased concept on the training template (other "
                             "pairs get one)")
    parser.add_argument("--paraphrase-seeds", type=int, default=defaults.paraphrase_seeds,
                        help="images per pair of the erased concept on each held-out template")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "synthcanvas.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "docs" / "results" / "synthcanvas.md")
    parser.add_argument("--grids", type=Path, default=REPO / "docs" / "results" / "synthcanvas",
                        help="folder for the per-concept PNG grids")
    args = parser.parse_args(argv)

    settings = benchmark.Settings(esd_iterations=args.esd_iterations, forget_seeds=args.forget_seeds,
                                  paraphrase_seeds=args.paraphrase_seeds)
    concepts = benchmark.parse_concepts(args.concepts)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in benchmark.METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(benchmark.METHODS)}")
    only = {}
    if args.esd_concepts != "all":
        only["esd_x"] = {c.label() for c in benchmark.parse_concepts(args.esd_concepts)}
    if args.ablation_concepts != "all":
        for method in benchmark.ABLATIONS:
            only[method] = {c.label() for c in benchmark.parse_concepts(args.ablation_concepts)}

    gpu = torch.cuda.is_available()
    runtime = comfy_runtime.boot(Path(tempfile.mkdtemp(prefix="spare-synthcanvas-")), cpu=not gpu)
    demo_model.build_checkpoint(runtime.folder("checkpoints") / demo_model.CHECKPOINT_NAME)
    train_node = runtime.nodes.NODE_CLASS_MAPPINGS["SpareTrainAdapter"]
    spare_defaults = {k: v for k, v in benchmark.node_defaults(train_node).items()
                      if k not in ("forget_prompts", "surrogate_prompt", "retain_prompts")}
    dial = {c.label() for c in benchmark.parse_concepts(args.dial_concepts)} if args.dial_concepts else set()
    started = time.perf_counter()
    machine = (torch.cuda.get_device_name() if gpu else
               f"CPU {platform.machine()}, {torch.get_num_threads()} threads")
    command = "python benchmarks/synthcanvas.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def write(results: dict, final: bool = False) -> str:
        results["spare_on_subsets"] = benchmark.spare_on_subsets(results, only)
        out = {**results["methods"],
               "machine": machine, "date": datetime.date.today().isoformat(), "command": command,
               "complete": final,
               "settings": {**asdict(settings), "surrogate": "first other concept of the same domain, in list order",
                            "spare": {"node": "SpareTrainAdapter at its defaults", **spare_defaults,
                                      "prompts": "phrase path: the concept, its surrogate, every other concept of "
                                                 "both domains as retain phrases"},
                            "ablations": benchmark.ABLATIONS},
               "judge": "synthcanvas/weights/classifier.safetensors (adapted to hybrid renders)",
               "second_judge": str(args.second_judge) if args.second_judge else None,
               "strength_dial": results.get("strength_dial", {}), "gap_vs_ua": results.get("gap_vs_ua", {}),
               "base_model": results["base_summary"], "spare_on_subsets": results["spare_on_subsets"],
               "subsets": {m: sorted(labels) for m, labels in only.items()},
               "per_concept": results["per_concept"], "base_per_concept": results["base"],
               "wall_seconds": round(time.perf_counter() - started, 1)}
        table = benchmark.markdown(results)
        for path, text in ((args.json, json.dumps(out, indent=2) + "\n"),
                           (args.markdown, f"Machine: {machine}; date {out['date']}; command `{command}`"
                                           f"{'' if final else ' (partial: still running or stopped early)'}\n\n"
                                           + table)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return table

    results = benchmark.run(runtime, demo_model.CHECKPOINT_NAME, concepts, methods, settings, args.grids, only=only,
                            on_progress=write, dial_concepts=dial,
                            second_judge=classifier.load(args.second_judge) if args.second_judge else None)
    print(write(results, final=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
