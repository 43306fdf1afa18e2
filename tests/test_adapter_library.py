"""The adapter library behind GET /spare/adapters, and a workflow naming a missing adapter file."""

import sys

import pytest
import torch
from safetensors.torch import save_file

from spare_core.runner.headless import PACK_NAME

# Crosses the ComfyUI door where versions differ: the adapter library's route, a node error in the executor.
pytestmark = pytest.mark.compat


def library():
    # ComfyUI names the loaded pack after its folder (newer versions prefix "custom_nodes.").
    routes = next(module for name, module in sys.modules.items() if name.endswith(f"{PACK_NAME}.nodes.routes"))
    return routes.adapter_library()


def test_library_describes_ours_and_tolerates_other_and_broken_files(comfy, door, small_sd15):
    from spare_core.adapter import ErasureAdapter, build_metadata, save_adapter
    from spare_core.lora import SparseLoRASet
    loras = comfy.folder("loras")
    lora_set = SparseLoRASet(small_sd15.model.diffusion_model, 2, 2.0, {"out.2": None}, seed=0)
    metadata = build_metadata(forget_prompts=["a cat"], surrogate_prompt="an animal", rank=2, steps=10)
    save_adapter(ErasureAdapter(lora_set.kohya_state_dict(), metadata), loras / "library_ours.safetensors",
                 overwrite=True)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(loras / "library_plain.safetensors"),
              metadata={"forget_prompts": "[not json"})
    (loras / "library_broken.safetensors").write_bytes(b"garbage")

    entries = {entry["file"]: entry for entry in library()}
    ours = entries["library_ours.safetensors"]
    assert ours["is_spare"] and ours["forget_prompts"] == ["a cat"] and ours["surrogate_prompt"] == "an animal"
    assert ours["rank"] == 2 and ours["steps"] == 10
    plain = entries["library_plain.safetensors"]
    assert plain["is_spare"] is False and plain["forget_prompts"] == ["[not json"]
    assert entries["library_broken.safetensors"]["is_spare"] is False
    assert "not a readable .safetensors file" in entries["library_broken.safetensors"]["error"]
    assert set(entries) <= set(door.files.lora_file_names())


def test_workflow_with_a_missing_adapter_file_is_a_clear_node_error(comfy, sd15_checkpoint):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_checkpoint}},
        "2": {"class_type": "SpareLoadAdapter", "inputs": {"adapter_name": "deleted_adapter.safetensors"}},
        "3": {"class_type": "SpareApplyErasure", "inputs": {"model": ["1", 0], "adapter": ["2", 0], "strength": 1.0}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 1]}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["3", 0], "seed": 0, "steps": 1, "cfg": 1.0,
                                                    "sampler_name": "euler", "scheduler": "normal",
                                                    "positive": ["5", 0], "negative": ["5", 0],
                                                    "latent_image": ["4", 0], "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "never"}},
    }
    run = comfy.run_prompt(prompt)
    assert not run.success
    assert "adapter_name" in str(run.error) and "deleted_adapter.safetensors" in str(run.error)
