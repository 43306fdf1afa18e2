"""SD2.x v-prediction: the same ε-space distillation trains through ComfyUI's v-prediction sampling."""

import pytest
import torch

from devkit.erasure import predict, random_prompts
from devkit.model_factory import small_sd2_vpred_model
from spare_core import pipeline
from spare_core.adapter import ErasureAdapter
from spare_core.config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig

# Crosses the ComfyUI door where versions differ: v-prediction model_sampling of each version.
pytestmark = pytest.mark.compat


def test_sd2_v_prediction_erasure(comfy, door):
    import comfy.model_sampling
    model = small_sd2_vpred_model()
    assert door.models.model_family(model) == "sd2"
    assert isinstance(model.model.model_sampling, comfy.model_sampling.V_PREDICTION)
    prompts = random_prompts(context_dim=1024, seed=3)
    samples = SampleConfig(samples_per_prompt=2, steps=3, width=64, height=64)
    with door.session.denoiser_session(model) as denoiser:
        erasure = pipeline.erase(denoiser, prompts, samples, TrainConfig(steps=40, learning_rate=3e-3, overshoot=0.0),
                                 seed=0, saliency_config=SaliencyConfig(draws=2),
                                 timestep_config=TimestepConfig(bins=4, draws_per_bin=2))
    result, forget = erasure.result, erasure.forget
    erased = door.patches.apply_adapter(model, ErasureAdapter(result.state_dict), 1.0)
    noise = torch.randn(forget.latents.shape, generator=torch.Generator().manual_seed(4))
    indices = torch.tensor([600, 900])
    target = predict(door, model, forget.latents, noise, indices, prompts.surrogate)
    before = predict(door, model, forget.latents, noise, indices, prompts.forget)
    after = predict(door, erased, forget.latents, noise, indices, prompts.forget)
    assert (after - target).norm() < 0.8 * (before - target).norm()
