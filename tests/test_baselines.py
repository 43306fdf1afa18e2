"""Baselines run beside SPARE in benchmarks: UCE's closed-form edit and ESD-x's fine-tuning."""

import torch

from benchmarks.baselines import ESDConfig, UCEConfig, cross_attention_linears, edit_uce, text_projections, train_esd_x
from devkit import model_factory
from devkit.erasure import random_prompts


def test_uce_maps_the_concept_onto_its_target_and_keeps_preserved_concepts(small_sd15):
    unet = small_sd15.model.diffusion_model
    prompts = random_prompts(seed=8)
    concept, target = prompts.forget.context[0, :8], prompts.surrogate.context[0, :8]
    kept = prompts.retain.context[0, :8]
    edited = edit_uce(unet, [(concept, target)], [kept], UCEConfig(regularisation=0.01))
    assert set(edited) == set(text_projections(unet)) and all(n.endswith(("to_k", "to_v")) for n in edited)
    for name, layer in text_projections(unet).items():
        old = layer.weight.detach().float()
        new = edited[name]
        before = (concept @ old.T - target @ old.T).norm()
        after = (concept @ new.T - target @ old.T).norm()
        drift = (kept @ new.T - kept @ old.T).norm()
        assert after < 0.1 * before, name
        assert drift < 0.1 * before, name
        assert torch.equal(layer.weight.detach().float(), old), "UCE returns new weights; the model is untouched"


def test_esd_x_trains_only_cross_attention_and_restores_the_model(door, small_sd15):
    prompts = random_prompts(seed=9)
    unet = small_sd15.model.diffusion_model
    before = {n: m.weight.detach().clone() for n, m in cross_attention_linears(unet).items()}
    with door.session.denoiser_session(small_sd15) as denoiser:
        losses = []
        weights = train_esd_x(denoiser, prompts.forget, prompts.uncond,
                              ESDConfig(iterations=3, learning_rate=1e-3, sampling_steps=4, latent_size=4), seed=0,
                              on_step=lambda step, loss: losses.append(loss))
    assert len(losses) == 3 and set(weights) == set(before)
    assert any(not torch.equal(weights[n], before[n]) for n in before), "ESD-x must change cross-attention"
    assert all(torch.equal(m.weight, before[n]) for n, m in cross_attention_linears(unet).items())


def test_esd_x_trains_a_bfloat16_model_through_float32_master_weights(door):
    """A GPU holds the model in half precision; ESD-x's trained copies stay float32 and the model keeps its own."""
    model = model_factory.small_sd15_model(seed=0, dtype=torch.bfloat16)
    prompts = random_prompts(seed=9)
    unet = model.model.diffusion_model
    before = {n: m.weight.detach().clone() for n, m in cross_attention_linears(unet).items()}
    assert all(w.dtype == torch.bfloat16 for w in before.values())
    with door.session.denoiser_session(model) as denoiser:
        weights = train_esd_x(denoiser, prompts.forget, prompts.uncond,
                              ESDConfig(iterations=2, learning_rate=1e-3, sampling_steps=4, latent_size=4), seed=0)
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert any(not torch.equal(weights[n].to(torch.bfloat16), before[n]) for n in before)
    assert all(torch.equal(m.weight, before[n]) for n, m in cross_attention_linears(unet).items())
