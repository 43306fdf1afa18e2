"""Trains the SynthCanvas demo model: TAESD on the renders, then the compact SD1 UNet on their latents.

Seeded end to end (renders, initialisation, batches, caption dropout). A GPU run is not bit-reproducible
(cuDNN picks kernels), but the same seed gives a model of the same quality. Needs a booted ComfyUI: the UNet is
built through ComfyUI's own checkpoint detection, and captions and images are encoded by the CLIP and VAE that
ComfyUI loads from an assembled checkpoint, so training sees exactly what CheckpointLoaderSimple later gives users.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import demo_model
from .render import OBJECTS, STYLES, TRAIN_TEMPLATES, caption, render
from .render import SIZE as RESOLUTION

log = logging.getLogger("spare.synthcanvas")
SD1_LATENT_SCALE = 0.18215  # SD1.x latent format: ComfyUI multiplies VAE latents by this before the UNet
# Weights-file metadata: how the file was trained, stage by stage, so a file made over several runs
# (--reuse-vae, --init-unet) still says where each part came from.
STAGES, VAE_STAGES, UNET_STAGES = "spare.stages", "spare.vae_stages", "spare.unet_stages"


@dataclass
class TrainingPlan:
    """Defaults sized for 2 CPU cores (about an hour); a GPU can afford more steps and larger batches."""
    seeds: int = 200               # renders per (object, style) pair
    vae_steps: int = 1200
    vae_batch: int = 32
    vae_crop: int = 32             # TAESD is fully convolutional: 32 px crops cost a quarter of whole images
    vae_lr: float = 2e-3
    decoder_steps: int = 600       # then the decoder alone (encoder frozen: the latent space stays as it is)
    decoder_crop: int = 32
    unet_steps: int = 2000
    unet_batch: int = 48
    unet_lr: float = 1e-3
    caption_dropout: float = 0.1   # empty-prompt rows, so classifier-free guidance works
    ema: float = 0.998
    seed: int = 0
    workers: int = 2
    max_minutes: float = 0.0       # stop the UNet early after this long (0: never); the report says where it stopped


def _render_chunk(seeds: range) -> np.ndarray:
    return np.stack([render(obj, style, seed) for seed in seeds for obj in OBJECTS for style in STYLES])


def render_dataset(seeds: int, workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images (seeds × 64, 64, 64, 3) with object and style indices; order: seed, object, style."""
    chunks = [range(start, min(start + 25, seeds)) for start in range(0, seeds, 25)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            images = np.concatenate(list(pool.map(_render_chunk, chunks)))
    else:
        images = np.concatenate([_render_chunk(chunk) for chunk in chunks])
    pairs = len(OBJECTS) * len(STYLES)
    index = np.arange(seeds * pairs) % pairs
    return images, index // len(STYLES), index % len(STYLES)


_INITIALISED_LAYERS = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.GroupNorm, torch.nn.LayerNorm)


def _initialise(module: torch.nn.Module) -> None:
    # ComfyUI's layers override reset_parameters to skip init (it loads weights anyway); call torch's own.
    for layer in module.modules():
        for kind in _INITIALISED_LAYERS:
            if isinstance(layer, kind):
                kind.reset_parameters(layer)
                break


def _as_float(images: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255


def _random_crops(images: np.ndarray, batch: int, crop: int, generator, device) -> torch.Tensor:
    """``batch`` random images, one shared random ``crop``-pixel window, channels-last floats in [0, 1]. Windows
    start on the 8-pixel latent grid, so each crop encodes exactly as it does inside the whole image."""
    index = torch.randint(0, len(images), (batch,), generator=generator)
    top, left = (8 * int(v) for v in torch.randint(0, (RESOLUTION - crop) // 8 + 1, (2,), generator=generator))
    window = images[index.numpy(), top:top + crop, left:left + crop]
    return _as_float(window, device).contiguous(memory_format=torch.channels_last)


def _optimise(stage: str, steps: int, optimizer, schedule, loss_on_a_batch, report) -> None:
    """The autoencoder stages' loop: one optimiser step per fresh batch, a log line every 100 steps."""
    started = time.perf_counter()
    for step in range(steps):
        loss = loss_on_a_batch()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            report(f"{stage} step {step + 1}/{steps}: loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)")


def train_vae(images: np.ndarray, plan: TrainingPlan, device, report=log.info):
    """TAESD (ComfyUI's class) as a plain autoencoder on [0, 1] images. Noise on the latents during training
    keeps the decoder forgiving of the small errors a sampler leaves; a light penalty keeps latents inside the
    decoder's input clamp."""
    import comfy.taesd.taesd
    torch.manual_seed(plan.seed)
    vae = comfy.taesd.taesd.TAESD()
    _initialise(vae)
    vae.to(device).train()
    params = list(vae.taesd_encoder.parameters()) + list(vae.taesd_decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=plan.vae_lr, weight_decay=0.0)
    schedule = _warmup_cosine(optimizer, plan.vae_steps, warmup=min(200, plan.vae_steps // 10 + 1))
    generator = torch.Generator().manual_seed(plan.seed + 1)
    vae.to(memory_format=torch.channels_last)
    started = time.perf_counter()

    def loss_on_a_batch():
        x = _random_crops(images, plan.vae_batch, plan.vae_crop, generator, device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            latents = vae.taesd_encoder(x)
            noisy = latents + 0.1 * torch.randn_like(latents)
            decoded = vae.taesd_decoder(noisy).float()
        return F.mse_loss(decoded, x) + 0.5 * F.l1_loss(decoded, x) + 1e-4 * latents.float().square().mean()

    _optimise("vae", plan.vae_steps, optimizer, schedule, loss_on_a_batch, report)
    vae.eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        sample = _as_float(images[: 4096], device)
        std = float(torch.cat([vae.taesd_encoder(sample[i:i + 512]) for i in range(0, len(sample), 512)]).std())
        # ComfyUI's UNet input = encoder output / vae_scale × 0.18215; choose vae_scale for unit variance.
        vae.vae_scale.fill_(std * SD1_LATENT_SCALE)
    return vae, time.perf_counter() - started


def finetune_decoder(vae, images: np.ndarray, plan: TrainingPlan, device, report=log.info) -> float:
    """More training for the decoder only, on larger crops. The encoder (and so every latent the UNet learns
    from) is untouched, so this stage is independent of UNet training and can run before or after it."""
    if plan.decoder_steps <= 0:
        return 0.0
    vae.train().to(memory_format=torch.channels_last)
    vae.taesd_encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW(vae.taesd_decoder.parameters(), lr=plan.vae_lr / 2, weight_decay=0.0)
    schedule = _warmup_cosine(optimizer, plan.decoder_steps, warmup=min(100, plan.decoder_steps // 10 + 1), floor=0.02)
    generator = torch.Generator().manual_seed(plan.seed + 5)
    started = time.perf_counter()

    def loss_on_a_batch():
        x = _random_crops(images, plan.vae_batch, plan.decoder_crop, generator, device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            with torch.no_grad():
                latents = vae.taesd_encoder(x)
            noisy = latents + 0.1 * torch.randn(latents.shape, generator=generator).to(latents)
            decoded = vae.taesd_decoder(noisy).float()
        return F.mse_loss(decoded, x) + 0.5 * F.l1_loss(decoded, x)

    _optimise("decoder", plan.decoder_steps, optimizer, schedule, loss_on_a_batch, report)
    vae.taesd_encoder.requires_grad_(True)
    vae.eval().to(memory_format=torch.contiguous_format)
    return time.perf_counter() - started


def _warmup_cosine(optimizer, steps: int, warmup: int, floor: float = 0.1):
    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def initial_unet_state(seed: int) -> dict[str, torch.Tensor]:
    """A freshly initialised UNet in UNET_CONFIG, keys prefixed as in a checkpoint."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    torch.manual_seed(seed)
    config = {k: v for k, v in demo_model.UNET_CONFIG.items()
              if k in openaimodel.UNetModel.__init__.__code__.co_varnames}
    unet = openaimodel.UNetModel(**config, operations=comfy.ops.disable_weight_init)
    _initialise(unet)
    torch.nn.init.zeros_(unet.out[-1].weight)
    torch.nn.init.zeros_(unet.out[-1].bias)
    return {demo_model.UNET_PREFIX + k: v.detach() for k, v in unet.state_dict().items()}


def load_through_comfy(state: dict[str, torch.Tensor], folder: Path):
    """Write ``state`` as a checkpoint and load it with ComfyUI's own loader: (MODEL, CLIP, VAE)."""
    import comfy.sd
    path = demo_model.write_atomically(state, folder / "synthcanvas_training.safetensors")
    with torch.no_grad():  # as under ComfyUI's executor: the loaders fill parameters in place
        loaded = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True,
                                                       embedding_directory=None)
    model, clip, vae = loaded[:3]
    config_name = type(model.model.model_config).__name__
    if config_name != "SpareCompactSD1":
        raise RuntimeError(f"ComfyUI detected the demo UNet as {config_name}, expected SpareCompactSD1")
    return model, clip, vae


def encode_captions(clip, captions: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([clip.encode_from_tokens(clip.tokenize(text)).float().cpu() for text in captions])


def encode_images(vae, model, images: np.ndarray) -> torch.Tensor:
    """Latents as the UNet sees them: ComfyUI's VAE encode, then the model's latent format."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 1024):
            pixels = torch.from_numpy(images[start:start + 1024]).float() / 255
            out.append(model.model.latent_format.process_in(vae.encode(pixels).float().cpu()))
    return torch.cat(out)


def train_unet(model, latents: torch.Tensor, caption_index: torch.Tensor, contexts: torch.Tensor,
               plan: TrainingPlan, device, report=log.info):
    """eps-prediction on SD1.5's schedule, as ComfyUI samples it: x = latent + sigma·noise, UNet input
    x / sqrt(sigma² + 1) at timestep t(sigma). Returns the EMA copy of the UNet, in float32."""
    torch.manual_seed(plan.seed + 2)
    base = model.model
    unet = copy.deepcopy(base.diffusion_model).float().to(device).train()
    from spare_core import comfyui as door
    door.session.guard_in_place_residuals(unet)  # ComfyUI adds residuals in place; training needs backward
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    sigmas = base.model_sampling.sigmas.float().to(device)
    latents, caption_index, contexts = latents.to(device), caption_index.to(device), contexts.to(device)
    empty = contexts[-1:]  # the last context is the empty prompt
    optimizer = torch.optim.AdamW(unet.parameters(), lr=plan.unet_lr, weight_decay=0.01)
    schedule = _warmup_cosine(optimizer, plan.unet_steps, warmup=min(500, plan.unet_steps // 10 + 1))
    generator = torch.Generator(device=device).manual_seed(plan.seed + 3)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    ema_params, unet_params = list(ema.parameters()), list(unet.parameters())
    started = time.perf_counter()
    with _plain_attention() if device.type == "cpu" else contextlib.nullcontext():
        for step in range(plan.unet_steps):
            index = torch.randint(0, len(latents), (plan.unet_batch,), generator=generator, device=device)
            x0 = latents[index]
            context = contexts[caption_index[index]]
            dropped = torch.rand(plan.unet_batch, generator=generator, device=device) < plan.caption_dropout
            context = torch.where(dropped[:, None, None], empty, context)
            t = torch.randint(0, len(sigmas), (plan.unet_batch,), generator=generator, device=device)
            sigma = sigmas[t][:, None, None, None]
            noise = torch.randn(x0.shape, generator=generator, device=device)
            with autocast:
                predicted = unet((x0 + sigma * noise) / (sigma.square() + 1).sqrt(), t.float(), context=context)
            loss = F.mse_loss(predicted.float(), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                decay = min(plan.ema, (step + 1) / (step + 10))
                torch._foreach_lerp_(ema_params, unet_params, 1 - decay)
            elapsed = time.perf_counter() - started
            out_of_time = plan.max_minutes > 0 and elapsed > plan.max_minutes * 60
            if step % 250 == 0 or step == plan.unet_steps - 1 or out_of_time:
                report(f"unet step {step + 1}/{plan.unet_steps}: loss {loss.item():.4f} ({elapsed:.0f} s)")
            if out_of_time:
                report(f"unet: stopped after {step + 1} steps (--max-minutes {plan.max_minutes})")
                break
    return ema, step + 1, time.perf_counter() - started


def _attention_by_matmul(q, k, v, heads, mask=None, **_):
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    weights = (q @ k.transpose(-1, -2)) * d ** -0.5
    return (weights.softmax(-1) @ v).transpose(1, 2).reshape(b, n, inner)


@contextlib.contextmanager
def _plain_attention():
    """On a CPU, ComfyUI picks chunked (sub-quadratic) or fused attention, whose backward passes are slow at
    these sizes (64 queries × 77 keys, head width 8); plain matmuls train the same function 2× faster."""
    import comfy.ldm.modules.attention as attention
    chosen = attention.optimized_attention
    attention.optimized_attention = _attention_by_matmul
    try:
        yield
    finally:
        attention.optimized_attention = chosen


def training_captions() -> tuple[list[str], dict[tuple[int, int], list[int]]]:
    """Every (object, style) under each training template, then the empty prompt last."""
    captions, by_pair = [], {}
    for o, obj in enumerate(OBJECTS):
        for s, style in enumerate(STYLES):
            by_pair[(o, s)] = []
            for template in TRAIN_TEMPLATES:
                by_pair[(o, s)].append(len(captions))
                captions.append(caption(obj, style, template))
    captions.append("")
    return captions, by_pair


def reconstruction_accuracy(vae, device, seeds: range = range(2_000_000, 2_000_008)) -> dict:
    """The shipped classifier on TAESD round trips of held-out renders: what the VAE alone keeps."""
    from .classifier import accuracy_on, render_set
    images, objects, styles = render_set(seeds)
    with torch.no_grad():
        decoded = vae.taesd_decoder(vae.taesd_encoder(images.to(device))).clamp(0, 1).float().cpu()
    return accuracy_on(decoded, objects, styles)


def load_vae(path: Path, device):
    """A TAESD from an earlier run's vae.safetensors, or the VAE part of a demo-model weights file."""
    import comfy.taesd.taesd
    from safetensors.torch import load_file
    state = load_file(str(path))
    if any(k.startswith(demo_model.VAE_PREFIX) for k in state):
        state = {k[len(demo_model.VAE_PREFIX):]: v.float() for k, v in state.items()
                 if k.startswith(demo_model.VAE_PREFIX)}
    vae = comfy.taesd.taesd.TAESD()
    missing, unexpected = vae.load_state_dict(state, strict=False)
    # Newer ComfyUI's TAESD adds a vae_shift parameter; files written by the 2024 one lack it (its default is
    # the no-shift the weights were trained with). Anything else missing or extra is a wrong file.
    if unexpected or set(missing) - {"vae_shift"}:
        raise ValueError(f"reuse_vae: {path} is not a TAESD for this ComfyUI (missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)})")
    return vae.to(device).eval()


def vae_history(plan: TrainingPlan, reused: str | None = None, decoder: bool = True) -> str:
    """What the VAE went through: the history ``reused`` from an earlier file, or this plan's train_vae; then this
    plan's decoder stage, if it has one."""
    history = reused or f"vae: train_vae {plan.vae_steps} steps (batch {plan.vae_batch}, {plan.vae_crop} px crops, " \
                        f"lr {plan.vae_lr:g})"
    if decoder and plan.decoder_steps > 0:
        history += f", then finetune_decoder {plan.decoder_steps} steps ({plan.decoder_crop} px crops)"
    return history


def unet_history(plan: TrainingPlan, steps_done: int, earlier: str | None = None) -> str:
    """What the UNet went through: the steps really done (max_minutes may stop a run early, in the middle of a
    schedule laid out for the planned steps), after the ``earlier`` history when training continued a file."""
    stage = f"train_unet {steps_done} steps (batch {plan.unet_batch}, lr {plan.unet_lr:g})"
    if steps_done < plan.unet_steps:
        stage += f" of {plan.unet_steps} planned, stopped by --max-minutes {plan.max_minutes:g}"
    if earlier is None:
        return f"unet: {stage} from a fresh initialisation"
    return f"{earlier}; then {stage} from those weights (--init-unet)"


def history_metadata(vae_stages: str, unet_stages: str) -> dict[str, str]:
    return {VAE_STAGES: vae_stages, UNET_STAGES: unet_stages, STAGES: f"{vae_stages}; {unet_stages}"}


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as opened:
        return opened.metadata() or {}


def earlier_unet(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The UNet tensors (checkpoint keys, as stored) and metadata of a demo-model weights file."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as earlier:
        metadata = earlier.metadata() or {}
        unet = {k: earlier.get_tensor(k) for k in earlier.keys() if k.startswith(demo_model.UNET_PREFIX)}
    if not unet:
        raise ValueError(f"init_unet: {path} holds no UNet tensors (keys starting {demo_model.UNET_PREFIX!r})")
    return unet, metadata


def train(plan: TrainingPlan, work: Path, device, report=log.info, reuse_vae: Path | None = None,
          reuse_unet: Path | None = None, init_unet: Path | None = None) -> dict:
    """``reuse_vae`` (an earlier run's vae.safetensors, or a demo-model weights file) skips VAE training,
    ``reuse_unet`` (an earlier run's demo_model.safetensors) skips UNet training, ``init_unet`` (the same kind of
    file) starts the UNet from those weights and trains ``plan.unet_steps`` more, with a fresh warmup-cosine cycle;
    the decoder stage runs either way when decoder_steps > 0.
    Writes demo_model.safetensors (UNet + VAE, as shipped) to ``work`` and returns timings; the caller decides
    whether to copy it over the shipped file."""
    work.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    timings = {}
    started = time.perf_counter()
    images, objects, styles = render_dataset(plan.seeds, plan.workers)
    timings["render_s"] = round(time.perf_counter() - started, 1)
    report(f"rendered {len(images)} images in {timings['render_s']} s")

    if reuse_vae:
        vae, timings["vae_s"] = load_vae(reuse_vae, device), 0.0
        earlier_vae = _metadata(reuse_vae).get(VAE_STAGES, f"vae: reused from {reuse_vae.name}")
        vae_stages = vae_history(plan, reused=earlier_vae)
        report(f"vae: reused {reuse_vae}")
    else:
        vae, timings["vae_s"] = train_vae(images, plan, device, report)
        # vae.safetensors is written before the decoder stage, so its history stops at train_vae.
        demo_model.write_atomically({k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()},
                                    work / "vae.safetensors", metadata={VAE_STAGES: vae_history(plan, decoder=False)})
        vae_stages = vae_history(plan)
    timings["decoder_s"] = round(finetune_decoder(vae, images, plan, device, report), 1)
    timings["vae_reconstruction_accuracy"] = reconstruction_accuracy(vae, device)
    report(f"vae: classifier on reconstructions {timings['vae_reconstruction_accuracy']}")
    if reuse_unet:
        return _with_reused_unet(vae, vae_stages, reuse_unet, work, plan, timings, report)
    vae_state = {demo_model.VAE_PREFIX + k: v.detach().cpu() for k, v in vae.state_dict().items()}
    if init_unet:
        unet_state, earlier = earlier_unet(init_unet)
        earlier_stages = earlier.get(UNET_STAGES) or earlier.get(STAGES, "earlier weights")
        report(f"unet: starting from {init_unet} ({len(unet_state)} tensors)")
    else:
        unet_state, earlier_stages = initial_unet_state(plan.seed), None
    initial = {**unet_state, **vae_state}

    started = time.perf_counter()
    model, clip, comfy_vae = load_through_comfy(demo_model.assemble(initial), work)
    captions, by_pair = training_captions()
    contexts = encode_captions(clip, captions)
    # Training and every later use must tokenise alike (tokenizer versions differ between machines): the report
    # carries a fingerprint of the token ids to compare against.
    tokens = json.dumps([clip.tokenize(text) for text in captions], default=str, sort_keys=True)
    timings["caption_tokens_sha256"] = hashlib.sha256(tokens.encode()).hexdigest()[:16]
    latents = encode_images(comfy_vae, model, images)
    timings["encode_s"] = round(time.perf_counter() - started, 1)
    report(f"latents {tuple(latents.shape)} std {latents.std():.3f}; contexts {tuple(contexts.shape)}")

    # Each image gets one of its pair's training captions at random per step: precompute per-image choices
    # for every template by repeating the image list once per template.
    templates = len(TRAIN_TEMPLATES)
    pair_rows = torch.tensor([by_pair[(int(o), int(s))]
                              for o, s in zip(objects, styles, strict=True)])  # (N, templates)
    latents = latents.repeat(templates, 1, 1, 1)
    caption_index = pair_rows.T.reshape(-1)

    unet, timings["unet_steps_done"], timings["unet_s"] = train_unet(model, latents, caption_index, contexts, plan,
                                                                     device, report)
    unet_stages = unet_history(plan, timings["unet_steps_done"], earlier_stages)
    weights = demo_model.unet_vae_state(unet, vae)
    text_encoder = demo_model.fingerprint(demo_model.text_encoder_state())
    path = demo_model.write_atomically(weights, work / "demo_model.safetensors",
                                       metadata={"spare.training_plan": json.dumps(asdict(plan)),
                                                 **history_metadata(vae_stages, unet_stages),
                                                 "spare.text_encoder_sha256": text_encoder,
                                                 "spare.caption_tokens_sha256": timings["caption_tokens_sha256"]})
    timings["weights_mb"] = round(path.stat().st_size / 1e6, 2)
    return {"weights": str(path), "timings": timings, "plan": asdict(plan)}


def _with_reused_unet(vae, vae_stages: str, reuse_unet: Path, work: Path, plan: TrainingPlan, timings: dict,
                      report) -> dict:
    unet, metadata = earlier_unet(reuse_unet)
    unet_stages = metadata.get(UNET_STAGES) or \
        f"unet: reused from {reuse_unet.name} ({metadata.get(STAGES, 'no record')})"
    report(f"unet: reused {reuse_unet} ({len(unet)} tensors)")
    vae_part = {k: v for k, v in demo_model.unet_vae_state(torch.nn.Module(), vae).items()
                if k.startswith(demo_model.VAE_PREFIX)}
    metadata = {**metadata, **history_metadata(vae_stages, unet_stages),
                "spare.training_plan": json.dumps(asdict(plan)),
                "spare.text_encoder_sha256": demo_model.fingerprint(demo_model.text_encoder_state())}
    path = demo_model.write_atomically({**unet, **vae_part}, work / "demo_model.safetensors", metadata=metadata)
    timings["weights_mb"] = round(path.stat().st_size / 1e6, 2)
    return {"weights": str(path), "timings": timings, "plan": asdict(plan)}
