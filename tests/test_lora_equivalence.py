"""The trained forward, Apply Erasure LoRA and the stock LoraLoader on the saved file compute the same model;
Apply then Remove gives back exactly the model before, upstream LoRAs included."""

import pytest
import torch
from safetensors.torch import save_file

from devkit.erasure import predict, random_prompts
from spare_core.adapter import ErasureAdapter, KeyNames, kohya_name, load_adapter, save_adapter
from spare_core.config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig
from spare_core.lora import SparseLoRASet, adaptable_modules
from spare_core.saliency import compute_saliency
from spare_core.samples import generate_samples
from spare_core.timesteps import select_timesteps
from spare_core.trainer import train_adapter

# Crosses the ComfyUI door where versions differ: LoRA patches: Apply / Remove and the stock loaders on the saved file.
pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def trained(door, sd15):
    """A few training steps on the SD1.5-shaped checkpoint from the stock loader, with a large learning rate so
    the adapter is far from a no-op."""
    model = sd15[0]
    prompts = random_prompts(seed=5)
    samples = SampleConfig(samples_per_prompt=1, steps=2, width=64, height=64)
    with door.session.denoiser_session(model) as denoiser:
        forget = generate_samples(denoiser, prompts.forget, prompts.uncond, samples, seed=0)
        saliency = compute_saliency(denoiser, forget, prompts.retain, SaliencyConfig(draws=1, row_fraction=0.5), 0)
        timesteps = select_timesteps(denoiser, forget, prompts.surrogate, TimestepConfig(bins=2, draws_per_bin=1), 0)
        result = train_adapter(denoiser, saliency, timesteps, forget, prompts.surrogate, forget,
                               TrainConfig(steps=4, learning_rate=5e-2), seed=0)
    return prompts, forget, ErasureAdapter(result.state_dict, {"base_model": "sd1"})


def probe(forget, seed=7):
    generator = torch.Generator().manual_seed(seed)
    latents = forget.latents.repeat(2, 1, 1, 1)
    return latents, torch.randn(latents.shape, generator=generator), torch.tensor([150, 700])


def test_training_forward_apply_node_and_stock_loader_agree(comfy, door, sd15, trained):
    model, clip, _ = sd15
    prompts, forget, adapter = trained
    latents, noise, indices = probe(forget)

    hooks = SparseLoRASet.from_kohya_state_dict(model.model.diffusion_model, adapter.tensors)
    with door.session.denoiser_session(model) as denoiser, torch.no_grad(), hooks.attached(denoiser.unet):
        sigma = denoiser.sigmas[indices]
        training_forward = denoiser.predict_noise(latents + sigma.view(-1, 1, 1, 1) * noise, sigma,
                                                  prompts.forget.select(torch.zeros(2, dtype=torch.long)))

    applied = comfy.node("SpareApplyErasure").apply(model, adapter, 1.0)["result"][0]
    save_adapter(adapter, comfy.folder("loras") / "equivalence.safetensors", overwrite=True)
    stock, _ = comfy.node("LoraLoader").load_lora(model, clip, "equivalence.safetensors", 1.0, 0.0)

    base = predict(door, model, latents, noise, indices, prompts.forget)
    via_apply = predict(door, applied, latents, noise, indices, prompts.forget)
    via_stock = predict(door, stock, latents, noise, indices, prompts.forget)
    assert (training_forward - base).abs().max() > 1e-2, \
        "the adapter must change the output for this test to mean anything"
    torch.testing.assert_close(via_apply, training_forward, atol=1e-4, rtol=0)
    torch.testing.assert_close(via_stock, training_forward, atol=1e-4, rtol=0)


def test_strength_scales_the_weight_update_and_zero_returns_the_input(comfy, door, sd15, trained):
    model = sd15[0]
    _, _, adapter = trained
    node = comfy.node("SpareApplyErasure")

    def apply(model, adapter, strength):
        output = node.apply(model, adapter, strength)
        assert output["ui"]["spare_adapter"][0]["base_model"] == "sd1"
        return output["result"]

    assert apply(model, adapter, 0.0)[0] is model
    path = next(iter(SparseLoRASet.from_kohya_state_dict(model.model.diffusion_model, adapter.tensors).paths))

    def weight(patched):
        with door.session.denoiser_session(patched) as denoiser:
            return denoiser.unet.get_submodule(path).weight.detach().clone()

    base = weight(model)
    full = weight(apply(model, adapter, 1.0)[0]) - base
    assert full.abs().max() > 0
    for strength in (0.5, 2.0, -1.0):
        torch.testing.assert_close(weight(apply(model, adapter, strength)[0]) - base, strength * full,
                                   atol=1e-6, rtol=1e-4)


def upstream_lora(model, seed=11) -> dict[str, torch.Tensor]:
    """An unrelated rank-2 LoRA on every attention output projection, as a user's style LoRA would be."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for path, module in adaptable_modules(model.model.diffusion_model).items():
        if path.endswith("to_out.0"):
            out_features, in_features = module.weight.shape
            state[f"{kohya_name(path)}.lora_down.weight"] = torch.randn(2, in_features, generator=generator) * 0.1
            state[f"{kohya_name(path)}.lora_up.weight"] = torch.randn(out_features, 2, generator=generator) * 0.1
            state[f"{kohya_name(path)}.alpha"] = torch.tensor(2.0)
    return state


def test_apply_then_remove_is_bit_identical_and_keeps_upstream_loras(comfy, door, sd15, trained):
    model, clip, _ = sd15
    prompts, forget, adapter = trained
    save_file(upstream_lora(model), str(comfy.folder("loras") / "upstream_style.safetensors"))
    styled, _ = comfy.node("LoraLoader").load_lora(model, clip, "upstream_style.safetensors", 1.0, 0.0)
    erased = comfy.node("SpareApplyErasure").apply(styled, adapter, 0.8)["result"][0]
    restored = comfy.node("SpareRemoveErasure").remove(erased, adapter)["result"][0]

    assert restored.patches.keys() == styled.patches.keys()
    for key in styled.patches:
        assert len(restored.patches[key]) == len(styled.patches[key])
        assert all(a is b for a, b in zip(restored.patches[key], styled.patches[key], strict=True))
    latents, noise, indices = probe(forget)
    before = predict(door, styled, latents, noise, indices, prompts.forget)
    after = predict(door, restored, latents, noise, indices, prompts.forget)
    with_erasure = predict(door, erased, latents, noise, indices, prompts.forget)
    plain = predict(door, model, latents, noise, indices, prompts.forget)
    assert torch.equal(before, after)
    assert not torch.equal(before, with_erasure)
    assert not torch.equal(before, plain), "the upstream LoRA must still be applied"


def test_remove_recognises_an_adapter_loaded_from_file(comfy, door, sd15, trained):
    model, clip, _ = sd15
    _, _, adapter = trained
    path = save_adapter(adapter, comfy.folder("loras") / "reloaded.safetensors", overwrite=True)
    via_stock, _ = comfy.node("LoraLoader").load_lora(model, clip, "reloaded.safetensors", 1.0, 0.0)
    removed = comfy.node("SpareRemoveErasure").remove(via_stock, load_adapter(path))["result"][0]
    assert removed.patches == {} or all(len(v) == 0 for v in removed.patches.values())
    assert removed is not via_stock and via_stock.patches, "the incoming MODEL keeps its patches"


def test_a_file_named_before_key_format_2_still_loads_applies_and_removes(comfy, door, sd15, trained):
    """Adapters saved before the diffusers block names (key format 1: ComfyUI's module paths, e.g.
    lora_unet_input_blocks_1_1_proj_in) still work everywhere the pack reads a file: the Load node, Apply,
    Remove, rebuilding the training hooks, and the stock LoraLoader; and they compute what the new names do."""
    model, clip, _ = sd15
    prompts, forget, adapter = trained
    names = KeyNames.for_modules(adaptable_modules(model.model.diffusion_model))
    assert names.naming == "diffusers" and not any("input_blocks" in stem for stem in adapter.module_stems)
    legacy_stem = {names.stem(path): kohya_name(path) for path in names.stems}
    legacy = {f"{legacy_stem[key.split('.')[0]]}.{key.split('.', 1)[1]}": tensor
              for key, tensor in adapter.tensors.items()}
    assert any(key.startswith("lora_unet_input_blocks_") or key.startswith("lora_unet_middle_block_")
               for key in legacy)
    save_file(legacy, str(comfy.folder("loras") / "format1.safetensors"), {"base_model": "sd1"})
    loaded = comfy.node("SpareLoadAdapter").load("format1.safetensors")["result"][0]
    assert set(loaded.tensors) == set(legacy)

    latents, noise, indices = probe(forget)
    new_names = predict(door, comfy.node("SpareApplyErasure").apply(model, adapter, 1.0)["result"][0],
                        latents, noise, indices, prompts.forget)
    applied = comfy.node("SpareApplyErasure").apply(model, loaded, 1.0)["result"][0]
    torch.testing.assert_close(predict(door, applied, latents, noise, indices, prompts.forget), new_names,
                               atol=1e-5, rtol=0)
    stock, _ = comfy.node("LoraLoader").load_lora(model, clip, "format1.safetensors", 1.0, 0.0)
    torch.testing.assert_close(predict(door, stock, latents, noise, indices, prompts.forget), new_names,
                               atol=1e-5, rtol=0)
    removed = comfy.node("SpareRemoveErasure").remove(applied, loaded)["result"][0]
    assert torch.equal(predict(door, removed, latents, noise, indices, prompts.forget),
                       predict(door, model, latents, noise, indices, prompts.forget))
    hooks = SparseLoRASet.from_kohya_state_dict(model.model.diffusion_model, legacy)
    assert sorted(hooks.paths) == sorted(SparseLoRASet.from_kohya_state_dict(model.model.diffusion_model,
                                                                            adapter.tensors).paths)
