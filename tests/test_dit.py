"""Flux.1 and SD3.5 (DiT, flow matching) on ComfyUI 0.3.x: erasure through the executor, the stock LoRA loaders on
the saved file, Remove, untouched base weights, and the forget gap on held-out draws.

The models are random-weight and tiny, in each family's layout (devkit.model_factory), and the tests skip on the
2024 ComfyUI, which has none of these families:
- SD3.5's MMDiT at depth 2 is a file in models/diffusion_models that the stock UNETLoader detects; its text
  conditioning comes from a CLIP-L-shaped encoder loaded by the stock CLIPLoader as an sd3 text encoder, which pads
  its outputs to SD3's widths (context 4096, pooled 2048), so the Train node encodes real prompts;
- Flux.1-dev's layout is built with ComfyUI's Flux class at width 64 (detection fixes Flux at 3072 wide), with
  CLIP-L-wide text inputs so that the same CLIP-L file, loaded as a plain CLIP, drives it;
- Lumina 2's NextDiT (and Z-Image's variant of it) is built with ComfyUI's class at width 64 (256) with 32-wide
  caption features, driven with conditioning tensors of unpadded, differing lengths as its text encoders give them.
T5-XXL (4.7 B parameters), Gemma 2 2B and Qwen3 4B cannot be built on a CI machine, hence CLIP-L or tensors.
"""

import json

import pytest
import torch
from conftest import assert_bit_identical, unet_snapshot

from devkit import model_factory
from devkit.erasure import held_out_gap, predict
from spare_core import pipeline
from spare_core.adapter import ErasureAdapter, save_adapter
from spare_core.config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig
from spare_core.denoiser import Conditioning, flow_sigmas_as_noise_levels
from spare_core.lora import SparseLoRASet
from spare_core.runner import headless
from spare_core.saliency import every_module
from spare_core.samples import generate_samples, sampling_sigmas
from spare_core.timesteps import select_timesteps
from spare_core.trainer import train_adapter

SD3_FILE = "tiny_sd35.safetensors"
CLIP_L_FILE = "tiny_clip_l.safetensors"
FORGET = "a painting in the style of Van Gogh"
SURROGATE = "a painting"
RETAIN = "a photo of a dog"
SAMPLES = SampleConfig(samples_per_prompt=2, steps=3, width=64, height=64)


if not (headless.comfy_root() / "comfy" / "ldm" / "flux").is_dir():
    pytest.skip("this ComfyUI (2024-03) has no Flux, SD3 or Lumina 2 models; the DiT tests run on ComfyUI 0.3.x",
                allow_module_level=True)


@pytest.fixture(scope="module")
def dit_comfy(comfy):
    model_factory.build_sd3_diffusion_model(comfy.folder("diffusion_models") / SD3_FILE, seed=0)
    model_factory.build_clip_l(comfy.folder("text_encoders") / CLIP_L_FILE, seed=3)
    return comfy


@pytest.fixture(scope="module")
def sd3(dit_comfy):
    """(MODEL, CLIP) from the stock UNETLoader and CLIPLoader (type sd3), loaded as the executor loads them."""
    with torch.inference_mode():
        model = dit_comfy.node("UNETLoader").load_unet(SD3_FILE, "default")[0]
        clip = dit_comfy.node("CLIPLoader").load_clip(CLIP_L_FILE, "sd3")[0]
    return model, clip


@pytest.fixture(scope="module")
def flux(dit_comfy):
    with torch.inference_mode():
        clip = dit_comfy.node("CLIPLoader").load_clip(CLIP_L_FILE, "stable_diffusion")[0]
    return model_factory.small_flux_model(seed=0), clip


@pytest.fixture(scope="module")
def lumina2(dit_comfy):
    return model_factory.small_lumina2_model(seed=0), None


@pytest.fixture(scope="module")
def z_image(dit_comfy):
    return model_factory.small_lumina2_model(seed=0, z_image=True), None


@pytest.fixture(scope="module", params=["sd3", "flux", "lumina2", "z_image"])
def family(request):
    """(name, (MODEL, CLIP or None)): Lumina 2 and Z-Image are driven with tensors only (see the module doc)."""
    return request.param, request.getfixturevalue(request.param)


# Lumina 2's text encoders do not pad: each prompt has its own length, and the rows are batched zero-padded.
UNPADDED_LENGTHS = (7, 5, 9, 1)


def random_prompts(door, model, seed: int) -> pipeline.EncodedPrompts:
    """Four unrelated prompts as text-encoder-scale tensors, made into the model's inputs by ComfyUI's own
    extra_conds (pooled vector, Flux's guidance, Lumina 2's token count)."""
    generator = torch.Generator().manual_seed(seed)
    context_width, pooled_width = door.models.text_widths(model)
    unpadded = door.models.model_family(model) == "lumina2"

    def one(length):
        context = torch.randn(1, length if unpadded else 77, context_width, generator=generator)
        pooled = None if pooled_width is None else torch.randn(1, pooled_width, generator=generator)
        return door.models.conditioning_from_tensors(model, context, pooled, width=64, height=64)
    return pipeline.EncodedPrompts(*(one(length) for length in UNPADDED_LENGTHS))


def test_families_are_recognised_with_their_flow_schedules_and_inputs(door, family):
    name, (model, clip) = family
    assert door.models.model_family(model) == ("lumina2" if name == "z_image" else name)
    assert door.models.native_resolution(model) == 1024
    width, pooled = door.models.text_widths(model)
    if clip is not None:
        cond = door.models.encode_prompts(model, clip, [FORGET, RETAIN], 64, 64, "forget_prompts")
        assert cond.context.shape == (2, 77, width) and cond.extra["y"].shape == (2, pooled)
    if name == "flux":
        assert cond.extra["guidance"].tolist() == [3.5, 3.5], "Flux-dev's default guidance from extra_conds"
        assert door.models.sample_guidance_scale(model) == 1.0
    with door.session.denoiser_session(model) as denoiser:
        levels = denoiser.sigmas
        assert torch.isfinite(levels).all() and bool((levels[1:] >= levels[:-1]).all())
        assert levels[-1] > 1000, "the flow schedule's pure-noise end is a very large noise level"
        assert denoiser.blocks, "gradient checkpointing knows this family's transformer blocks"


@pytest.mark.parametrize("name", ["lumina2", "z_image"])
def test_prompts_of_different_lengths_batch_as_if_each_ran_alone(door, request, name):
    model, _ = request.getfixturevalue(name)
    prompts = random_prompts(door, model, seed=4)
    both = Conditioning.cat([prompts.forget, prompts.uncond])
    assert both.context.shape[1] == UNPADDED_LENGTHS[0] and both.extra["num_tokens"].tolist() == [7, 1]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 8, 8, generator=generator)
    with door.session.denoiser_session(model) as denoiser, torch.no_grad():
        sigma = denoiser.sigmas[torch.tensor([100, 900])]
        together = denoiser.predict_noise(x, sigma, both)
        alone = torch.cat([denoiser.predict_noise(x[:1], sigma[:1], prompts.forget),
                           denoiser.predict_noise(x[1:], sigma[1:], prompts.uncond)])
    assert together.abs().mean() > 0.1
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)


def test_flow_noise_levels_are_the_same_process_as_comfyuis_noise_scaling(door, sd3):
    """x_0 + sigma * eps, scaled by 1 / (1 + sigma), is what ComfyUI's own model_sampling feeds the model."""
    model, _ = sd3
    sampling = door.models.model_sampling(model)
    with door.session.denoiser_session(model) as denoiser:
        index = torch.tensor([5, 300, 900])
        sigma = denoiser.sigmas[index].view(-1, 1, 1, 1)
        generator = torch.Generator().manual_seed(0)
        x0, noise = torch.randn(3, 16, 8, 8, generator=generator), torch.randn(3, 16, 8, 8, generator=generator)
        ours = (x0 + sigma * noise) / (1 + sigma)
        comfys = sampling.noise_scaling(sampling.sigmas[index], noise, x0)
        torch.testing.assert_close(ours, comfys, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "cfg"), [("sd3", 1.0), ("sd3", 4.0), ("flux", 1.0)])
def test_self_generated_samples_are_comfyuis_euler_sampler_on_the_flow_schedule(door, request, name, cfg):
    """Euler steps in noise space are Euler steps of the flow ODE (the two parameterisations give the same
    iterates), so the concept samples are what ComfyUI's own euler sampler draws at the same sigmas."""
    import comfy.sample
    import comfy.samplers
    model, clip = request.getfixturevalue(name)
    config = SampleConfig(samples_per_prompt=1, steps=4, width=64, height=64, cfg=cfg)
    forget = door.models.encode_prompts(model, clip, [FORGET], 64, 64, "forget_prompts")
    empty = door.models.encode_prompts(model, clip, [""], 64, 64, "the empty prompt")
    with door.session.denoiser_session(model) as denoiser:
        ours = generate_samples(denoiser, forget, empty, config, seed=0).latents
        levels = sampling_sigmas(denoiser, config.steps)
    flow_sigmas = levels / (1 + levels)
    noise = torch.randn(ours.shape, generator=torch.Generator().manual_seed(0))  # the draw generate_samples makes
    with torch.inference_mode():
        positive = dit_comfy_encode(clip, FORGET)
        negative = dit_comfy_encode(clip, "")
        empty_latent = model.model.process_latent_out(torch.zeros_like(noise))  # zero in the model's own space
        def comfyui_draws(sampler_name):
            drawn = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object(sampler_name),
                                               flow_sigmas, positive, negative, empty_latent, disable_pbar=True, seed=0)
            return model.model.process_latent_in(drawn.float())
        theirs, second_order = comfyui_draws("euler"), comfyui_draws("dpmpp_2m")
    assert ours.abs().mean() > 0.1
    # float32 rounding in noise space at the top level (sigma about 3000 for SD3, 31600 for Flux) leaves
    # differences of a few 1e-3 at most; another sampler at the same sigmas lands far further away.
    torch.testing.assert_close(ours, theirs, atol=5e-3, rtol=0)
    assert (ours - second_order).abs().max() > 10 * (ours - theirs).abs().max()


def dit_comfy_encode(clip, text):
    """CONDITIONING as the stock CLIPTextEncode node makes it."""
    import nodes
    return nodes.CLIPTextEncode().encode(clip, text)[0]


@pytest.fixture(scope="module")
def trained(door, family):
    """A full SPARE run (samples → saliency → timesteps → distillation) through the core on each family."""
    model = family[1][0]
    name = door.models.model_family(model)
    prompts = random_prompts(door, model, seed=1)
    snapshot = unet_snapshot(model)
    with door.session.denoiser_session(model) as denoiser:
        erasure = pipeline.erase(denoiser, prompts, SAMPLES,
                                 TrainConfig(rank=8, steps=150, learning_rate=3e-3, retain_weight=2.0, overshoot=0.0),
                                 seed=0, saliency_config=SaliencyConfig(draws=2),
                                 timestep_config=TimestepConfig(bins=4, draws_per_bin=2))
    return name, model, prompts, erasure.forget, erasure.retain, snapshot, erasure.result


def test_base_weights_are_bit_identical_after_training(trained):
    _, model, _, _, _, snapshot, result = trained
    assert result.steps_done == 150
    assert_bit_identical(model, snapshot)


def test_erasure_closes_the_forget_gap_and_keeps_retained_prompts(door, trained):
    name, model, prompts, forget, retain, _, result = trained
    erased = door.patches.apply_adapter(model, ErasureAdapter(result.state_dict, {"base_model": name}), 1.0)
    measured = held_out_gap(door, model, erased, prompts, forget, retain)
    assert measured.remaining_gap <= 0.30, f"{name}: {measured}"
    assert measured.retain_drift <= 0.10, f"{name}: {measured}"


def test_training_forward_equals_the_stock_lora_loader_on_the_saved_file(dit_comfy, door, trained):
    name, model, prompts, forget, _, _, result = trained
    adapter = ErasureAdapter(result.state_dict, {"base_model": name})
    file_name = f"dit_equivalence_{name}.safetensors"
    save_adapter(adapter, dit_comfy.folder("loras") / file_name, overwrite=True)
    stock = dit_comfy.node("LoraLoaderModelOnly").load_lora_model_only(model, file_name, 1.0)[0]

    generator = torch.Generator().manual_seed(7)
    latents = forget.latents[:2]
    noise = torch.randn(latents.shape, generator=generator)
    indices = torch.tensor([100, 900])
    cond = prompts.forget.select(torch.zeros(2, dtype=torch.long))
    hooks = SparseLoRASet.from_kohya_state_dict(model.model.diffusion_model, adapter.tensors)
    with door.session.denoiser_session(model) as denoiser, torch.no_grad(), hooks.attached(denoiser.unet):
        sigma = denoiser.sigmas[indices]
        training_forward = denoiser.predict_noise(latents + sigma.view(-1, 1, 1, 1) * noise, sigma, cond)
    base = predict(door, model, latents, noise, indices, prompts.forget)
    via_stock = predict(door, stock, latents, noise, indices, prompts.forget)
    assert (training_forward - base).abs().max() > 1e-3, "the adapter must change the output for this test to mean " \
                                                         "anything"
    torch.testing.assert_close(via_stock, training_forward, atol=1e-4, rtol=1e-4)


def test_sd35_erasure_through_the_executor_then_stock_loader_apply_and_remove(dit_comfy):
    sampler = {"seed": 1, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
               "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0]}
    loaders = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": SD3_FILE, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_L_FILE, "type": "sd3"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": FORGET, "clip": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    train = {
        **loaders,
        "6": {"class_type": "SpareTrainAdapter", "inputs": {
            "model": ["1", 0], "clip": ["2", 0], "forget_prompts": FORGET, "surrogate_prompt": SURROGATE,
            "retain_prompts": RETAIN, "rank": 4, "alpha": 4.0, "steps": 3, "learning_rate": 1e-2,
            "retain_weight": 1.0, "batch_size": 1, "samples": 1, "resolution": 64, "seed": 0}},
        "7": {"class_type": "SpareSaveAdapter", "inputs": {"adapter": ["6", 0], "file_name": "sd35_erasure",
                                                            "overwrite": False}},
    }
    run = dit_comfy.run_prompt(train)
    assert run.success, run.error
    from safetensors import safe_open
    with safe_open(str(dit_comfy.folder("loras") / "sd35_erasure.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["base_model"] == "sd3" and metadata["steps"] == "3"
    assert json.loads(metadata["forget_prompts"]) == [FORGET]

    use = {
        **loaders,
        "6": {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["1", 0], "lora_name": "sd35_erasure.safetensors", "strength_model": 1.0}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["6", 0], **sampler}},
        "8": {"class_type": "SpareLoadAdapter", "inputs": {"adapter_name": "sd35_erasure.safetensors"}},
        "9": {"class_type": "SpareApplyErasure", "inputs": {"model": ["1", 0], "adapter": ["8", 0], "strength": 1.0}},
        "10": {"class_type": "KSampler", "inputs": {"model": ["9", 0], **sampler}},
        "11": {"class_type": "KSampler", "inputs": {"model": ["1", 0], **sampler}},
        "12": {"class_type": "SpareRemoveErasure", "inputs": {"model": ["9", 0], "adapter": ["8", 0]}},
        "13": {"class_type": "KSampler", "inputs": {"model": ["12", 0], **sampler}},
        **{f"save_{n}": {"class_type": "SaveLatent", "inputs": {"samples": [n, 0], "filename_prefix": f"sd35/{n}"}}
           for n in ("7", "10", "11", "13")},
    }
    run = dit_comfy.run_prompt(use)
    assert run.success, run.error
    latent = {node: run.outputs[node][0][0]["samples"] for node in ("7", "10", "11", "13")}
    assert latent["11"].shape[1] == 16, "SD3's 16-channel latent"
    torch.testing.assert_close(latent["7"], latent["10"], atol=1e-4, rtol=0)  # stock loader == Apply Erasure
    assert not torch.equal(latent["10"], latent["11"])                        # the erasure changes the output
    assert torch.equal(latent["13"], latent["11"])                            # Remove restores the base exactly


def test_apply_then_remove_gives_back_bit_identical_predictions(door, trained):
    name, model, prompts, forget, _, _, result = trained
    adapter = ErasureAdapter(result.state_dict, {"base_model": name})
    applied = door.patches.apply_adapter(model, adapter, 1.0)
    removed = door.patches.remove_adapter(applied, adapter)
    noise = torch.randn(forget.latents.shape, generator=torch.Generator().manual_seed(3))
    indices = torch.tensor([200, 800])[:len(noise)]
    base = predict(door, model, forget.latents, noise, indices, prompts.forget)
    assert not torch.equal(predict(door, applied, forget.latents, noise, indices, prompts.forget), base)
    assert torch.equal(predict(door, removed, forget.latents, noise, indices, prompts.forget), base)


@pytest.mark.parametrize("family", ["flux"], indirect=True)
def test_a_flux_adapter_on_sdxl_is_refused_with_the_count_of_unmatched_modules(dit_comfy, door, trained, small_sdxl):
    result = trained[-1]
    adapter = ErasureAdapter(result.state_dict, {"base_model": "flux"})
    count = len(adapter.module_stems)
    with pytest.raises(ValueError, match=rf"{count} of {count} modules match neither .* made for flux, this model "
                                         rf"is sdxl"):
        dit_comfy.node("SpareApplyErasure").apply(small_sdxl, adapter, 1.0)


def test_a_text_encoder_of_the_wrong_family_is_refused_naming_the_one_needed(door, flux, sd3):
    flux_model, plain_clip_l = flux
    _, sd3_clip = sd3
    with pytest.raises(ValueError, match=r"4096-wide text features, but this flux model takes 768: connect the flux "
                                         r"text encoders, CLIP-L \+ T5-XXL"):
        door.models.encode_prompts(flux_model, sd3_clip, [FORGET], 64, 64, "forget_prompts")
    with pytest.raises(ValueError, match="clip input is empty"):
        door.models.encode_prompts(flux_model, None, [FORGET], 64, 64, "forget_prompts")


def test_flux_fill_style_inpainting_models_are_refused_naming_what_is_supported(door, dit_comfy):
    fill = model_factory.small_flux_model(seed=0, in_channels=96)  # Flux Fill: latent + masked image + mask
    with pytest.raises(ValueError, match=r"inpainting or concat-conditioned Flux model \(96 input channels for 16 "
                                         r"latent channels\); SPARE can train .*Flux.1"):
        door.models.model_family(fill)


def test_a_video_model_is_refused_through_the_train_node_naming_what_is_supported(dit_comfy):
    video = model_factory.small_wan21_model(seed=0)
    with pytest.raises(ValueError, match=r"model input is a WAN21 \(WAN21_T2V\); SPARE can train SD1.x, .*Flux.1 "
                                         r"\(dev, schnell\), SD3 / SD3.5 and Lumina 2 / Z-Image"):
        dit_comfy.node("SpareTrainAdapter").train(video, None, FORGET, SURROGATE, RETAIN, 4, 4.0, 1, 1e-3, 1.0, 1,
                                                  samples=1, resolution=64, seed=0)


def test_a_shift_patched_on_the_model_moves_the_schedule_the_core_sees(door, sd3):
    """ModelSamplingSD3 / ModelSamplingFlux put a shifted model_sampling on the MODEL as an object patch; the
    session trains on that schedule, not on the checkpoint's."""
    model, _ = sd3
    sampling = door.models.model_sampling(model)
    shifted = type(sampling)(model.model.model_config)
    shifted.set_parameters(shift=6.0)
    patched = model.clone()
    patched.add_object_patch("model_sampling", shifted)
    with door.session.denoiser_session(model) as denoiser:
        checkpoint_levels = denoiser.sigmas
    with door.session.denoiser_session(patched) as denoiser:
        patched_levels = denoiser.sigmas
    assert not torch.equal(checkpoint_levels, patched_levels)
    torch.testing.assert_close(patched_levels, flow_sigmas_as_noise_levels(shifted.sigmas))


def test_gradient_checkpointing_trains_the_same_adapter_on_dit_blocks(door, trained):
    name, model, prompts, forget, retain, _, _ = trained
    with door.session.denoiser_session(model) as denoiser:
        saliency = every_module(denoiser.unet)
        timesteps = select_timesteps(denoiser, forget, prompts.surrogate, TimestepConfig(bins=4, draws_per_bin=1), 0)
        runs = {checkpointing: train_adapter(denoiser, saliency, timesteps, forget, prompts.surrogate, retain,
                                             TrainConfig(steps=3, learning_rate=1e-2,
                                                         gradient_checkpointing=checkpointing), seed=0)
                for checkpointing in (False, True)}
    assert runs[True].losses == pytest.approx(runs[False].losses, rel=1e-5), name
    for key, value in runs[False].state_dict.items():
        torch.testing.assert_close(runs[True].state_dict[key], value, rtol=1e-4, atol=1e-5)
