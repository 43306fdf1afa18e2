"""The trainer's mechanics on a pure-torch toy denoiser (no ComfyUI, milliseconds a step): the overshoot target, the
early stop, and teacher targets batched over steps. Erasure on real ComfyUI models is tested in
test_erasure_training.py (SD) and test_dit.py (Flux, SD3, Lumina 2); what is checked here is the same code path with
a model small enough to train to convergence in a second."""

import dataclasses
import math

import pytest
import torch
from toy_models import CHANNELS, SIDE, PlantedModules, ddpm_sigmas, denoiser_for, gate_conditioning, samples_for

from spare_core.config import TimestepConfig, TrainConfig
from spare_core.lora import SparseLoRASet
from spare_core.saliency import every_module
from spare_core.samples import ConceptSamples
from spare_core.timesteps import select_timesteps
from spare_core.trainer import ErasureCheck, nearer_surrogate_share, train_adapter

BRANCHES = 8
SHARED = BRANCHES  # the gate slot of the module every prompt uses
# eps(forget) = branch 2 + branch 5 + shared; eps(surrogate) = branch 3 + shared; eps(retain) = branch 0 + shared.
# Adapters on branches 2 and 5 can map the concept exactly onto the surrogate, so the toy trains to convergence.
FORGET, SURROGATE, RETAIN = [2, 5, SHARED], [3, SHARED], [0, SHARED]


@dataclasses.dataclass
class Toy:
    denoiser: object
    forget: ConceptSamples
    surrogate: object
    retain: ConceptSamples

    def train(self, config: TrainConfig, seed: int = 0, denoiser=None):
        denoiser = denoiser or self.denoiser
        timesteps = select_timesteps(denoiser, self.forget, self.surrogate, TimestepConfig(bins=4, draws_per_bin=2),
                                     seed=0)
        return train_adapter(denoiser, every_module(denoiser.unet), timesteps, self.forget, self.surrogate,
                             self.retain, config, seed)

    def predictions(self, result, cond, seed: int = 99) -> torch.Tensor:
        """The toy's noise prediction with ``result``'s adapter attached (None: the base), on held-out draws."""
        generator = torch.Generator().manual_seed(seed)
        x0 = torch.randn(64, CHANNELS, SIDE, SIDE, generator=generator)
        indices = torch.randint(0, len(self.denoiser.sigmas), (64,), generator=generator)
        x_t, sigma = self.denoiser.add_noise(x0, torch.randn(x0.shape, generator=generator), indices)
        rows = cond.select(torch.zeros(64, dtype=torch.long))
        with torch.no_grad():
            if result is None:
                return self.denoiser.predict_noise(x_t, sigma, rows)
            adapters = SparseLoRASet.from_kohya_state_dict(self.denoiser.unet, result.state_dict)
            with adapters.attached(self.denoiser.unet):
                return self.denoiser.predict_noise(x_t, sigma, rows)


@pytest.fixture()
def toy():
    gates = BRANCHES + 1
    return Toy(denoiser_for(PlantedModules(BRANCHES), ddpm_sigmas()),
               samples_for(gate_conditioning(FORGET, gates), count=8, seed=0), gate_conditioning(SURROGATE, gates),
               samples_for(gate_conditioning(RETAIN, gates), count=8, seed=1))


def _progress_along_the_gap(concept, surrogate, student) -> float:
    """Where the student's prediction lies on the line from the concept (0) to the surrogate (1)."""
    direction = (surrogate - concept).flatten()
    return float((student - concept).flatten() @ direction / (direction @ direction))


def test_overshoot_moves_the_concept_past_the_surrogate(toy):
    """overshoot = 1 aims at ε(surrogate) + 1·(ε(surrogate) − ε(concept)): trained to convergence, the concept's
    prediction ends beyond the surrogate along the gap (near 2), the run without overshoot at it (near 1), on held-out
    draws (measured 1.98 and 0.99); the trainer's own check measures the share closed towards each run's own target
    (a norm, so it also counts error across the gap: 0.90 and 0.78)."""
    forget = toy.forget.cond.select(torch.zeros(1, dtype=torch.long))
    concept, surrogate = toy.predictions(None, forget), toy.predictions(None, toy.surrogate)
    progress = {}
    for overshoot in (0.0, 1.0):
        result = toy.train(TrainConfig(rank=8, steps=300, learning_rate=2e-2, overshoot=overshoot, check_every=50))
        progress[overshoot] = _progress_along_the_gap(concept, surrogate, toy.predictions(result, forget))
        assert result.final_check.gap_closed > 0.5, (overshoot, result.final_check)
    assert progress[0.0] == pytest.approx(1.0, abs=0.15), progress
    assert progress[1.0] == pytest.approx(2.0, abs=0.25), progress


def test_training_stops_once_the_target_share_of_the_gap_is_closed(toy):
    result = toy.train(TrainConfig(rank=8, steps=400, learning_rate=1e-2, erase_target=0.4, check_every=5,
                                   overshoot=0.0))
    assert result.steps_done < 400 and result.steps_done % 5 == 0
    assert result.final_check.gap_closed >= 0.4 > result.checks[-2].gap_closed
    assert len(result.losses) == result.steps_done


def test_teacher_targets_batched_over_steps_train_the_same_adapter(toy):
    """Several steps' frozen-model targets in one pass (the CPU default) must be a speed-up only.

    - The draws are the same, exactly: every pass sees the same noisy inputs at the same noise levels, and the
      erasure checks (where a pass must end) fall on the same steps.
    - The targets differ only by float32 rounding: a batched matrix product may sum in another order, which moves
      each output by a few units in the last place (float32 eps = 1.2e-7, relative). The first step's loss is
      computed before any update, so it agrees to that rounding (rel 1e-5 allows ~80 eps of accumulated reordering).
    - The adapters agree to well within one optimizer step. AdamW moves each weight by about lr per step whatever
      its gradient's scale; a rounding difference in the gradient (relative ~1e-6) changes that step by a like share
      of lr, except for weights whose gradient is itself at rounding level, which the loss does not depend on. So no
      weight may differ by as much as 0.1·lr after 11 steps, on any CPU; a different draw moves weights by whole
      steps (the last assertion checks that this bound would notice one).
    """
    inputs = {}

    def recording(per_pass):
        seen = inputs.setdefault(per_pass, [])

        def predict_noise(x_t, sigma, cond):
            if not torch.is_grad_enabled():  # the teacher's passes (the student's run with gradients)
                seen.extend(zip(x_t.unbind(), sigma.unbind(), strict=True))
            return toy.denoiser.predict_noise(x_t, sigma, cond)
        return dataclasses.replace(toy.denoiser, predict_noise=predict_noise)

    lr = 1e-2
    runs = {per_pass: toy.train(TrainConfig(rank=4, steps=11, learning_rate=lr, check_every=4,
                                            teacher_batch_steps=per_pass), denoiser=recording(per_pass))
            for per_pass in (1, 8)}
    assert len(inputs[1]) == len(inputs[8]) > 0
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*inputs.values(), strict=True))
    assert [c.step for c in runs[8].checks] == [c.step for c in runs[1].checks] == [0, 4, 8, 11]
    assert runs[8].losses[0] == pytest.approx(runs[1].losses[0], rel=1e-5)
    assert runs[8].losses == pytest.approx(runs[1].losses, rel=1e-4)
    gap = max(float((runs[8].state_dict[k] - v).abs().max()) for k, v in runs[1].state_dict.items())
    assert gap < 0.1 * lr, gap
    other = toy.train(TrainConfig(rank=4, steps=11, learning_rate=lr, check_every=4), seed=1)
    assert max(float((other.state_dict[k] - v).abs().max()) for k, v in runs[1].state_dict.items()) > lr
    with pytest.raises(ValueError, match="teacher_batch_steps must be a whole number >= 0"):
        TrainConfig(teacher_batch_steps=-1)


def test_robust_mode_trains_only_the_adapter_and_adds_the_attacked_prompt_to_the_forget_term(toy):
    """Robust mode's inner attack optimises tokens against the student between steps: the frozen weights never
    change, and the attacked prompt's term changes the adapter trained."""
    before = {name: p.detach().clone() for name, p in toy.denoiser.unet.state_dict().items()}
    plain = toy.train(TrainConfig(rank=4, steps=20, learning_rate=1e-2, check_every=10))
    robust = toy.train(TrainConfig(rank=4, steps=20, learning_rate=1e-2, check_every=10, robust=True,
                                   robust_every=5, robust_attack_steps=3, robust_tokens=2))
    after = toy.denoiser.unet.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert robust.steps_done == plain.steps_done == 20
    assert any(not torch.equal(plain.state_dict[k], robust.state_dict[k]) for k in plain.state_dict)


@pytest.mark.parametrize("settings, message", [
    ({"robust_every": 0}, "robust_every must be a positive integer"),
    ({"robust": True, "steps": 20, "robust_every": 25}, r"robust_every \(25\) is larger than steps \(20\)"),
    ({"robust_tokens": 0}, "robust_tokens must be a positive integer"),
])
def test_robust_mode_settings_that_could_never_attack_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


@pytest.mark.parametrize("with_neighbours_and_attack", [False, True])
def test_micro_batches_add_up_to_the_whole_batch_gradient(toy, with_neighbours_and_attack):
    """Gradient accumulation (micro_batch < batch_size, what the memory planner lowers on a small GPU) takes the same
    step: the batch in parts of 4 and 2 rows, each part's loss weighed by its share, sums to the whole batch's
    gradient for every adapter tensor, to float32 rounding (parts sum in another order: rtol 1e-5)."""
    from spare_core import trainer
    denoiser = toy.denoiser
    timesteps = select_timesteps(denoiser, toy.forget, toy.surrogate, TimestepConfig(bins=4, draws_per_bin=2), seed=0)
    adapters = SparseLoRASet(denoiser.unet, 4, 4.0, every_module(denoiser.unet).row_masks, seed=0)
    with torch.no_grad():
        for adapter in adapters.adapters:  # up starts at zero; give down a gradient too
            adapter.up.normal_(std=0.1, generator=torch.Generator().manual_seed(1))
    neighbours = toy.retain if with_neighbours_and_attack else None
    tokens = torch.randn(2, toy.surrogate.context.shape[-1], generator=torch.Generator().manual_seed(2)) \
        if with_neighbours_and_attack else None
    draw = trainer._draw_step(denoiser, timesteps, toy.forget, toy.surrogate, toy.retain, 6,
                              torch.Generator().manual_seed(0), neighbours)

    def gradients(parts):
        for parameter in adapters.parameters():
            parameter.grad = None
        for rows, share in parts:
            loss, _, _ = trainer._student_loss(denoiser, draw, rows, 2.0, 4.0, tokens)
            (loss * share).backward()
        return [parameter.grad.clone() for parameter in adapters.parameters()]

    with adapters.attached(denoiser.unet):
        with adapters.disabled():
            trainer._teacher_targets(denoiser, [draw], 1.0)
        whole = gradients([(None, 1.0)])
        parts = gradients([(torch.arange(0, 4), 4 / 6), (torch.arange(4, 6), 2 / 6)])
        singles = gradients([(torch.arange(row, row + 1), 1 / 6) for row in range(6)])
    assert any(float(g.abs().max()) > 0 for g in whole)
    for a, b, c in zip(whole, parts, singles, strict=True):
        scale = float(a.abs().max())  # elements that are sums of cancelling terms are held to the tensor's scale
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6 * scale)
        # One-row parts run other CPU kernels (matrix-vector products), whose rounding differs more: elements that
        # are sums of cancelling terms move by up to 1e-5 of the gradient's scale.
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-5 * scale)


def test_training_in_micro_batches_trains_the_same_adapter(toy):
    """End to end: batch 4 in micro-batches of 2 follows the whole-batch run's losses and lands within a tenth of
    one AdamW step of its weights (measured: 3e-7, the bound of the batched-teacher test above, for the same
    reason). Micro-batches of 1 are not held to it: their matrix-vector kernels round differently, and AdamW turns a
    rounding-level gradient of either sign into a whole step for those few weights (measured: 150 of 1161 weights
    moved by more than 1e-3 after 11 steps, the loss by 5e-4 of itself)."""
    lr = 1e-2
    whole = toy.train(TrainConfig(rank=4, steps=11, learning_rate=lr, batch_size=4, check_every=4))
    parts = toy.train(TrainConfig(rank=4, steps=11, learning_rate=lr, batch_size=4, check_every=4, micro_batch=2))
    assert parts.losses == pytest.approx(whole.losses, rel=1e-5)
    gap = max(float((parts.state_dict[k] - v).abs().max()) for k, v in whole.state_dict.items())
    assert gap < 0.1 * lr, gap
    with pytest.raises(ValueError, match="micro_batch must be a whole number >= 0"):
        TrainConfig(micro_batch=-1)


def test_capture_step_on_a_cpu_trains_eagerly_and_says_so(toy, caplog):
    """The CUDA-graph capture path falls back to eager mode off CUDA: the same adapter bit for bit, one log line."""
    config = TrainConfig(rank=4, steps=5, learning_rate=1e-2, check_every=5)
    eager = toy.train(config)
    with caplog.at_level("INFO", logger="spare"):
        captured = toy.train(dataclasses.replace(config, capture_step=True))
    assert all(torch.equal(eager.state_dict[k], captured.state_dict[k]) for k in eager.state_dict)
    lines = [r.getMessage() for r in caplog.records if "capture_step" in r.getMessage()]
    assert lines == ["SPARE: capture_step needs a CUDA device; training eagerly on cpu"]


def test_nearer_surrogate_is_the_share_of_draws_that_crossed_to_the_surrogate():
    """The per-draw figure: a draw counts once the erased prediction for the concept lies nearer the surrogate's
    prediction than the concept's own, whatever its sigma."""
    concept, surrogate = torch.zeros(4, 1, 2, 2), torch.ones(4, 1, 2, 2)
    retain = torch.zeros(2, 1, 2, 2)
    student = torch.full((4, 1, 2, 2), 0.6)
    student[3] = 0.4  # three draws past the midpoint, one short of it
    sigmas = torch.tensor([0.1, 1.0, 10.0, 1.0])
    check = ErasureCheck.measure(1, concept, surrogate, student, retain, retain, sigmas, torch.ones(2), overshoot=1.0)
    assert check.nearer_surrogate == 0.75
    unchanged = ErasureCheck.measure(0, concept, surrogate, concept.clone(), retain, retain, sigmas, torch.ones(2))
    assert unchanged.nearer_surrogate == 0.0 and unchanged.gap_closed == 0.0


def test_guided_share_ignores_a_shift_of_every_prompt_and_counts_a_turned_direction():
    """The guided figure compares the concept's guidance direction ε(c_f) − ε(∅), the part classifier-free
    guidance multiplies: an adapter that moves the concept's prediction and the empty prompt's alike leaves the
    picture as it was and must not count, however near the surrogate the plain prediction came; a direction
    turned past the midpoint towards the surrogate's counts."""
    concept, surrogate = torch.zeros(4, 1, 2, 2), torch.ones(4, 1, 2, 2)
    empty = torch.full((4, 1, 2, 2), -1.0)
    retain = torch.zeros(2, 1, 2, 2)
    sigmas = torch.ones(4)
    shifted = ErasureCheck.measure(1, concept, surrogate, concept + 0.9, retain, retain, sigmas, torch.ones(2),
                                   unconditional=empty, student_unconditional=empty + 0.9)
    assert shifted.nearer_surrogate == 1.0 and shifted.guided_nearer_surrogate == 0.0
    turned = torch.full((4, 1, 2, 2), 0.6)
    turned[0] = 0.4
    erased = ErasureCheck.measure(1, concept, surrogate, turned, retain, retain, sigmas, torch.ones(2),
                                  unconditional=empty, student_unconditional=empty)
    assert erased.guided_nearer_surrogate == 0.75
    without_empty = ErasureCheck.measure(1, concept, surrogate, turned, retain, retain, sigmas, torch.ones(2))
    assert without_empty.guided_nearer_surrogate is None


def test_share_at_a_guidance_scale_weighs_the_empty_prompts_drift_as_the_sampler_does():
    """ε(∅) + w·(ε(c) − ε(∅)) is what a sampler at guidance w steps with: at w = 1 the share is the plain one, at
    w = inf the guided one, and in between the empty prompt's drift counts less the larger w is. Here (concept 0,
    surrogate 1, empty prompt −1) the erased model's concept prediction reached the surrogate's and its empty
    prompt's moved to −0.2, so its guidance direction is 1.2, short of the midpoint 1.5 between the concept's 1 and
    the surrogate's 2; the combined prediction −0.2 + 1.2·w is past the midpoint −1 + 1.5·w only while w < 8/3."""
    concept, surrogate = torch.zeros(4, 1, 2, 2), torch.ones(4, 1, 2, 2)
    empty = torch.full((4, 1, 2, 2), -1.0)
    student, student_empty = surrogate.clone(), torch.full((4, 1, 2, 2), -0.2)

    def share(w):
        return nearer_surrogate_share(concept, surrogate, student, empty, student_empty, guidance=w)

    assert share(1.0) == nearer_surrogate_share(concept, surrogate, student) == 1.0
    assert share(2.0) == 1.0
    assert share(3.0) == share(5.0) == share(math.inf) == 0.0
    guided = ErasureCheck.measure(1, concept, surrogate, student, empty[:2], empty[:2], torch.ones(4), torch.ones(2),
                                  unconditional=empty, student_unconditional=student_empty)
    assert (guided.nearer_surrogate, guided.guided_nearer_surrogate) == (share(1.0), share(math.inf))
    with pytest.raises(ValueError, match="empty-prompt predictions"):
        nearer_surrogate_share(concept, surrogate, student, guidance=5.0)
