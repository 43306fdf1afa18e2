"""Train the SynthCanvas demo model (TAESD VAE + compact SD1 UNet) from seeded renders, then check it: the shipped
classifier must recognise what the stock KSampler generates from held-out seeds.

    python scripts/train_synthcanvas.py                      # full recipe (minutes on a GPU)
    python scripts/train_synthcanvas.py --install
        # ... and replace synthcanvas/weights/demo_model.safetensors
    python scripts/train_synthcanvas.py --unet-steps 20 --vae-steps 20 --seeds 4   # a quick check of the code path
    python scripts/train_synthcanvas.py --reuse-vae W --decoder-steps 0 --init-unet W --unet-steps 3000
        # W = synthcanvas/weights/demo_model.safetensors: keep its VAE, train its UNet 3000 more steps

Prints progress and a JSON report (timings, device, generation accuracy); --report writes it to a file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import torch

from spare_core.runner import headless
from synthcanvas import demo_model, evaluation, training

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    plan_defaults = training.TrainingPlan()
    for field in fields(training.TrainingPlan):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(getattr(plan_defaults, field.name)),
                            default=getattr(plan_defaults, field.name))
    parser.add_argument("--work", type=Path, default=None, help="folder for intermediate files (default: a temp dir)")
    parser.add_argument("--reuse-vae", type=Path,
                        help="skip VAE training: a vae.safetensors from an earlier run's --work, or a "
                             "demo_model.safetensors (then add --decoder-steps 0 to keep that VAE as it is)")
    parser.add_argument("--reuse-unet", type=Path,
                        help="skip UNet training: a demo_model.safetensors from an earlier run's --work")
    parser.add_argument("--init-unet", type=Path,
                        help="continue UNet training from a demo_model.safetensors (e.g. the shipped one) for "
                             "--unet-steps more steps")
    parser.add_argument("--install", action="store_true", help="copy the trained weights over the shipped file")
    parser.add_argument("--report", type=Path, help="write the JSON report here")
    parser.add_argument("--eval-seeds", type=int, default=4, help="held-out sampler seeds per (object, style)")
    parser.add_argument("--eval-cfg", default="4", help="comma-separated CFG scales to evaluate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    plan = training.TrainingPlan(**{f.name: getattr(args, f.name) for f in fields(training.TrainingPlan)})
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    work = (args.work or Path(tempfile.mkdtemp(prefix="synthcanvas-train-"))).resolve()
    runtime = headless.boot(work / "comfyui", cpu=not gpu)

    started = time.perf_counter()
    result = training.train(plan, work, device, report=print, reuse_vae=args.reuse_vae,
                            reuse_unet=args.reuse_unet, init_unet=args.init_unet)
    result["timings"]["total_s"] = round(time.perf_counter() - started, 1)

    checkpoint = demo_model.build_checkpoint(runtime.folder("checkpoints") / demo_model.CHECKPOINT_NAME,
                                             overwrite=True, weights=Path(result["weights"]))
    accuracy = evaluation.accuracy_report(runtime, checkpoint.name, args.eval_seeds,
                                          [float(c) for c in args.eval_cfg.split(",")])
    result.update(device=torch.cuda.get_device_name() if gpu else f"CPU ({platform.machine()}, "
                  f"{torch.get_num_threads()} threads)", date=datetime.date.today().isoformat(),
                  command="python scripts/train_synthcanvas.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  generation_accuracy=accuracy)
    for row in accuracy:
        print(f"cfg {row['sampler']['cfg']} '{row['template']}': object {row['object']:.3f} style {row['style']:.3f}")
    if args.install:
        shutil.copyfile(result["weights"], demo_model.WEIGHTS)
        result["installed"] = str(demo_model.WEIGHTS.relative_to(REPO))
    text = json.dumps(result, indent=2)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
