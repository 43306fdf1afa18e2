"""What each speed / memory lever buys: SPARE training steps with one lever changed at a time, everything else
at its default, on the full-size SD1.5 and SDXL architectures on a GPU (reduced ones on a CPU).

    python benchmarks/speed_levers.py --json docs/results/speed_levers.json

For each setting: seconds per training step (steady state, after warm-up steps) and peak memory of the training
session. The default setting is measured first and again last, so the spread between the two says how much of a
difference is noise. A benchmark, not a test: no figure here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import speed  # benchmarks/speed.py: model building, conditioning, timing helpers
import torch

from spare_core.runner import headless

# ---------------------------------------------------------------- the levers, each a change for one session

@contextlib.contextmanager
def replaced(owner, **values):
    """Set attributes of a module or class for the duration of one lever's session, then put them back."""
    saved = {name: getattr(owner, name) for name in values}
    for name, value in values.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(owner, name, value)


def plain_attention(denoiser):
    """Off: ComfyUI's attention_basic (softmax(QKᵀ)V materialised) instead of the fused kernel it picked."""
    import comfy.ldm.modules.attention as attention
    names = [name for name in ("optimized_attention", "optimized_attention_masked") if hasattr(attention, name)]
    return replaced(attention, **{name: attention.attention_basic for name in names})


@contextlib.contextmanager
def channels_last(denoiser):
    """On: UNet weights (and so its activations) in channels-last memory format."""
    denoiser.unet.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        denoiser.unet.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def compiled_unet(denoiser):
    """On: torch.compile on the UNet's forward (compile time is reported apart, as the warm-up steps)."""
    unet = denoiser.unet
    unet.forward = torch.compile(unet.forward)
    try:
        yield
    finally:
        del unet.forward


def adamw_foreach(denoiser):
    """Off: AdamW's multi-tensor (foreach) kernels, PyTorch's default and SPARE's before, instead of fused."""
    adamw = torch.optim.AdamW

    def unfused(params, **kwargs):
        return adamw(params, **dict(kwargs, fused=False, foreach=True))
    return replaced(torch.optim, AdamW=unfused)


# The levers that can be changed from outside the pack: a TrainConfig field, ComfyUI's attention, the UNet's
# memory layout or compilation, the optimizer's kernels. The ones measured by changing the pack's own internals
# (weights kept twice, unbatched or autograd teacher passes, backward to the input, adapter updates in float32)
# were retired with those internals; their figures stay in docs/benchmarks.md with the commit that measured them.
# name: (what changes, context manager, TrainConfig changes)
SESSION_LEVERS = {
    "default": ("everything at its default", contextlib.nullcontext),
    "plain_attention": ("attention_basic instead of the fused attention ComfyUI picked", plain_attention),
    "gradient_checkpointing": ("TrainConfig.gradient_checkpointing: every ResBlock / SpatialTransformer recomputed",
                               contextlib.nullcontext, {"gradient_checkpointing": True}),
    "channels_last": ("UNet in channels-last memory format", channels_last),
    "torch_compile": ("torch.compile on the UNet forward", compiled_unet),
    "adamw_foreach": ("AdamW's foreach kernels (PyTorch's default, SPARE's before) instead of fused",
                      adamw_foreach),
}


def profile_steps(door, model, cond, prepared, settings, rows: int = 30) -> str:
    """torch.profiler over a few default training steps: where the step's time goes, by kernel."""
    from torch.profiler import ProfilerActivity, profile

    from spare_core.config import TrainConfig
    from spare_core.trainer import train_adapter
    forget, retain, saliency, timesteps = prepared
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with door.session.denoiser_session(model) as denoiser:
        config = TrainConfig(steps=2, batch_size=settings.batch_size)
        train_adapter(denoiser, saliency, timesteps, forget, cond["surrogate"], retain, config, seed=0)
        with profile(activities=activities) as prof:
            train_adapter(denoiser, saliency, timesteps, forget, cond["surrogate"], retain, config, seed=0)
            speed.synchronize()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)


# ---------------------------------------------------------------- measuring

def prepare(door, model, cond, settings):
    """Samples, saliency and timesteps once per model, with everything at its default."""
    from spare_core.config import SaliencyConfig, TimestepConfig
    from spare_core.saliency import compute_saliency
    from spare_core.samples import generate_samples
    from spare_core.timesteps import select_timesteps
    with door.session.denoiser_session(model) as denoiser:
        forget = generate_samples(denoiser, cond["forget"], cond["uncond"], settings.samples, seed=0)
        retain = generate_samples(denoiser, cond["retain"], cond["uncond"], settings.samples, seed=1)
        saliency = compute_saliency(denoiser, forget, cond["retain"], SaliencyConfig(), seed=0)
        timesteps = select_timesteps(denoiser, forget, cond["surrogate"], TimestepConfig(), seed=0)
    return forget, retain, saliency, timesteps


def training_steps(door, model, cond, prepared, settings, lever: str) -> dict:
    from spare_core.config import TrainConfig
    from spare_core.trainer import train_adapter
    _, change, *config_changes = SESSION_LEVERS[lever]
    forget, retain, saliency, timesteps = prepared
    config = TrainConfig(steps=settings.warmup + settings.steps, batch_size=settings.batch_size,
                         **(config_changes[0] if config_changes else {}))
    stamps = []

    def stamp(step, loss, check=None):
        speed.synchronize()
        stamps.append(time.perf_counter())
    speed.reset_memory()
    start = time.perf_counter()
    with door.session.denoiser_session(model) as denoiser, change(denoiser):
        train_adapter(denoiser, saliency, timesteps, forget, cond["surrogate"], retain, config, seed=0, on_step=stamp)
    warm = stamps[settings.warmup - 1]
    return {"seconds_per_step": round((stamps[-1] - warm) / settings.steps, 4),
            "warmup_seconds": round(warm - start, 2), **speed.peak_memory_gb()}


def sampling_seconds(door, model, cond, settings, steps: int) -> dict:
    from spare_core.config import SampleConfig
    from spare_core.samples import generate_samples
    config = SampleConfig(samples_per_prompt=settings.samples.samples_per_prompt, steps=steps,
                          width=settings.samples.width, height=settings.samples.height)
    stages: dict = {}
    with door.session.denoiser_session(model) as denoiser, speed.timed(stages, "samples"):
        generate_samples(denoiser, cond["forget"], cond["uncond"], config, seed=0)
        generate_samples(denoiser, cond["retain"], cond["uncond"], config, seed=1)
    return {"seconds": stages["samples"], "sampling_steps": steps}


def main(argv=None) -> int:
    from spare_core.config import SampleConfig
    parser = argparse.ArgumentParser(description="SPARE speed levers, one at a time")
    parser.add_argument("--size", choices=["full", "reduced"], default=None)
    parser.add_argument("--models", default="sd15,sdxl")
    parser.add_argument("--levers", default=",".join(lever for lever in SESSION_LEVERS if lever != "torch_compile"),
                        help="comma-separated, from: " + ", ".join(SESSION_LEVERS))
    parser.add_argument("--compile-models", default="", help="models on which torch_compile is also measured")
    parser.add_argument("--profile-models", default="", help="models whose default step is profiled by kernel")
    parser.add_argument("--dtypes", default="fp32,bf16", help="model dtypes measured besides the default")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per setting (default 20 GPU, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="steps before timing (default 5 GPU, 1 CPU)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=None,
                        help="pixels (default: the model's own on a GPU, 64 on CPU)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    gpu = torch.cuda.is_available()
    size = args.size or ("full" if gpu else "reduced")
    default_dtype = torch.float16 if gpu else torch.float32
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    runtime = headless.boot(Path(tempfile.mkdtemp(prefix="spare-levers-")), cpu=not gpu)
    import comfy.ldm.modules.attention as attention

    from spare_core import comfyui as door

    results = {"device": speed.device_name(), "date": datetime.date.today().isoformat(), "size": size,
               "default_dtype": str(default_dtype).replace("torch.", ""), "comfyui": speed.comfyui_label(runtime),
               "attention": attention.optimized_attention.__name__,
               "command": "python benchmarks/speed_levers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "levers": {name: SESSION_LEVERS[name][0] for name in SESSION_LEVERS}}

    def save():
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    for family in args.models.split(","):
        resolution = args.resolution or (speed.FAMILIES[family][4] if size == "full" else 64)
        settings = argparse.Namespace(
            steps=args.steps or (20 if gpu else 3), warmup=args.warmup or (5 if gpu else 1), batch_size=args.batch_size,
            samples=SampleConfig(samples_per_prompt=2, steps=8, width=resolution, height=resolution))
        rows = results[family] = {"resolution": resolution}

        def record(name, row, rows=rows, family=family):
            rows[name] = row
            print(f"{family} {name}: {json.dumps(row)}", flush=True)
            save()

        model = speed.build_model(family, size, default_dtype)
        cond = speed.conditionings(door, model, family, resolution)
        prepared = prepare(door, model, cond, settings)
        if family in args.profile_models.split(","):
            print(profile_steps(door, model, cond, prepared, settings), flush=True)
        levers = args.levers.split(",")
        for lever in levers:
            record(lever, training_steps(door, model, cond, prepared, settings, lever))
        record("default_again", training_steps(door, model, cond, prepared, settings, "default"))
        for steps in (8, 50):
            record(f"samples_{steps}_steps", sampling_seconds(door, model, cond, settings, steps))
        if family in args.compile_models.split(","):
            try:
                record("torch_compile", training_steps(door, model, cond, prepared, settings, "torch_compile"))
            except Exception as error:  # a compiler failure is a finding to report, not a reason to lose the rest
                record("torch_compile", {"error": f"{type(error).__name__}: {str(error)[:300]}"})
        prepared = model = None
        runtime.unload_models()
        for name in filter(None, args.dtypes.split(",")):
            model = speed.build_model(family, size, dtypes[name])
            prepared = prepare(door, model, cond, settings)
            record(f"dtype_{name}", training_steps(door, model, cond, prepared, settings, "default"))
            prepared = model = None
            runtime.unload_models()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
