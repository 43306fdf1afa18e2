"""Flux.1, SD3.5, Lumina 2 and Z-Image at reduced size on a CPU: time per stage of one erasure beside SD1.5's,
and which of a DiT's layers to adapt (every Linear, or all but the input embedders and the final layer), measured.

    python benchmarks/dit_cpu.py --json docs/results/dit_cpu.json

The models are random-weight, in each family's layout (devkit.model_factory: SD3.5 MMDiT at depth 2, width 128;
Flux.1-dev at width 64; Lumina 2 at width 64 and Z-Image at 256, with 32-wide caption features; SD1.5 at 64
channels) and are driven with random prompt tensors made into each model's inputs by ComfyUI's own extra_conds.
Needs ComfyUI 0.3.x (COMFYUI_PATH). A benchmark, not a test: no figure here is asserted anywhere.

The layer comparison is a dev split of its own: model and prompt seeds 0, 1 and 2, the held-out measure of
tests/test_dit.py (noise and timesteps never seen in training): the distance left to the training target (the
surrogate overshot by the default 1.0), as a share of the distance at the start, and the retain drift; beside
them the trainer's own final erasure check (share of the gap closed, retain drift, on its fixed held-out draws).
It says what adapting the embedders does on random-weight models; a real checkpoint may differ, which
docs/benchmarks.md says beside the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

from devkit import model_factory
from spare_core.runner import headless

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)

# The layers that take the model's inputs in (latent patches, timestep, pooled text, guidance, text context) and
# the final projection back to the latent, by top-level module name.
INPUT_AND_FINAL_LAYERS = {
    "flux": ("img_in", "time_in", "vector_in", "guidance_in", "txt_in", "final_layer"),
    "sd3": ("x_embedder", "t_embedder", "y_embedder", "context_embedder", "final_layer"),
    "lumina2": ("x_embedder", "t_embedder", "cap_embedder", "final_layer"),
    "z_image": ("x_embedder", "t_embedder", "cap_embedder", "final_layer"),
}
# Lumina 2's text encoders do not pad: prompts of different lengths, as they give them.
UNPADDED_LENGTHS = (7, 5, 9, 1)


def build(family: str, seed: int, comfy):
    if family == "flux":
        return model_factory.small_flux_model(seed=seed)
    if family == "sd1":
        return model_factory.small_sd15_model(seed=seed)
    if family in ("lumina2", "z_image"):
        return model_factory.small_lumina2_model(seed=seed, z_image=family == "z_image")
    path = model_factory.build_sd3_diffusion_model(comfy.folder("diffusion_models") / f"dit_cpu_sd3_{seed}.safetensors",
                                                   seed=seed)
    with torch.inference_mode():
        return comfy.node("UNETLoader").load_unet(path.name, "default")[0]


def prompts_for(door, model, seed: int):
    from spare_core.denoiser import Conditioning
    from spare_core.pipeline import EncodedPrompts
    generator = torch.Generator().manual_seed(seed)
    context_width, pooled_width = door.models.text_widths(model)

    family = door.models.model_family(model)

    def one(length):
        context = torch.randn(1, length if family == "lumina2" else 77, context_width, generator=generator)
        if family == "sd1":
            return Conditioning(context)
        pooled = None if pooled_width is None else torch.randn(1, pooled_width, generator=generator)
        return door.models.conditioning_from_tensors(model, context, pooled, width=64, height=64)
    return EncodedPrompts(*(one(length) for length in UNPADDED_LENGTHS))


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.model.diffusion_model.parameters())


def one_erasure(door, model, prompts, steps: int, seed: int, keep=None) -> dict:
    """spare_core.pipeline.erase at the pack's defaults (module fraction 1, so saliency is skipped as the Train
    node skips it), timed per stage; ``keep`` filters the adapted modules."""
    from spare_core import pipeline
    from spare_core.config import SampleConfig, TrainConfig
    from spare_core.saliency import SaliencyMap, every_module
    samples = SampleConfig(width=64, height=64, cfg=door.models.sample_guidance_scale(model))
    with door.session.denoiser_session(model) as denoiser:
        names = tuple(n for n in every_module(denoiser.unet).selected if keep is None or keep(n))
        saliency = SaliencyMap({n: 1.0 for n in names}, names, {n: None for n in names}, 1.0, 1.0)
        erasure = pipeline.erase(denoiser, prompts, samples, TrainConfig(steps=steps), seed, saliency=saliency)
    return {"seconds": erasure.seconds, "result": erasure.result, "forget": erasure.forget, "retain": erasure.retain,
            "modules": len(names)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps (the Train node's default)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    comfy = headless.boot(Path(tempfile.mkdtemp(prefix="spare-dit-cpu-")))
    import comfy.model_base as model_base
    if not hasattr(model_base, "Flux"):
        print("this ComfyUI has no Flux or SD3 models: set COMFYUI_PATH to a ComfyUI 0.3.x", file=sys.stderr)
        return 2
    from devkit.erasure import held_out_gap
    from spare_core import comfyui as door
    from spare_core.adapter import ErasureAdapter
    from spare_core.config import TrainConfig

    figures = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
                          f"Python {platform.python_version()}, CPU only",
               "date": datetime.date.today().isoformat(),
               "command": "python benchmarks/dit_cpu.py " + " ".join(sys.argv[1:]),
               "steps": args.steps, "speed": {}, "layers": {}}

    print(f"{'family':<6} {'params':>9} {'samples s':>10} {'timesteps s':>12} {'training s':>11} {'steps/s':>8}")
    for family in ("sd1", "sd3", "flux", "lumina2", "z_image"):
        model = build(family, 0, comfy)
        run = one_erasure(door, model, prompts_for(door, model, 0), args.steps, seed=0)
        row = {"parameters": parameter_count(model), "adapted_modules": run["modules"],
               **{f"{k}_s": round(v, 2) for k, v in run["seconds"].items()},
               "steps_per_s": round(args.steps / run["seconds"]["training"], 1)}
        figures["speed"][family] = row
        print(f"{family:<6} {row['parameters']:>9} {row['samples_s']:>10} {row['timesteps_s']:>12} "
              f"{row['training_s']:>11} {row['steps_per_s']:>8}")

    variants = {"every Linear": lambda groups: None,
                "without input embedders and final layer": lambda groups: (lambda n: n.split(".")[0] not in groups)}
    print(f"\n{'family':<6} {'seed':>4} {'layers':<42} {'modules':>7} {'gap left':>9} {'retain drift':>13} "
          f"{'check:closed':>8} {'drift':>8} {'MB':>6}")
    for family in ("sd3", "flux", "lumina2", "z_image"):
        figures["layers"][family] = {}
        for variant, keep_for in variants.items():
            rows = []
            for seed in SEEDS:
                model = build(family, seed, comfy)
                prompts = prompts_for(door, model, seed)
                run = one_erasure(door, model, prompts, args.steps, seed, keep_for(INPUT_AND_FINAL_LAYERS[family]))
                adapter = ErasureAdapter(run["result"].state_dict, {"base_model": family})
                erased = door.patches.apply_adapter(model, adapter, 1.0)
                measured = held_out_gap(door, model, erased, prompts, run["forget"], run["retain"],
                                        overshoot=TrainConfig().overshoot)
                check = run["result"].final_check
                size_mb = sum(t.numel() * t.element_size() for t in adapter.tensors.values()) / 2 ** 20
                rows.append({"seed": seed, "modules": run["modules"], **dataclasses.asdict(measured),
                             "check_gap_closed": check.gap_closed, "check_retain_drift": check.retain_drift,
                             "adapter_mb": round(size_mb, 3)})
                print(f"{family:<6} {seed:>4} {variant:<42} {run['modules']:>7} {measured.remaining_gap:>9.4f} "
                      f"{measured.retain_drift:>13.4f} {check.gap_closed:>8.4f} {check.retain_drift:>8.4f} "
                      f"{size_mb:>6.2f}")
            mean = {k: round(sum(r[k] for r in rows) / len(rows), 4)
                    for k in ("remaining_gap", "retain_drift", "check_gap_closed", "check_retain_drift")}
            figures["layers"][family][variant] = {"seeds": rows, "mean": mean}
            print(f"{family:<6} mean {variant:<42} {'':>7} {mean['remaining_gap']:>9.4f} {mean['retain_drift']:>13.4f} "
                  f"{mean['check_gap_closed']:>8.4f} {mean['check_retain_drift']:>8.4f}")
            if args.json:  # written as each variant finishes, so a stopped run still leaves figures
                args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
