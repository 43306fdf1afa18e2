"""Each bad input gets a clear error that names the input and what would be valid; nothing is lost."""

import pytest
import torch

from devkit import model_factory
from spare_core.adapter import ErasureAdapter, load_adapter, save_adapter
from spare_core.config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig
from spare_core.prompts import ErasurePrompts


@pytest.mark.parametrize("forget, surrogate, retain, message", [
    ("", "a painting", "", "forget_prompts is empty"),
    ("  \n \n", "a painting", "", "forget_prompts is empty"),
    ("a cat", "a cat", "", "surrogate_prompt 'a cat' equals the concept phrase 'a cat'"),
    ("a cat\na kitten", " a kitten ", "", "surrogate_prompt 'a kitten' equals a forget prompt"),
    ("a photo of a cat\na cat", "a dog", "a bird\na cat", "retain_prompts contains the forget prompt 'a cat'"),
    ("a cat\na dog\na fox", "a tiger\na wolf", "", "surrogate_prompt has 2 lines for 3 forget prompts"),
    ("a cat\na dog", "a dog\na wolf", "", None),
    ("a cat\na dog", "a tiger\na dog", "", "surrogate_prompt 'a dog' equals a forget prompt"),
])
def test_prompt_errors(forget, surrogate, retain, message):
    if message is None:  # a surrogate line may repeat another pair's forget prompt; only its own pair matters
        assert ErasurePrompts.parse(forget, surrogate, retain).surrogates == ("a dog", "a wolf")
        return
    with pytest.raises(ValueError, match=message):
        ErasurePrompts.parse(forget, surrogate, retain)


def test_surrogate_lines_pair_with_forget_prompts():
    from spare_core.denoiser import Conditioning
    from spare_core.samples import ConceptSamples
    surrogate = Conditioning(torch.arange(3.0).view(3, 1, 1))
    samples = ConceptSamples(torch.zeros(4, 4, 2, 2), Conditioning(torch.zeros(4, 1, 1)), torch.tensor([2, 0, 1, 2]))
    assert samples.surrogates(surrogate).context.flatten().tolist() == [2.0, 0.0, 1.0, 2.0]
    one = Conditioning(torch.full((1, 1, 1), 7.0))
    assert samples.surrogates(one).context.flatten().tolist() == [7.0] * 4
    with pytest.raises(ValueError, match="give one surrogate line, or one per forget prompt"):
        samples.surrogates(Conditioning(torch.zeros(2, 1, 1)))


def test_prompts_are_one_per_line():
    prompts = ErasurePrompts.parse(" a cat \n\n a kitten\n", "a dog", "a bird\n")
    assert prompts.forget == ("a cat", "a kitten") and prompts.retain == ("a bird",)  # two lines: full prompts
    assert ErasurePrompts.parse("a cat", "").retain_or_unconditional == ("",)


@pytest.mark.parametrize("make, message", [
    (lambda: TrainConfig(rank=0), r"rank must be a positive integer, got 0"),
    (lambda: TrainConfig(rank=-2), r"rank must be a positive integer, got -2"),
    (lambda: TrainConfig(steps=0), r"steps must be a positive integer, got 0"),
    (lambda: TrainConfig(learning_rate=float("nan")), r"learning_rate must be > 0"),
    (lambda: TrainConfig(gradient_checkpointing="yes"), r"gradient_checkpointing must be true or false, got 'yes'"),
    (lambda: SaliencyConfig(module_fraction=0.0), r"module_fraction must be in \(0, 1\], got 0.0"),
    (lambda: SaliencyConfig(module_fraction=1.5), r"module_fraction must be in \(0, 1\], got 1.5"),
    (lambda: SaliencyConfig(row_fraction=-0.1), r"row_fraction must be in \(0, 1\]"),
    (lambda: TimestepConfig(top_fraction=2.0), r"top_fraction must be in \(0, 1\]"),
    (lambda: TimestepConfig(temperature=0.0), r"temperature must be > 0"),
    (lambda: SampleConfig(width=100), r"width must be a positive multiple of 8 pixels, got 100"),
    (lambda: TrainConfig(erase_target=0.0), r"erase_target .* must be in \(0, 1\], got 0.0"),
    (lambda: TrainConfig(erase_target=1.2), r"erase_target .* must be in \(0, 1\], got 1.2"),
    (lambda: TrainConfig(erase_target=float("nan")), r"erase_target .* must be in \(0, 1\]"),
    (lambda: TrainConfig(overshoot=-0.5), r"overshoot must be a number >= 0, got -0.5"),
])
def test_config_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.compat
def test_rank_above_what_a_module_allows_names_the_module(comfy, door, small_sd15):
    from spare_core.lora import SparseLoRASet, adaptable_modules
    unet = small_sd15.model.diffusion_model
    name = "input_blocks.0.0"  # conv_in: 64 outputs
    with pytest.raises(ValueError, match=rf"module {name}: rank 100 is too large .* at most 36"):
        SparseLoRASet(unet, rank=100, alpha=1.0, row_masks={name: None}, seed=0)
    assert name in adaptable_modules(unet)


@pytest.mark.compat
def test_unsupported_model_types_are_refused(comfy, door):
    import comfy.supported_models
    config = dict(model_factory.SD15_UNET, in_channels=9, model_channels=64, num_heads=-1, num_head_channels=32)
    inpainting = model_factory._patched_model(comfy.supported_models.SD15(model_factory.unet_config(config)), 0)
    with pytest.raises(ValueError, match=r"model input is an inpainting .* SD1.x, SD2.x .* and SDXL"):
        door.models.model_family(inpainting)
    with pytest.raises(ValueError, match=r"model input is not a ComfyUI diffusion MODEL"):
        door.models.model_family(object())


@pytest.mark.compat
def test_missing_clip_is_named(door, small_sd15):
    with pytest.raises(ValueError, match=r"clip input is empty, so forget_prompts cannot be encoded"):
        door.models.encode_prompts(small_sd15, None, ["a cat"], 512, 512, "forget_prompts")


def _tiny_adapter(model, metadata=None):
    from spare_core.lora import SparseLoRASet
    unet = model.model.diffusion_model
    lora_set = SparseLoRASet(unet, rank=2, alpha=2.0, row_masks={"out.2": None, "input_blocks.0.0": None}, seed=0)
    return ErasureAdapter(lora_set.kohya_state_dict(), metadata or {"base_model": "sd1"})


@pytest.mark.compat
def test_adapter_made_for_another_architecture_says_how_many_modules_do_not_match(door, small_sd15, small_sdxl):
    from spare_core.lora import SparseLoRASet
    unet = small_sd15.model.diffusion_model
    attention = [name for name, _ in unet.named_modules() if name.endswith("attn2.to_k")]
    lora_set = SparseLoRASet(unet, rank=2, alpha=2.0, row_masks={n: None for n in attention}, seed=0)
    adapter = ErasureAdapter(lora_set.kohya_state_dict(), {"base_model": "sd1"})
    # The SDXL test UNet has the same module names but a 2048-wide context: every to_k differs in shape.
    with pytest.raises(ValueError, match=r"adapter does not fit this model: .* is 64x768 .* made for sd1, this "
                                         r"model is sdxl"):
        door.patches.apply_adapter(small_sdxl, adapter, 1.0)
    renamed = ErasureAdapter({k.replace("lora_unet_", "lora_unet_missing_"): v for k, v in adapter.tensors.items()},
                             {"base_model": "sd1"})
    with pytest.raises(ValueError, match=rf"{len(attention)} of {len(attention)} modules match neither the diffusers "
                                         rf"block names nor ComfyUI's module names of this model .* made for sd1, "
                                         rf"this model is sd1"):
        door.patches.apply_adapter(small_sd15, renamed, 1.0)


def test_file_that_is_not_safetensors_is_refused(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("this is not a tensor file")
    with pytest.raises(ValueError, match=r"notes.safetensors is not a readable .safetensors file"):
        load_adapter(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_adapter(tmp_path / "missing.safetensors")


def test_file_without_unet_lora_keys_is_refused(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "te_only.safetensors"
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 4)}, str(path))
    with pytest.raises(ValueError, match="holds no lora_unet_\\* keys"):
        load_adapter(path)


@pytest.mark.compat
def test_save_never_overwrites_unasked_and_writes_atomically(door, small_sd15, tmp_path):
    adapter = _tiny_adapter(small_sd15)
    path = save_adapter(adapter, tmp_path / "erase.safetensors")
    original = path.read_bytes()
    with pytest.raises(FileExistsError,
                       match="already exists; choose another file name, turn on counter or enable overwrite"):
        save_adapter(_tiny_adapter(small_sd15, {"base_model": "sd1", "note": "second"}), path)
    assert path.read_bytes() == original
    save_adapter(_tiny_adapter(small_sd15, {"base_model": "sd1", "note": "second"}), path, overwrite=True)
    assert load_adapter(path).metadata["note"] == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["erase.safetensors"], "no temporary files left behind"


@pytest.mark.parametrize("damage, message", [
    ("nan_down", r"adapter key {stem}.lora_down.weight holds 1 non-finite \(NaN or infinite\) values of 256; the file "
                 r"is damaged"),
    ("inf_alpha", r"adapter key {stem}.alpha holds 1 non-finite"),
    ("rank_mismatch", r"adapter module {stem}: lora_up \(64, 5\) has rank 5 but lora_down \(4, 64\) has rank 4; "
                      r"the two must agree"),
])
def test_a_damaged_shared_adapter_is_refused_on_load_naming_the_key(tmp_path, damage, message):
    """A file from elsewhere is checked before use: NaN weights would draw black images, a rank mismatch would
    fail deep inside ComfyUI's LoRA code."""
    from safetensors.torch import save_file
    stem = "lora_unet_input_blocks_1_1_proj_in"
    down, up, alpha = torch.randn(4, 64), torch.zeros(64, 4), torch.tensor(4.0)
    if damage == "nan_down":
        down[0, 0] = float("nan")
    elif damage == "inf_alpha":
        alpha = torch.tensor(float("inf"))
    else:
        up = torch.zeros(64, 5)
    path = tmp_path / "shared.safetensors"
    save_file({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up, f"{stem}.alpha": alpha}, str(path))
    with pytest.raises(ValueError, match=message.format(stem=stem)):
        load_adapter(path)


@pytest.mark.compat
def test_written_files_follow_the_umask_like_comfyuis_own(door, small_sd15, tmp_path):
    """Adapters and the demo checkpoint are read by other users and services from a shared models folder."""
    import os
    import stat

    from synthcanvas import demo_model
    previous = os.umask(0o022)
    try:
        shared = save_adapter(_tiny_adapter(small_sd15), tmp_path / "shared.safetensors")
        checkpoint = demo_model.write_atomically({"x": torch.zeros(1)}, tmp_path / "checkpoint.safetensors")
        os.umask(0o077)
        private = save_adapter(_tiny_adapter(small_sd15), tmp_path / "private.safetensors")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644
    assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


@pytest.mark.compat
@pytest.mark.parametrize("name", ["../escape", "../../etc/passwd", "/tmp/abs", "sub/../../x", "", "  ", "a/./b"])
def test_save_names_outside_models_loras_are_refused(door, name):
    with pytest.raises(ValueError,
                       match="file_name .* (is not a plain file name inside models/loras|would be written)"):
        door.files.new_lora_file_path(name)


@pytest.mark.compat
def test_save_name_gets_the_extension_and_stays_in_models_loras(comfy, door):
    path = door.files.new_lora_file_path("erasures/van_gogh")
    assert path.name == "van_gogh.safetensors"
    assert path.parent.parent == comfy.folder("loras").resolve()


@pytest.mark.compat
def test_loading_a_missing_adapter_names_the_file(door):
    with pytest.raises(FileNotFoundError, match=r"adapter file 'nope.safetensors' is not in models/loras"):
        door.files.lora_file_path("nope.safetensors")


@pytest.mark.compat
def test_resolution_0_means_the_models_native_size(comfy, door, sd15, small_sdxl, synthcanvas_checkpoint):
    with torch.inference_mode():
        demo = comfy.node("CheckpointLoaderSimple").load_checkpoint(synthcanvas_checkpoint)[0]
    assert door.models.native_resolution(sd15[0]) == 512
    assert door.models.native_resolution(small_sdxl) == 1024
    assert door.models.native_resolution(demo) == 64  # a user of the demo model need not know it


@pytest.mark.compat
def test_a_prompt_longer_than_one_clip_chunk_is_named(door, sd15):
    model, clip, _ = sd15
    long_phrase = "supercalifragilistic" * 30  # one "word": a phrase by the word rule, 100+ tokens
    with pytest.raises(ValueError,
                       match=r"forget_prompts: 'a photo of supercal.* is longer than one 75-token CLIP chunk"):
        door.models.encode_prompts(model, clip, [f"a photo of {long_phrase}"], 64, 64, "forget_prompts")
