"""The adapter file in another tool's loader: diffusers' ordinary ``load_lora_weights`` maps every module of a
pack-trained adapter, with no key left over or missing, and adds alpha/rank · up · down to each module's weight, for
UNets laid out as SD1.5, SD2.x and SDXL are (several levels, so that samplers, shortcuts and level numbering are
all named). The key names come from ``spare_core.adapter.KeyNames``; ComfyUI's own map of diffusers names
(``comfy.utils.unet_to_diffusers``) must agree with it too."""

from __future__ import annotations

import logging

import pytest
import torch

from devkit import model_factory
from spare_core.adapter import ErasureAdapter, KeyNames, load_adapter, save_adapter
from spare_core.config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig
from spare_core.denoiser import Conditioning
from spare_core.lora import adaptable_modules
from spare_core.pipeline import EncodedPrompts
from spare_core.runner import headless
from spare_core.saliency import compute_saliency
from spare_core.samples import generate_samples
from spare_core.timesteps import select_timesteps
from spare_core.trainer import train_adapter

# Crosses the ComfyUI door where versions differ: ComfyUI's own map of diffusers key names, on both versions.
pytestmark = pytest.mark.compat

# Three levels of two resnets each, 32 channels wide: every kind of UNet module (downsampler, upsampler, 1×1
# shortcut, levels with and without attention, SDXL's size embedding) at a size that trains in seconds.
_LEVELS = {"model_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": [2, 2, 2], "num_heads": -1,
           "num_head_channels": 8}
LAYOUTS = {
    "sd15": dict(model_factory.SD15_UNET, **_LEVELS, transformer_depth=[1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 0, 0, 0]),
    # SD2's ComfyUI config fixes 64 channels per attention head, so its model is 64 channels wide.
    "sd2": dict(model_factory.SD15_UNET, **dict(_LEVELS, model_channels=64), transformer_depth=[1, 1, 1, 1, 0, 0],
                context_dim=1024,
                transformer_depth_output=[1, 1, 1, 1, 1, 1, 0, 0, 0], use_linear_in_transformer=True),
    "sdxl": dict(model_factory.SDXL_UNET, **_LEVELS, transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_middle=2,
                 transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2]),
}


# The one module named as in the original UNet, not as in diffusers (spare_core.adapter explains why).
DIFFUSERS_STEM = {"lora_unet_label_emb_0_0": "lora_unet_add_embedding_linear_1",
                  "lora_unet_label_emb_0_2": "lora_unet_add_embedding_linear_2"}


def comfy_model(family: str):
    import comfy.model_base
    import comfy.supported_models
    config_class = {"sd15": comfy.supported_models.SD15, "sd2": comfy.supported_models.SD20,
                    "sdxl": comfy.supported_models.SDXL}[family]
    model_config = config_class(model_factory.unet_config(LAYOUTS[family]))
    if family == "sd2":  # ComfyUI reads SD2's prediction type off one norm bias of a full-size checkpoint
        model_config.model_type = lambda state_dict, prefix="": comfy.model_base.ModelType.V_PREDICTION
    return model_factory._patched_model(model_config, seed=1)


def diffusers_unet(family: str):
    """diffusers' UNet2DConditionModel in the same layout as ``LAYOUTS[family]``."""
    from diffusers import UNet2DConditionModel
    width = LAYOUTS[family]["model_channels"]
    common = dict(sample_size=8, layers_per_block=2, block_out_channels=(width, 2 * width, 2 * width),
                  norm_num_groups=32, attention_head_dim=8)
    if family == "sdxl":
        return UNet2DConditionModel(
            **common, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2), cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    return UNet2DConditionModel(
        **common, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768 if family == "sd15" else 1024, use_linear_projection=family == "sd2")


def diffusers_pipeline(family: str, comfy_root):
    """A small pipeline of the family's kind, built from parts (no hub): the UNet above, tiny text encoders, VAE."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    tokenizer = CLIPTokenizer.from_pretrained(str(comfy_root / "comfy" / "sd1_tokenizer"))
    text = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                          vocab_size=tokenizer.vocab_size, projection_dim=32)
    vae = diffusers.AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=32)
    parts = dict(vae=vae, text_encoder=CLIPTextModel(text), tokenizer=tokenizer, unet=diffusers_unet(family),
                 scheduler=diffusers.EulerDiscreteScheduler())
    if family == "sdxl":
        return diffusers.StableDiffusionXLPipeline(**parts, text_encoder_2=CLIPTextModelWithProjection(text),
                                                   tokenizer_2=tokenizer)
    return diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)


def encoded_prompts(family: str) -> EncodedPrompts:
    generator = torch.Generator().manual_seed(3)
    width = LAYOUTS[family]["context_dim"]

    def prompt():
        extra = {"y": torch.randn(1, 2816, generator=generator)} if family == "sdxl" else {}
        return Conditioning(torch.randn(1, 77, width, generator=generator), extra)
    return EncodedPrompts(prompt(), prompt(), prompt(), prompt())


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def trained(request, door, tmp_path_factory):
    """An adapter trained by the pack on every adaptable module (the saliency default keeps them all), saved to
    disk, with the ComfyUI model it was trained on."""
    family = request.param
    model = comfy_model(family)
    prompts = encoded_prompts(family)
    samples = SampleConfig(samples_per_prompt=1, steps=2, width=64, height=64)
    with door.session.denoiser_session(model) as denoiser:
        forget = generate_samples(denoiser, prompts.forget, prompts.uncond, samples, seed=0)
        retain = generate_samples(denoiser, prompts.retain, prompts.uncond, samples, seed=1)
        saliency = compute_saliency(denoiser, forget, prompts.retain, SaliencyConfig(draws=1), 0)
        timesteps = select_timesteps(denoiser, forget, prompts.surrogate, TimestepConfig(bins=2, draws_per_bin=1), 0)
        result = train_adapter(denoiser, saliency, timesteps, forget, prompts.surrogate, retain,
                               TrainConfig(steps=3, learning_rate=5e-2), seed=0)
    path = save_adapter(ErasureAdapter(result.state_dict, {"base_model": family}),
                        tmp_path_factory.mktemp(family) / "erasure.safetensors")
    return family, model, path


def test_key_names_are_the_names_diffusers_and_comfyui_give_each_module(trained):
    """Every adaptable module of the ComfyUI UNet gets the kohya stem of its diffusers name: a module of the same
    shape in diffusers' UNet, and a key that ComfyUI's own LoRA key map sends to that very module."""
    import comfy.lora
    family, model, _ = trained
    modules = adaptable_modules(model.model.diffusion_model)
    names = KeyNames.for_modules(modules)
    assert names.naming == "diffusers"
    theirs = {"lora_unet_" + name.replace(".", "_"): module for name, module in
              diffusers_unet(family).named_modules()}
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    for path, module in modules.items():
        stem = names.stem(path)
        assert theirs[DIFFUSERS_STEM.get(stem, stem)].weight.shape == module.weight.shape, path
        assert key_map.get(stem) == f"diffusion_model.{path}.weight", (path, stem)
    assert len({names.stem(p) for p in modules}) == len(modules)


def test_a_unet_whose_levels_differ_in_depth_keeps_comfyui_names(door):
    """ComfyUI's map of diffusers names assumes as many resnets in every level; a UNet that has not (the demo
    model: 2 then 1) keeps ComfyUI's module paths, which ComfyUI's loader sends to the right modules."""
    import comfy.lora
    import comfy.supported_models
    config = dict(model_factory.SD15_UNET, **_LEVELS)
    config.update(channel_mult=[1, 2], num_res_blocks=[2, 1], transformer_depth=[1, 1, 1],
                  transformer_depth_output=[1, 1, 1, 1, 1])
    model = model_factory._patched_model(comfy.supported_models.SD15(model_factory.unet_config(config)), seed=1)
    modules = adaptable_modules(model.model.diffusion_model)
    names = KeyNames.for_modules(modules)
    assert names.naming == "comfyui"
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    assert all(key_map[names.stem(path)] == f"diffusion_model.{path}.weight" for path in modules)


def test_diffusers_load_lora_weights_applies_every_module_as_the_file_says(trained, comfy, caplog):
    """Through the ordinary ``load_lora_weights``: no key unexpected or missing, every module of the file adapted,
    and each weight changed by exactly alpha/rank · up · down (float32 tolerance)."""
    from diffusers.utils import logging as diffusers_logging
    family, _, path = trained
    adapter = load_adapter(path)
    pipe = diffusers_pipeline(family, headless.comfy_root())
    before = {name: module.weight.detach().clone() for name, module in pipe.unet.named_modules()
              if hasattr(module, "weight") and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))}
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            pipe.load_lora_weights(str(path), adapter_name="spare")
    finally:
        diffusers_logging.disable_propagation()
    # What diffusers says of keys it could not place ("unexpected keys", "missing keys"); its note that the file
    # has no text-encoder keys is true and expected (the adapter is a UNet LoRA).
    complaints = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                  and not r.getMessage().startswith("No LoRA keys associated to CLIPTextModel")]
    assert not complaints, complaints[0][:500]
    adapted = {name for name, module in pipe.unet.named_modules() if "spare" in getattr(module, "lora_A", {})}
    diffusers_names = {DIFFUSERS_STEM.get(stem, stem): stem for stem in adapter.module_stems}
    stems = {diffusers_names[key]: name for name in before
             if (key := "lora_unet_" + name.replace(".", "_")) in diffusers_names}
    assert adapted == set(stems.values())
    assert len(adapted) == len(adapter.module_stems)
    pipe.fuse_lora(lora_scale=1.0)
    after = dict(pipe.unet.named_modules())
    for stem, name in stems.items():
        up = adapter.tensors[f"{stem}.lora_up.weight"].flatten(1)
        down = adapter.tensors[f"{stem}.lora_down.weight"]
        scale = float(adapter.tensors[f"{stem}.alpha"]) / down.shape[0]
        expected = (up @ down.flatten(1)).reshape(before[name].shape) * scale
        change = after[name].base_layer.weight if hasattr(after[name], "base_layer") else after[name].weight
        torch.testing.assert_close(change.detach() - before[name], expected, rtol=1e-4, atol=1e-6, msg=name)
        assert expected.abs().max() > 0, f"{name}: the trained adapter changes nothing here; the check proves nothing"
