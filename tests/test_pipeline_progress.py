"""The node-level job on the stock-loaded checkpoint: progress every step, Cancel honoured, base untouched."""

import pytest
import torch
from conftest import assert_bit_identical, unet_snapshot

from spare_core.config import SampleConfig, TrainConfig
from spare_core.prompts import ErasurePrompts

# Crosses the ComfyUI door where versions differ: ComfyUI's progress bar hook and its interrupt.
pytestmark = pytest.mark.compat

PROMPTS = ErasurePrompts.parse("a painting in the style of Van Gogh", "a painting", "a photo of a dog")
SAMPLES = SampleConfig(samples_per_prompt=1, steps=2, width=64, height=64)


@pytest.fixture()
def progress_events(comfy):
    import comfy.utils
    events = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, *rest, **named:
                                             events.append((value, total)))
    yield events
    comfy.utils.set_progress_bar_global_hook(None)


def test_progress_advances_every_step_to_the_total(comfy, sd15, progress_events):
    from spare_core.comfyui import jobs
    model, clip, _ = sd15
    snapshot = unet_snapshot(model)
    with torch.inference_mode():  # as inside ComfyUI's executor
        trained = jobs.train_for_model(model, clip, PROMPTS, SAMPLES, TrainConfig(steps=3), seed=0)
    values = [value for value, _ in progress_events]
    total = progress_events[-1][1]
    assert values == list(range(1, total + 1))
    # 2 generation passes x 2 steps + 4 saliency draws + 10 timestep bins + 3 training steps
    assert total == 4 + 4 + 10 + 3
    assert len(trained.result.losses) == 3
    assert_bit_identical(model, snapshot)


def test_cancel_stops_training_and_leaves_the_model_untouched(comfy, sd15, progress_events):
    import comfy.model_management
    import comfy.utils

    from spare_core.comfyui import jobs
    model, clip, _ = sd15
    snapshot = unet_snapshot(model)
    before_training = 4 + 4 + 10  # generation, saliency, timestep steps on the bar (see the test above)

    def press_cancel_at_fifth_training_step(value, total, *rest, **named):
        progress_events.append((value, total))
        if value == before_training + 5:
            comfy.model_management.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(press_cancel_at_fifth_training_step)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        with torch.inference_mode():
            jobs.train_for_model(model, clip, PROMPTS, SAMPLES, TrainConfig(steps=50), seed=0)
    comfy.model_management.interrupt_current_processing(False)
    assert progress_events[-1][0] < progress_events[-1][1], "training must stop before the last step"
    assert_bit_identical(model, snapshot)
