"""The memory planner's decisions on given figures (no GPU needed): the settings as given when they fit, then
gradient checkpointing, then smaller micro-batches, and a plain warning when nothing fits."""

import pytest
import torch
from torch import nn

from spare_core import memory

GB = memory.GIB


def plan(free_gb, per_row_gb, *, batch=4, terms=2, checkpointing=False, can_checkpoint=True, micro=0, weights_gb=0):
    return memory.plan_training(None if free_gb is None else int(free_gb * GB), int(weights_gb * GB),
                                int(per_row_gb * GB), terms, batch, checkpointing, can_checkpoint, micro)


def test_on_a_cpu_nothing_changes():
    chosen = plan(None, 100.0)
    assert (chosen.gradient_checkpointing, chosen.micro_batch) == (False, 4)
    assert chosen.projected_gb is None and "CPU" in chosen.reason


def test_settings_that_fit_are_kept():
    # 2 terms x 4 rows x 1 GB = 8 GB, within 90 % of 12 GB
    chosen = plan(12, 1.0)
    assert (chosen.gradient_checkpointing, chosen.micro_batch) == (False, 4)
    assert chosen.projected_gb == pytest.approx(8.0) and "as given fit" in chosen.reason


def test_checkpointing_comes_first_when_it_is_enough():
    # 16 GB of activations as given; checkpointed a quarter of it, 4 GB: fits in 8 GB free
    chosen = plan(8, 2.0)
    assert (chosen.gradient_checkpointing, chosen.micro_batch) == (True, 4)
    assert "gradient checkpointing on" in chosen.reason and "micro-batch" not in chosen.reason


def test_then_micro_batches_halve_until_the_step_fits():
    # checkpointed: 2 terms x micro x 8 GB x 0.25 = 4 GB per micro-batch row; 10 GB free -> budget 9 GB -> micro 2
    chosen = plan(10, 8.0)
    assert (chosen.gradient_checkpointing, chosen.micro_batch) == (True, 2)
    assert "micro-batches of 2 with gradient accumulation (effective batch 4)" in chosen.reason


def test_a_model_without_known_blocks_only_gets_micro_batches():
    chosen = plan(10, 2.0, can_checkpoint=False)  # 2 terms x 2 GB = 4 GB per row of a micro-batch; budget 9 GB
    assert (chosen.gradient_checkpointing, chosen.micro_batch) == (False, 2)


def test_when_nothing_fits_the_smallest_setting_is_chosen_and_the_reason_says_so():
    chosen = plan(2, 40.0)
    assert (chosen.gradient_checkpointing, chosen.micro_batch) == (True, 1)
    assert "expect an out-of-memory error" in chosen.reason


def test_the_user_s_own_savings_are_kept_when_they_fit():
    chosen = plan(100, 1.0, checkpointing=True, micro=2)
    assert (chosen.gradient_checkpointing, chosen.micro_batch) == (True, 2)


def test_weights_that_are_not_on_the_device_yet_count_against_the_free_memory():
    assert plan(12, 1.0, weights_gb=0).gradient_checkpointing is False
    assert plan(12, 1.0, weights_gb=4).gradient_checkpointing is True  # 4 + 8 > 10.8


def test_activation_bytes_scale_with_the_latent_area():
    """One probe forward counts every leaf module's output bytes; a latent of 4x the area projects 4x."""
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 4, 3, padding=1))
    probe = torch.zeros(1, 4, 8, 8)
    at_probe = memory.activation_bytes_per_row(net, net, probe, 64)
    assert at_probe == (8 + 8 + 4) * 64 * 4  # conv, SiLU, conv outputs in float32
    assert memory.activation_bytes_per_row(net, net, probe, 256) == 4 * at_probe
