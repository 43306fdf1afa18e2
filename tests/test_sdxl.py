"""SDXL: pooled text + size embedding (ADM) conditioning drives the SDXL-shaped UNet through every stage."""

import pytest
import torch
from conftest import assert_bit_identical, unet_snapshot

from devkit.erasure import predict
from spare_core import pipeline
from spare_core.adapter import ErasureAdapter
from spare_core.config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig

# Crosses the ComfyUI door where versions differ: SDXL's ADM conditioning built by each version's encode_adm.
pytestmark = pytest.mark.compat


def sdxl_conditioning(door, model, seed):
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(1, 77, 2048, generator=generator)
    pooled = torch.randn(1, 1280, generator=generator)
    return door.models.conditioning_from_tensors(model, context, pooled, width=1024, height=1024)


def test_sdxl_erasure_end_to_end(door, small_sdxl):
    assert door.models.model_family(small_sdxl) == "sdxl"
    forget, surrogate, retain, uncond = (sdxl_conditioning(door, small_sdxl, seed) for seed in range(4))
    assert forget.extra["y"].shape == (1, 2816), "SDXL's ADM vector: pooled 1280 + 6 size embeddings of 256"
    snapshot = unet_snapshot(small_sdxl)
    samples = SampleConfig(samples_per_prompt=2, steps=3, width=64, height=64)
    with door.session.denoiser_session(small_sdxl) as denoiser:
        erasure = pipeline.erase(denoiser, pipeline.EncodedPrompts(forget, surrogate, retain, uncond), samples,
                                 TrainConfig(steps=30, learning_rate=3e-3, overshoot=0.0), seed=0,
                                 saliency_config=SaliencyConfig(draws=2),
                                 timestep_config=TimestepConfig(bins=4, draws_per_bin=2))
    result, forget_samples = erasure.result, erasure.forget
    assert result.forget_losses[-1] < result.forget_losses[0]
    assert_bit_identical(small_sdxl, snapshot)

    adapter = ErasureAdapter(result.state_dict, {"base_model": "sdxl"})
    erased = door.patches.apply_adapter(small_sdxl, adapter, 1.0)
    generator = torch.Generator().manual_seed(9)
    noise = torch.randn(forget_samples.latents.shape, generator=generator)
    indices = torch.tensor([800, 900])
    base = predict(door, small_sdxl, forget_samples.latents, noise, indices, forget)
    target = predict(door, small_sdxl, forget_samples.latents, noise, indices, surrogate)
    after = predict(door, erased, forget_samples.latents, noise, indices, forget)
    assert (after - target).norm() < (base - target).norm()
