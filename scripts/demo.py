"""Runs the pack's main job on the built-in SynthCanvas demo model: the example workflow
example_workflows/api/synthcanvas_erase_style.json (erase the "neon" style) through ComfyUI's own executor, then
judges the result with the shipped classifier.

Writes to --out: the workflow's images and charts, the adapter, a before / after grid and metrics.json
(UA / IRA / CRA / paraphrase UA, as in benchmarks/unlearncanvas.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from benchmarks import unlearncanvas
from spare_core.runner import headless
from synthcanvas import demo_model
from synthcanvas.generation import generate

REPO = Path(__file__).resolve().parents[1]

WORKFLOW = REPO / "example_workflows" / "api" / "synthcanvas_erase_style.json"
CONCEPT = unlearncanvas.Concept("style", "neon")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo", help="folder for images, adapter, metrics")
    parser.add_argument("--train-steps", type=int, default=None, help="override the workflow's training steps")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    runtime = headless.boot(out / "comfyui")
    checkpoint = demo_model.build_checkpoint(runtime.folder("checkpoints") / demo_model.CHECKPOINT_NAME)
    prompt = json.loads(WORKFLOW.read_text())
    if args.train_steps:
        prompt["6"]["inputs"]["steps"] = args.train_steps

    from spare_core.comfyui import progress  # imports ComfyUI: only after the boot
    progress.terminal_progress_bars(prompt)
    print(f"running the workflow: the Train node's bar counts sample generation, timestep selection and "
          f"{prompt['6']['inputs']['steps']} training steps; then the KSamplers draw before / after", flush=True)
    started = time.perf_counter()
    run = runtime.run_prompt(prompt)
    seconds = time.perf_counter() - started
    if not run.success:
        print(f"workflow failed: {run.error}", file=sys.stderr)
        return 1
    adapter = runtime.folder("loras") / run.ui["7"]["text"][0]  # the Save node adds a counter: say which file
    for image in sorted(runtime.folder("output").glob("spare_*.png")):
        shutil.copy2(image, out / image.name)
    shutil.copy2(adapter, out / adapter.name)
    print(f"workflow ran in {seconds:.1f} s on the CPU (checkpoint {checkpoint.name}); "
          f"adapter {adapter.stat().st_size / 1e6:.2f} MB")

    # Judge it: the base and the erased MODEL straight from the executor's outputs, the same evaluation set as
    # the benchmark, generated through the stock KSampler.
    base, clip, vae = (run.outputs["1"][slot][0] for slot in range(3))  # outputs[node][slot] holds a list
    erased = run.outputs["6"][1][0]
    settings = unlearncanvas.Settings()
    evals = unlearncanvas.eval_set(CONCEPT, settings.forget_seeds, settings.paraphrase_seeds)
    scores = {}
    for name, model in (("before", base), ("after", erased)):
        images = generate(runtime.nodes, model, clip, vae, evals.prompts, unlearncanvas.EVAL_SEED, settings.sampler)
        scores[name] = unlearncanvas.score(CONCEPT, evals, images)
    rows = unlearncanvas.grid_rows(CONCEPT)
    tiles = [[unlearncanvas._uint8(b), unlearncanvas._uint8(a)] for b, a in zip(
        generate(runtime.nodes, base, clip, vae, rows, unlearncanvas.EVAL_SEED, settings.sampler),
        generate(runtime.nodes, erased, clip, vae, rows, unlearncanvas.EVAL_SEED, settings.sampler), strict=True)]
    grid = unlearncanvas.grid(rows, ["before", "after"], tiles, out / "synthcanvas_erase_neon_grid.png")
    metrics = {"concept": CONCEPT.label(), "workflow_seconds": round(seconds, 1), **scores,
               "definitions": "UA: share of 'neon' images not classified neon; IRA: style accuracy on the other "
                              "styles; CRA: object accuracy on images not prompted with neon; paraphrase UA: UA "
                              "on held-out prompt templates"}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for name in ("before", "after"):
        s = scores[name]
        print(f"{name:6s}  UA {s['UA']:.3f}  IRA {s['IRA']:.3f}  CRA {s['CRA']:.3f}  "
              f"paraphrase UA {s['paraphrase_UA']:.3f}")
    print(f"grid:    {grid}\nmetrics: {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
