"""The pack inside ComfyUI's own PromptExecutor, loaded from a custom_nodes folder like a user's install."""

import json

import pytest
import torch
import workflows
from safetensors import safe_open

from spare_core.adapter import load_adapter

# Crosses the ComfyUI door where versions differ: the executor, the stock loaders and LoraLoader, node registration.
pytestmark = pytest.mark.compat


def image_files(comfy, prefix):
    return sorted(comfy.folder("output").glob(f"{prefix}_*.png"))


@pytest.fixture(scope="module")
def erased_run(comfy, sd15_checkpoint):
    run = comfy.run_prompt(workflows.erase_and_generate(sd15_checkpoint, "workflow_erasure"))
    assert run.success, run.error
    return run


def test_the_pack_registers_every_node_with_tooltips(comfy):
    mappings = comfy.nodes.NODE_CLASS_MAPPINGS
    ids = ["SpareComputeSaliency", "SpareTimestepSelector", "SpareConceptNeighbourhood", "SpareTrainAdapter",
           "SpareApplyErasure", "SpareRemoveErasure", "SpareSaveAdapter", "SpareLoadAdapter", "SpareErasureReport"]
    for node_id in ids:
        node = mappings[node_id]
        assert node.CATEGORY == "SPARE"
        inputs = node.INPUT_TYPES()
        for section in (inputs["required"], inputs.get("optional", {})):  # what a user sees; "hidden" is ComfyUI's
            for name, spec in section.items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS["SpareTrainAdapter"] == "Erase Concept (Train SPARE Adapter)"


def test_inputs_say_what_the_core_does(comfy, door):
    """Tooltips and defaults come from the core, so they cannot drift from it: the MODEL input names every family the
    model check accepts, the stage nodes start at their configs' defaults, and the Train node gets its own id in the
    graph (where the live loss curve is sent) from ComfyUI's hidden UNIQUE_ID input."""
    from spare_core.config import TimestepConfig
    mappings = comfy.nodes.NODE_CLASS_MAPPINGS
    for node_id in ("SpareComputeSaliency", "SpareTimestepSelector", "SpareConceptNeighbourhood", "SpareTrainAdapter",
                    "SpareApplyErasure", "SpareRemoveErasure"):
        tooltip = mappings[node_id].INPUT_TYPES()["required"]["model"][1]["tooltip"]
        assert door.models.SUPPORTED_MODELS in tooltip and "Flux" in tooltip, (node_id, tooltip)
    selector = mappings["SpareTimestepSelector"].INPUT_TYPES()["required"]
    defaults = TimestepConfig()
    assert [selector[name][1]["default"] for name in ("bins", "temperature", "top_fraction")] == \
        [defaults.bins, defaults.temperature, defaults.top_fraction]
    assert mappings["SpareTrainAdapter"].INPUT_TYPES()["hidden"] == {"unique_id": "UNIQUE_ID"}


def test_erase_generate_and_save_through_the_executor(comfy, erased_run):
    for prefix in ("spare_erased", "spare_loss", "spare_saliency", "spare_timesteps"):
        assert image_files(comfy, prefix), f"no {prefix} image written"
    path = comfy.folder("loras") / "workflow_erasure.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        keys = list(handle.keys())
    assert all(k.startswith("lora_unet_") for k in keys)
    assert json.loads(metadata["forget_prompts"]) == [workflows.FORGET]
    assert metadata["surrogate_prompt"] == workflows.SURROGATE
    assert json.loads(metadata["retain_prompts"]) == workflows.RETAIN.splitlines()
    assert metadata["base_model"] == "sd1" and metadata["rank"] == "4" and metadata["steps"] == "3"
    assert len(json.loads(metadata["timestep_probabilities"])) == 4
    trained = erased_run.outputs["6"][0][0]
    assert load_adapter(path).tensors.keys() == trained.tensors.keys()


def test_saved_adapter_through_stock_lora_loader_and_load_apply_remove(comfy, erased_run, sd15_checkpoint):
    run = comfy.run_prompt(workflows.stock_lora_and_spare_load(sd15_checkpoint, "workflow_erasure.safetensors"))
    assert run.success, run.error
    assert image_files(comfy, "spare_stock_lora")
    latent = {node: run.outputs[node][0][0]["samples"] for node in ("6", "9", "10", "12")}
    torch.testing.assert_close(latent["6"], latent["9"], atol=1e-4, rtol=0)  # stock LoraLoader == Apply Erasure
    assert not torch.equal(latent["9"], latent["10"])                         # the erasure changes the output
    assert torch.equal(latent["12"], latent["10"])                            # Remove restores the base exactly


def test_saving_again_under_the_same_name_is_refused(comfy, erased_run, sd15_checkpoint):
    path = comfy.folder("loras") / "workflow_erasure.safetensors"
    before = path.read_bytes()
    run = comfy.run_prompt(workflows.erase_and_generate(sd15_checkpoint, "workflow_erasure", train_steps=1))
    assert not run.success
    assert "already exists" in str(run.error)
    assert path.read_bytes() == before


def test_save_with_counter_numbers_each_run_like_comfyui_savers(comfy, erased_run):
    loras = comfy.folder("loras")
    (loras / "counted_00007_.safetensors").write_bytes(b"a user's own file")  # a gap in the numbers is kept
    prompt = {"1": {"class_type": "SpareLoadAdapter", "inputs": {"adapter_name": "workflow_erasure.safetensors"}},
              "2": {"class_type": "SpareSaveAdapter", "inputs": {"adapter": ["1", 0], "file_name": "counted",
                                                                 "overwrite": False, "counter": True}}}
    names = []
    for run_index in range(2):
        prompt["2"]["inputs"]["overwrite"] = bool(run_index)  # a changed input, so the executor runs the node again
        run = comfy.run_prompt(prompt)
        assert run.success, run.error
        names.append(run.ui["2"]["text"][0])
    assert names == ["counted_00008_.safetensors", "counted_00009_.safetensors"]
    assert (loras / "counted_00007_.safetensors").read_bytes() == b"a user's own file"
    original = load_adapter(loras / "workflow_erasure.safetensors")
    for name in names:
        saved = load_adapter(loras / name)
        assert saved.metadata == original.metadata
        assert all(torch.equal(saved.tensors[k], original.tensors[k]) for k in original.tensors)


def test_bad_input_in_a_graph_is_a_clear_node_error(comfy, sd15_checkpoint):
    prompt = workflows.erase_and_generate(sd15_checkpoint, "never_written")
    prompt["6"]["inputs"]["forget_prompts"] = "   \n  "
    run = comfy.run_prompt(prompt)
    assert not run.success
    assert "forget_prompts is empty" in str(run.error)
    assert not (comfy.folder("loras") / "never_written.safetensors").exists()


def test_user_latents_can_replace_self_generated_samples(comfy, sd15_checkpoint):
    """forget_latents: VAE-encoded images of the concept instead of samples the model draws itself."""
    prompt = workflows.erase_and_generate(sd15_checkpoint, "from_latents", train_steps=2)
    prompt["20"] = {"class_type": "EmptyImage",
                    "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0x3366CC}}
    prompt["21"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["1", 2]}}
    prompt["6"]["inputs"]["forget_latents"] = ["21", 0]
    prompt["4"]["inputs"]["forget_latents"] = ["21", 0]
    run = comfy.run_prompt(prompt)
    assert run.success, run.error
    assert (comfy.folder("loras") / "from_latents.safetensors").exists()


def test_compact_sd1_checkpoint_loads_through_the_stock_loader(comfy, compact_sd1_checkpoint):
    """The pack registers SD1-layout UNets narrower than 320 channels with ComfyUI's detection (the demo model)."""
    with torch.inference_mode():
        model, clip, vae = comfy.node("CheckpointLoaderSimple").load_checkpoint(compact_sd1_checkpoint)[:3]
    assert type(model.model.model_config).__name__ == "SpareCompactSD1"
    assert model.model.diffusion_model.input_blocks[0][0].weight.shape[0] == 64
    run = comfy.run_prompt(workflows.erase_and_generate(compact_sd1_checkpoint, "compact_erasure", train_steps=2))
    assert run.success, run.error


def test_each_stage_draws_a_terminal_bar_as_comfyui_s_samplers_do(door, capsys, monkeypatch):
    """While ComfyUI's progress bars are on (its default), a stage's steps also show in the terminal, titled; with
    them off (the batch runner, which draws its own bars per node) nothing is printed."""
    import comfy.utils
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_ENABLED", True)
    report = door.progress.StepReporter(3, "SPARE train")
    for _ in range(3):
        report()
    shown = capsys.readouterr().err
    assert "SPARE train" in shown and "/3" in shown, shown
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_ENABLED", False)
    quiet = door.progress.StepReporter(3, "SPARE train")
    for _ in range(3):
        quiet()
    assert "SPARE train" not in capsys.readouterr().err
