"""API-format prompts for the executor tests (the same graphs a user builds in the editor)."""

from __future__ import annotations

import json
from pathlib import Path

FORGET = "a painting in the style of Van Gogh"
SURROGATE = "a painting"
RETAIN = "a photo of a dog\na painting in the style of Monet"


def erase_and_generate(checkpoint: str, adapter_file: str, train_steps: int = 3) -> dict:
    """checkpoint → saliency → timesteps → train → apply → KSampler → VAEDecode → SaveImage, and save the adapter."""
    small = {"samples": 1, "resolution": 64, "seed": 0}
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": FORGET, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "SpareComputeSaliency", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "forget_prompts": FORGET, "retain_prompts": RETAIN,
            "module_fraction": 0.5, "row_fraction": 1.0, **small}},
        "5": {"class_type": "SpareTimestepSelector", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "forget_prompt": FORGET, "surrogate_prompt": SURROGATE,
            "bins": 4, "temperature": 1.0, "top_fraction": 1.0, **small}},
        "6": {"class_type": "SpareTrainAdapter", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "forget_prompts": FORGET, "surrogate_prompt": SURROGATE,
            "retain_prompts": RETAIN, "rank": 4, "alpha": 4.0, "steps": train_steps, "learning_rate": 1e-3,
            "retain_weight": 1.0, "batch_size": 1, "saliency": ["4", 0], "timesteps": ["5", 0], **small}},
        "7": {"class_type": "SpareApplyErasure", "inputs": {"model": ["1", 0], "adapter": ["6", 0], "strength": 1.0}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {
            "model": ["7", 0], "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["8", 0], "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "spare_erased"}},
        "12": {"class_type": "SpareSaveAdapter", "inputs": {"adapter": ["6", 0], "file_name": adapter_file,
                                                             "overwrite": False}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["6", 2], "filename_prefix": "spare_loss"}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["4", 1], "filename_prefix": "spare_saliency"}},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["5", 1], "filename_prefix": "spare_timesteps"}},
    }


def stock_lora_and_spare_load(checkpoint: str, lora_file: str) -> dict:
    """The saved adapter through the stock LoraLoader and through Load + Apply Erasure, sampled alike."""
    sampler = {"seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
               "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0]}
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": FORGET, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora_file,
                                                      "strength_model": 1.0, "strength_clip": 1.0}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["5", 0], **sampler}},
        "7": {"class_type": "SpareLoadAdapter", "inputs": {"adapter_name": lora_file}},
        "8": {"class_type": "SpareApplyErasure", "inputs": {"model": ["1", 0], "adapter": ["7", 0], "strength": 1.0}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["8", 0], **sampler}},
        "10": {"class_type": "KSampler", "inputs": {"model": ["1", 0], **sampler}},
        "11": {"class_type": "SpareRemoveErasure", "inputs": {"model": ["8", 0], "adapter": ["7", 0]}},
        "12": {"class_type": "KSampler", "inputs": {"model": ["11", 0], **sampler}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "spare_stock_lora"}},
        **{f"save_{n}": {"class_type": "SaveLatent",
                         "inputs": {"samples": [n, 0], "filename_prefix": f"latents/spare_{n}"}}
           for n in ("9", "10", "12")},
    }


def shrink_for_cpu(prompt: dict, train_steps: int, checkpoint: str) -> dict:
    """The same graph at the test model's size: 64 px, one sample per prompt, few sampler steps."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint
        if "resolution" in inputs:
            inputs.update(resolution=64, samples=1)
        if node["class_type"] == "SpareTrainAdapter":
            inputs.update(steps=train_steps, learning_rate=1e-3)
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        if node["class_type"] == "KSampler":
            inputs["steps"] = 4
    return prompt


def run_example_saving_first(comfy, example: Path, adapter_file_name: str):
    """Runs an example workflow that saves its adapter with a counter, after removing earlier numbered saves, so
    that this run writes <adapter_file_name>_00001_.safetensors."""
    for earlier in comfy.folder("loras").glob(f"{adapter_file_name}_*_.safetensors"):
        earlier.unlink()
    run = comfy.run_prompt(json.loads(example.read_text()))
    assert run.success, run.error
    return run
