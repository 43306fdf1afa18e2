"""Training on a real ComfyUI MODEL: erasure happens, retention holds, the base model is never touched.

One convergence run (the erasure fixture) serves every test that needs a trained adapter; the trainer's mechanics
that need many steps but no real UNet (overshoot, early stop, teacher batching) are in test_training_mechanics.py."""

import dataclasses

import pytest
import torch
from conftest import assert_bit_identical, unet_snapshot

from devkit.erasure import held_out_check, held_out_gap, random_prompts
from spare_core import pipeline
from spare_core.adapter import ErasureAdapter, KeyNames
from spare_core.config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig
from spare_core.lora import adaptable_modules
from spare_core.saliency import compute_saliency
from spare_core.samples import generate_samples
from spare_core.timesteps import select_timesteps
from spare_core.trainer import NonFiniteLossError, recomputed_in_backward, train_adapter

SAMPLES = SampleConfig(samples_per_prompt=4, steps=4, width=64, height=64)
TRAIN_STEPS, LEARNING_RATE = 400, 3e-3
# Half the modules by contrast saliency: on random weights plain SalUn scores put the output conv and skips on top for
# any prompt (docs/architecture.md); these tests are about the trainer and a sparse adapter.
CONTRAST_HALF = SaliencyConfig(module_fraction=0.5, retain_contrast=1.0)


@pytest.fixture(scope="module")
def samples(door, small_sd15):
    """The stages before training on the 64-channel SD1.5 model: concept samples, saliency, timesteps."""
    prompts = random_prompts()
    with door.session.denoiser_session(small_sd15) as denoiser:
        forget = generate_samples(denoiser, prompts.forget, prompts.uncond, SAMPLES, seed=0)
        retain = generate_samples(denoiser, prompts.retain, prompts.uncond, SAMPLES, seed=1)
        saliency = compute_saliency(denoiser, forget, prompts.retain, CONTRAST_HALF, seed=0)
        timesteps = select_timesteps(denoiser, forget, prompts.surrogate, TimestepConfig(), seed=0)
    return prompts, forget, retain, saliency, timesteps


@pytest.fixture(scope="module")
def erasure(door, small_sd15):
    """One full SPARE run (spare_core.pipeline.erase: samples → saliency → timesteps → distillation) on the
    64-channel SD1.5 model, with the stages' settings of the samples fixture above."""
    prompts = random_prompts()
    snapshot = unet_snapshot(small_sd15)
    with door.session.denoiser_session(small_sd15) as denoiser:
        erased = pipeline.erase(denoiser, prompts, SAMPLES,
                                TrainConfig(rank=8, steps=TRAIN_STEPS, learning_rate=LEARNING_RATE, retain_weight=2.0,
                                            overshoot=0.0), seed=0, saliency_config=CONTRAST_HALF)
    return prompts, erased.forget, erased.retain, erased.saliency, erased.result, snapshot


def test_erasure_moves_the_concept_to_the_surrogate_and_keeps_retained_concepts(door, small_sd15, erasure):
    """Held out: noise and timesteps never seen in training (a different generator, uniform over the schedule),
    the erased model through ComfyUI's own LoRA patching."""
    prompts, forget, retain, _, result, _ = erasure
    erased = door.patches.apply_adapter(small_sd15, ErasureAdapter(result.state_dict), 1.0)
    measured = held_out_gap(door, small_sd15, erased, prompts, forget, retain)
    assert measured.remaining_gap <= 0.30, measured
    assert measured.retain_drift <= 0.10, measured


def test_erasure_check_is_measured_before_and_after_and_agrees_with_the_test(door, small_sd15, erasure):
    """The trainer's own figures (its fixed held-out draws, the adapter's hooks): 0 before training by construction,
    then the share of the gap closed that the same measure (ErasureCheck.measure) sees on other draws, through
    ComfyUI's LoRA patching."""
    prompts, forget, retain, _, result, _ = erasure
    first, last = result.checks[0], result.final_check
    assert (first.step, first.gap_closed, first.retain_drift, first.nearer_surrogate,
            first.guided_nearer_surrogate) == (0, 0.0, 0.0, 0.0, 0.0)
    assert last.step == result.steps_done == TRAIN_STEPS and last.concept_gap > 0
    # Most held-out draws of the concept now come out nearer the surrogate than the concept.
    assert last.nearer_surrogate >= 0.75, last
    erased = door.patches.apply_adapter(small_sd15, ErasureAdapter(result.state_dict), 1.0)
    independent = held_out_check(door, small_sd15, erased, prompts, forget, retain, seed=777)
    assert abs(last.gap_closed - independent.gap_closed) <= 0.15, (last, independent)


def test_loss_falls_and_adapter_is_sparse(door, small_sd15, erasure):
    _, _, _, saliency, result, _ = erasure
    assert sum(result.losses[-20:]) / 20 < 0.5 * result.losses[0]
    stems = {key.split(".")[0] for key in result.state_dict}
    names = KeyNames.for_modules(adaptable_modules(small_sd15.model.diffusion_model))
    selected = {names.stem(name) for name in saliency.selected}
    assert stems == selected
    assert len(selected) == round(0.5 * len(saliency.module_scores))


def test_base_model_is_bit_identical_after_training(small_sd15, erasure):
    assert_bit_identical(small_sd15, erasure[-1])


@pytest.mark.compat
def test_row_masked_adapter_has_exact_zero_rows(door, small_sd15):
    prompts = random_prompts(seed=1)
    samples = SampleConfig(samples_per_prompt=1, steps=2, width=64, height=64)
    with door.session.denoiser_session(small_sd15) as denoiser:
        forget = generate_samples(denoiser, prompts.forget, prompts.uncond, samples, seed=0)
        saliency = compute_saliency(denoiser, forget, prompts.retain,
                                    SaliencyConfig(module_fraction=0.25, row_fraction=0.25, draws=1), seed=0)
        timesteps = select_timesteps(denoiser, forget, prompts.surrogate, TimestepConfig(bins=2, draws_per_bin=1), 0)
        result = train_adapter(denoiser, saliency, timesteps, forget, prompts.surrogate, forget,
                               TrainConfig(steps=3, learning_rate=1e-2), seed=0)
    all_modules = set(saliency.module_scores)
    present = {k.split(".")[0] for k in result.state_dict}
    assert len(present) == round(0.25 * len(all_modules))
    names = KeyNames.for_modules(adaptable_modules(small_sd15.model.diffusion_model))
    for name in saliency.selected:
        up = result.state_dict[f"{names.stem(name)}.lora_up.weight"]
        mask = saliency.row_masks[name]
        assert int(mask.sum()) == max(1, round(0.25 * mask.numel()))
        assert torch.count_nonzero(up[~mask]) == 0, name
        assert torch.count_nonzero(up[mask]) > 0, name


@pytest.mark.compat
def test_non_finite_loss_stops_with_the_step_and_leaves_the_model_untouched(door, small_sd15):
    prompts = random_prompts(seed=2)
    snapshot = unet_snapshot(small_sd15)
    samples = SampleConfig(samples_per_prompt=1, steps=2, width=64, height=64)

    poisoned = []  # set once step 2 has finished: from then on the model predicts NaN, as a diverging one would

    def after_step(step, loss, check=None):
        if step == 1:
            poisoned.append(True)

    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3 of 10; the model is unchanged"):
        with door.session.denoiser_session(small_sd15) as denoiser:
            forget = generate_samples(denoiser, prompts.forget, prompts.uncond, samples, seed=0)
            saliency = compute_saliency(denoiser, forget, None, SaliencyConfig(draws=1), seed=0)
            timesteps = select_timesteps(denoiser, forget, prompts.surrogate,
                                         TimestepConfig(bins=2, draws_per_bin=1), 0)

            def predict_noise(x_t, sigma, cond):
                eps = denoiser.predict_noise(x_t, sigma, cond)
                return eps * float("nan") if poisoned else eps

            diverging = dataclasses.replace(denoiser, predict_noise=predict_noise)
            train_adapter(diverging, saliency, timesteps, forget, prompts.surrogate, forget,
                          TrainConfig(steps=10), seed=0, on_step=after_step)
    assert_bit_identical(small_sd15, snapshot)


@pytest.mark.compat
def test_gradient_checkpointing_recomputes_blocks_and_trains_the_same_adapter(door, small_sd15, samples):
    prompts, forget, retain, saliency, timesteps = samples
    snapshot = unet_snapshot(small_sd15)
    with door.session.denoiser_session(small_sd15) as denoiser:
        assert denoiser.blocks, "the ComfyUI session must name the UNet's blocks"
        # The last block lies after the adapted layers, so backward reaches it (blocks before them need none).
        inner = next(m for m in denoiser.blocks[-1].modules() if isinstance(m, torch.nn.Conv2d))
        runs = {}
        for checkpointing in (False, True):
            calls = []
            handle = inner.register_forward_hook(lambda *args, calls=calls: calls.append(1))
            try:
                runs[checkpointing] = train_adapter(
                    denoiser, saliency, timesteps, forget, prompts.surrogate, retain,
                    TrainConfig(steps=3, learning_rate=1e-2, gradient_checkpointing=checkpointing), seed=0)
            finally:
                handle.remove()
            runs[checkpointing, "calls"] = len(calls)
    # Recompute runs the block again in each backward: one extra call per step.
    assert runs[True, "calls"] == runs[False, "calls"] + 3
    assert runs[True].losses == pytest.approx(runs[False].losses, rel=1e-5)
    for key, value in runs[False].state_dict.items():
        torch.testing.assert_close(runs[True].state_dict[key], value, rtol=1e-4, atol=1e-6)
    assert not any(hasattr(block, "__dict__") and "forward" in block.__dict__ for block in denoiser.blocks)
    assert_bit_identical(small_sd15, snapshot)


def test_automatic_teacher_batching_shrinks_with_the_latent_and_stays_off_on_gpus():
    """Batching teacher passes over steps pays only while a pass is overhead-bound; it must never multiply the
    activation memory of a large model's pass (SD1.5 at 512 px: 64×64 latents) or of any GPU pass."""
    from types import SimpleNamespace

    from spare_core.trainer import teacher_steps_per_pass
    cpu, gpu = SimpleNamespace(device=torch.device("cpu")), SimpleNamespace(device=torch.device("cuda"))
    steps = {side: teacher_steps_per_pass(TrainConfig(), cpu, (1, 4, side, side)) for side in (8, 16, 32, 64, 128)}
    assert steps == {8: 8, 16: 8, 32: 2, 64: 1, 128: 1}
    assert teacher_steps_per_pass(TrainConfig(), gpu, (1, 4, 8, 8)) == 1
    assert teacher_steps_per_pass(TrainConfig(teacher_batch_steps=3), gpu, (1, 4, 64, 64)) == 3


def test_checkpointing_puts_back_a_forward_patched_on_the_instance():
    block = torch.nn.Linear(2, 2)
    patched = lambda x: block.__class__.forward(block, x) * 2  # noqa: E731 (what another pack's patch looks like)
    block.forward = patched
    x = torch.ones(1, 2, requires_grad=True)
    with recomputed_in_backward((block,)):
        assert block.forward is not patched
        inside = block(x)
    assert block.forward is patched
    torch.testing.assert_close(inside, patched(x))
