"""Runs the pack's main job: the example style-erasure workflow through ComfyUI's own executor.

Until the built-in demo model exists, it runs on the SD1.5-shaped test checkpoint with random weights
(built here from a seed), shrunk to CPU size: the graph, the training and the files are real, the images
are noise. Writes the before / after images, the charts and the adapter under --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

import comfy_runtime  # noqa: E402
import model_factory  # noqa: E402

WORKFLOW = REPO / "example_workflows" / "api" / "erase_style.json"
CHECKPOINT = "tiny_sd15.safetensors"


def shrink_for_cpu(prompt: dict, train_steps: int) -> dict:
    """The same graph at the test model's size: 64 px, one sample per prompt, few sampler steps."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = CHECKPOINT
        if "resolution" in inputs:
            inputs.update(resolution=64, samples=1)
        if node["class_type"] == "SpareTrainAdapter":
            inputs.update(steps=train_steps, learning_rate=1e-3)
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        if node["class_type"] == "KSampler":
            inputs["steps"] = 4
    return prompt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo", help="folder for images and the adapter")
    parser.add_argument("--train-steps", type=int, default=30, help="SPARE training steps")
    args = parser.parse_args()

    work = args.out.resolve() / "comfyui"
    runtime = comfy_runtime.boot(work)
    if not (runtime.folder("checkpoints") / CHECKPOINT).exists():
        model_factory.build_sd15_checkpoint(runtime.folder("checkpoints") / CHECKPOINT, seed=0)
    prompt = shrink_for_cpu(json.loads(WORKFLOW.read_text()), args.train_steps)
    adapter = runtime.folder("loras") / "spare_erase_van_gogh.safetensors"
    if adapter.exists():
        adapter.unlink()  # the demo's own output from an earlier run; the workflow itself never overwrites

    started = time.perf_counter()
    run = runtime.run_prompt(prompt)
    seconds = time.perf_counter() - started
    if not run.success:
        print(f"workflow failed: {run.error}", file=sys.stderr)
        return 1
    for image in sorted(runtime.folder("output").glob("spare_*.png")):
        shutil.copy2(image, args.out / image.name)
    shutil.copy2(adapter, args.out / adapter.name)
    losses = run.outputs["6"][0][0].info("final_loss")
    print(f"workflow ran in {seconds:.1f} s on the CPU; final loss {losses:.5f}")
    print(f"adapter: {args.out / adapter.name} ({adapter.stat().st_size / 1e6:.2f} MB)")
    print(f"images:  {', '.join(sorted(p.name for p in args.out.glob('spare_*.png')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
