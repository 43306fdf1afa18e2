"""Work done once per graph: wired as in the examples, Compute Saliency Mask, Timestep Selector and Train encode
the prompts and draw the concept's samples once between them, and train the adapter they would train alone."""

from __future__ import annotations

import pytest
import torch

from devkit.pack_calls import counted_encodes_and_draws

# Crosses the ComfyUI door where versions differ: the executor, its node-output cache, and MODEL / CLIP objects.
pytestmark = pytest.mark.compat

FORGET, SURROGATE, RETAIN = "neon style", "pastel style", "sketch style"
SETTINGS = {"samples": 1, "resolution": 32}


def _graph(checkpoint: str, with_stage_nodes: bool, seed: int, lora: str = "") -> dict:
    """Each test its own seed: ComfyUI's executor would otherwise hand back an earlier test's node outputs."""
    model = ["9", 0] if lora else ["1", 0]
    settings = {**SETTINGS, "seed": seed}
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "6": {"class_type": "SpareTrainAdapter", "inputs": {
            "model": model, "clip": ["1", 1], "forget_prompts": FORGET, "surrogate_prompt": SURROGATE,
            "retain_prompts": RETAIN, "rank": 2, "alpha": 2.0, "steps": 2, "learning_rate": 1e-3,
            "retain_weight": 2.0, "batch_size": 1, "gradient_checkpointing": False, **settings}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 2]}},
    }
    if lora:
        prompt["9"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora,
                                                                        "strength_model": 0.5}}
    if with_stage_nodes:
        prompt["4"] = {"class_type": "SpareComputeSaliency", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "forget_prompts": FORGET, "retain_prompts": RETAIN,
            "module_fraction": 0.5, "row_fraction": 1.0, **settings}}
        prompt["5"] = {"class_type": "SpareTimestepSelector", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "forget_prompt": FORGET, "surrogate_prompt": SURROGATE,
            "bins": 4, "temperature": 1.0, "top_fraction": 1.0, **settings}}
        prompt["6"]["inputs"].update(saliency=["4", 0], timesteps=["5", 0])
    return prompt


@pytest.fixture
def calls(comfy):
    """How often the pack, as ComfyUI loaded it, encodes prompts and draws the concept's samples during a test."""
    from spare_core.comfyui import reuse
    reuse.forget()
    with counted_encodes_and_draws(comfy.nodes.NODE_CLASS_MAPPINGS) as counted:
        yield counted
    reuse.forget()


def test_the_stage_nodes_share_one_encoding_and_one_draw(comfy, compact_sd1_checkpoint, calls):
    run = comfy.run_prompt(_graph(compact_sd1_checkpoint, with_stage_nodes=True, seed=3))
    assert run.success, run.error
    # Each job encodes forget, surrogate, retain and the empty prompt: four lists, each encoded once for all three
    # nodes; the concept's samples are drawn by the first node only (Train still draws its retain samples itself).
    assert calls == {"encode": 4, "draw": 1}, calls


def test_sharing_changes_nothing_in_the_adapter(comfy, compact_sd1_checkpoint, calls):
    """Train after the two stage nodes (reusing their work) trains what Train alone with the same saliency and
    timesteps trains (drawing its own)."""
    shared = comfy.run_prompt(_graph(compact_sd1_checkpoint, with_stage_nodes=True, seed=4))
    assert shared.success, shared.error
    saliency, timesteps = shared.outputs["4"][0][0], shared.outputs["5"][0][0]
    from spare_core.comfyui import reuse
    reuse.forget()  # in every copy of the pack: Train alone draws its own samples
    train = comfy.node("SpareTrainAdapter")
    with torch.inference_mode():
        model, clip = comfy.node("CheckpointLoaderSimple").load_checkpoint(compact_sd1_checkpoint)[:2]
    inputs = _graph(compact_sd1_checkpoint, with_stage_nodes=False, seed=4)["6"]["inputs"]
    alone = train.train(**{**inputs, "model": model, "clip": clip, "saliency": saliency, "timesteps": timesteps})
    alone_adapter = (alone["result"] if isinstance(alone, dict) else alone)[0]
    shared_adapter = shared.outputs["6"][0][0]
    assert alone_adapter.tensors.keys() == shared_adapter.tensors.keys()
    assert all(torch.equal(alone_adapter.tensors[k], shared_adapter.tensors[k]) for k in shared_adapter.tensors)


def test_another_model_is_not_given_the_first_model_s_samples(comfy, compact_sd1_checkpoint, calls):
    """A LoRA in front of Train makes it another model: it draws and encodes for itself."""
    from safetensors.torch import save_file
    with torch.inference_mode():
        model = comfy.node("CheckpointLoaderSimple").load_checkpoint(compact_sd1_checkpoint)[0]
    name, module = next((n, m) for n, m in model.model.diffusion_model.named_modules()
                        if n.endswith("attn2.to_k"))
    generator = torch.Generator().manual_seed(0)
    stem = "lora_unet_" + name.replace(".", "_")
    save_file({f"{stem}.lora_down.weight": torch.randn(2, module.weight.shape[1], generator=generator) * 0.1,
               f"{stem}.lora_up.weight": torch.randn(module.weight.shape[0], 2, generator=generator) * 0.1},
              str(comfy.folder("loras") / "reuse_other_model.safetensors"))
    run = comfy.run_prompt(_graph(compact_sd1_checkpoint, with_stage_nodes=True, seed=5,
                                  lora="reuse_other_model.safetensors"))
    assert run.success, run.error
    assert calls["draw"] == 2, calls  # the stage nodes' model, then Train's LoRA-patched one
