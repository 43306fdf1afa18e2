"""Saliency and timestep selection find concept signals planted in known modules, rows and timesteps."""

import pytest
import torch
from toy_models import PlantedModules, PlantedTimesteps, ddpm_sigmas, denoiser_for, gate_conditioning, samples_for

from spare_core.config import SaliencyConfig, TimestepConfig
from spare_core.denoiser import flow_sigmas_as_noise_levels
from spare_core.saliency import compute_saliency
from spare_core.timesteps import select_timesteps

BRANCHES = 8
FORGET_BRANCHES = [2, 5]
SHARED_GATE = BRANCHES  # the last gate slot switches the shared module
PLANTED_ROWS = {2: [1, 4, 7, 10], 5: [0, 3, 6, 9]}


@pytest.fixture()
def planted():
    module = PlantedModules(BRANCHES, PLANTED_ROWS)
    denoiser = denoiser_for(module, ddpm_sigmas())
    forget = gate_conditioning(FORGET_BRANCHES + [SHARED_GATE], BRANCHES + 1)
    retain = gate_conditioning([0, SHARED_GATE], BRANCHES + 1)
    return denoiser, forget, retain


def test_plain_saliency_keeps_every_module_the_concept_reaches(planted):
    denoiser, forget, _ = planted
    config = SaliencyConfig(module_fraction=3 / 9, retain_contrast=0.0)
    result = compute_saliency(denoiser, samples_for(forget), None, config, seed=0)
    assert set(result.selected) == {"branches.2", "branches.5", "shared"}
    assert result.module_scores["branches.0"] == 0.0


def test_retain_contrast_drops_modules_shared_with_retained_concepts(planted):
    denoiser, forget, retain = planted
    config = SaliencyConfig(module_fraction=2 / 9, retain_contrast=1.0)
    result = compute_saliency(denoiser, samples_for(forget), retain, config, seed=0)
    assert set(result.selected) == {"branches.2", "branches.5"}
    kept = min(result.module_scores[name] for name in result.selected)
    assert result.module_scores["shared"] < 0.5 * kept
    assert result.module_scores["branches.0"] == 0.0


def test_row_saliency_finds_the_planted_rows(planted):
    denoiser, forget, retain = planted
    config = SaliencyConfig(module_fraction=2 / 9, row_fraction=4 / 16, retain_contrast=1.0)
    result = compute_saliency(denoiser, samples_for(forget), retain, config, seed=0)
    for branch, rows in PLANTED_ROWS.items():
        mask = result.row_masks[f"branches.{branch}"]
        assert torch.nonzero(mask).flatten().tolist() == rows


def flow_schedule(shift: float = 3.0, steps: int = 1000) -> torch.Tensor:
    """SD3's shifted flow-matching schedule s(t) as the noise levels s / (1 - s) the core sees (top level clamped)."""
    t = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    return flow_sigmas_as_noise_levels(shift * t / (1 + (shift - 1) * t))


@pytest.mark.parametrize("schedule", ["ddpm", "flow"])
def test_timestep_selection_finds_the_planted_range(schedule):
    sigmas = ddpm_sigmas() if schedule == "ddpm" else flow_schedule()
    denoiser = denoiser_for(PlantedTimesteps(sigmas, low=300, high=500), sigmas)
    forget, surrogate = gate_conditioning([0, 1], 8), gate_conditioning([5], 8)
    result = select_timesteps(denoiser, samples_for(forget), surrogate,
                              TimestepConfig(bins=10, top_fraction=0.2), seed=0)
    assert result.selected_bins() == (3, 4)
    assert all(score == 0.0 for k, score in enumerate(result.scores) if k not in (3, 4))
    drawn = result.sample_indices(2000, torch.Generator().manual_seed(1))
    assert int(drawn.min()) >= 300 and int(drawn.max()) < 500

    everywhere = select_timesteps(denoiser, samples_for(forget), surrogate, TimestepConfig(bins=10), seed=0)
    assert everywhere.selected_bins() == (3, 4), "bins where the concept changes nothing must get probability 0"


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_temperature_orders_sharpness(temperature):
    from spare_core.timesteps import distribution_from_scores, equal_bins
    scores = [1.0, 2.0, 4.0, 8.0]
    result = distribution_from_scores(scores, equal_bins(1000, 4), TimestepConfig(bins=4, temperature=temperature))
    expected = torch.tensor(scores) ** (1 / temperature)
    assert torch.allclose(torch.tensor(result.probabilities), (expected / expected.sum()).float(), atol=1e-6)
