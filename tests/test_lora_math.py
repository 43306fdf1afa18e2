"""The sparse LoRA: exact no-op at start, hook forward equals the weight patch, masked rows stay zero."""

import pytest
import torch
from torch import nn

from spare_core.adapter import kohya_name
from spare_core.lora import SparseLoRA, SparseLoRASet


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(12, 10)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)

    def forward(self, x, v):
        return self.proj(x), self.conv(v)


def inputs():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(5, 12, generator=generator), torch.randn(2, 3, 9, 9, generator=generator)


def test_adapter_starts_as_exact_no_op():
    model = TwoLayers()
    before = model(*inputs())
    lora_set = SparseLoRASet(model, rank=3, alpha=3.0, row_masks={"proj": None, "conv": None}, seed=0)
    with lora_set.attached(model):
        after = model(*inputs())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("path", ["proj", "conv"])
def test_hook_forward_equals_patched_weight(path):
    model = TwoLayers()
    mask = torch.zeros(model.get_submodule(path).weight.shape[0], dtype=torch.bool)
    mask[::2] = True
    lora_set = SparseLoRASet(model, rank=2, alpha=5.0, row_masks={path: mask}, seed=0)
    adapter = lora_set.adapters[0]
    with torch.no_grad():
        adapter.up.normal_()
    with lora_set.attached(model):
        hooked = model(*inputs())
    with torch.no_grad():
        model.get_submodule(path).weight += adapter.delta_weight()
    patched = model(*inputs())
    for a, b in zip(hooked, patched, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    delta = adapter.delta_weight()
    assert torch.count_nonzero(delta[~mask]) == 0
    state = lora_set.kohya_state_dict()
    assert torch.count_nonzero(state[f"{kohya_name(path)}.lora_up.weight"][~mask]) == 0


def test_gradients_never_reach_masked_rows():
    model = TwoLayers()
    mask = torch.tensor([True, False] * 5)
    lora_set = SparseLoRASet(model, rank=2, alpha=2.0, row_masks={"proj": mask}, seed=0)
    with lora_set.attached(model):
        model(*inputs())[0].square().sum().backward()
    assert torch.count_nonzero(lora_set.adapters[0].up.grad[~mask]) == 0
    assert torch.count_nonzero(lora_set.adapters[0].up.grad[mask]) > 0


def test_hooks_are_removed_even_when_the_forward_fails():
    model = TwoLayers()
    lora_set = SparseLoRASet(model, rank=2, alpha=2.0, row_masks={"proj": None}, seed=0)
    with pytest.raises(RuntimeError):
        with lora_set.attached(model):
            model(torch.zeros(1, 7), torch.zeros(1, 3, 4, 4))
    assert not model.proj._forward_hooks


def test_rank_above_what_a_module_allows_is_refused():
    with pytest.raises(ValueError, match=r"module conv: rank 28 is too large .* at most 6"):
        SparseLoRASet(TwoLayers(), rank=28, alpha=1.0, row_masks={"conv": None}, seed=0)


def test_adapter_parameters_are_float32_for_half_models():
    model = TwoLayers().half()
    adapter = SparseLoRA(model.proj, 2, 2.0, None, torch.Generator().manual_seed(0))
    assert adapter.down.dtype == adapter.up.dtype == torch.float32


def test_round_trip_through_kohya_state_dict():
    model = TwoLayers()
    lora_set = SparseLoRASet(model, rank=2, alpha=3.0, row_masks={"proj": None, "conv": None}, seed=0)
    with torch.no_grad():
        for adapter in lora_set.adapters:
            adapter.up.normal_()
    with lora_set.attached(model):
        expected = model(*inputs())
    rebuilt = SparseLoRASet.from_kohya_state_dict(model, lora_set.kohya_state_dict())
    with rebuilt.attached(model):
        actual = model(*inputs())
    for a, b in zip(expected, actual, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("path", ["proj", "conv"])
def test_half_precision_model_gets_a_matching_update_and_float32_gradients(path):
    model = TwoLayers()
    lora_set = SparseLoRASet(model, rank=2, alpha=2.0, row_masks={path: None}, seed=0)
    adapter = lora_set.adapters[0]
    with torch.no_grad():
        adapter.up.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    x = inputs()[0 if path == "proj" else 1]
    reference = adapter.delta_output(x)
    half = adapter.delta_output(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16, "the update is computed in the model's dtype"
    assert (half.float() - reference).norm() <= 1e-2 * reference.norm()
    half.float().square().sum().backward()
    assert adapter.up.grad.dtype == torch.float32 and adapter.down.grad.dtype == torch.float32
    assert adapter.up.grad.abs().sum() > 0
