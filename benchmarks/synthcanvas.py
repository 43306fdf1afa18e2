"""Miniature UnlearnCanvas: erase SynthCanvas concepts with SPARE, its ablations, ESD-x and UCE, and report
UA / IRA / CRA / paraphrase UA, time, memory and adapter size per method.

    python benchmarks/synthcanvas.py                                   # every style and object, every method
    python benchmarks/synthcanvas.py --concepts style:neon,object:star --methods spare,uce --train-steps 50

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

from synthcanvas import benchmark, demo_model  # noqa: E402


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
    parser.add_argument("--train-steps", type=int, default=defaults.train_steps)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--esd-iterations", type=int, default=defaults.esd_iterations)
    parser.add_argument("--forget-seeds", type=int, default=defaults.forget_seeds,
                        help="images per prompt of the erased concept (other prompts get one)")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "synthcanvas.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "docs" / "results" / "synthcanvas.md")
    parser.add_argument("--grids", type=Path, default=REPO / "docs" / "results" / "synthcanvas",
                        help="folder for the per-concept PNG grids")
    args = parser.parse_args(argv)

    settings = benchmark.Settings(train_steps=args.train_steps, learning_rate=args.learning_rate,
                                  esd_iterations=args.esd_iterations, forget_seeds=args.forget_seeds)
    concepts = benchmark.parse_concepts(args.concepts)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in benchmark.METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(benchmark.METHODS)}")
    only = {}
    if args.esd_concepts != "all":
        only["esd_x"] = {c.label() for c in benchmark.parse_concepts(args.esd_concepts)}
    if args.ablation_concepts != "all":
        for method in ("spare_no_saliency", "spare_uniform_timesteps", "spare_no_retain"):
            only[method] = {c.label() for c in benchmark.parse_concepts(args.ablation_concepts)}

    gpu = torch.cuda.is_available()
    runtime = comfy_runtime.boot(Path(tempfile.mkdtemp(prefix="spare-synthcanvas-")), cpu=not gpu)
    demo_model.build_checkpoint(runtime.folder("checkpoints") / demo_model.CHECKPOINT_NAME)
    started = time.perf_counter()
    machine = (torch.cuda.get_device_name() if gpu else
               f"CPU {platform.machine()}, {torch.get_num_threads()} threads")
    command = "python benchmarks/synthcanvas.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def write(results: dict, final: bool = False) -> str:
        results["spare_on_subsets"] = benchmark.spare_on_subsets(results, only)
        out = {**results["methods"],
               "machine": machine, "date": datetime.date.today().isoformat(), "command": command,
               "complete": final,
               "settings": {**asdict(settings), "surrogate": "first other concept of the same domain, in list order"},
               "base_model": results["base_summary"], "spare_on_subsets": results["spare_on_subsets"],
               "subsets": {m: sorted(labels) for m, labels in only.items()},
               "per_concept": results["per_concept"], "base_per_concept": results["base"],
               "wall_seconds": round(time.perf_counter() - started, 1)}
        table = benchmark.markdown(results)
        for path, text in ((args.json, json.dumps(out, indent=2) + "\n"),
                           (args.markdown, f"Machine: {machine}; date {out['date']}; command `{command}`"
                                           f"{'' if final else ' (partial: still running or stopped early)'}\n\n" + table)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return table

    results = benchmark.run(runtime, demo_model.CHECKPOINT_NAME, concepts, methods, settings, args.grids, only=only,
                            on_progress=write)
    print(write(results, final=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
