"""The Erasure Report node through ComfyUI's executor on the demo model, with the quick preset: it attacks a fresh
erasure and reports what comes back, and refuses a MODEL that does not carry the adapter."""

import pytest


def _graph(checkpoint: str, report_model: list, concept: str = "") -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "SpareTrainAdapter", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "forget_prompts": "neon style", "surrogate_prompt": "pastel style",
            "retain_prompts": "", "rank": 4, "alpha": 4.0, "steps": 40, "learning_rate": 0.003,
            "retain_weight": 2.0, "batch_size": 2, "samples": 2, "resolution": 0, "seed": 0}},
        "3": {"class_type": "SpareErasureReport", "inputs": {
            "model": report_model, "clip": ["1", 1], "adapter": ["2", 0], "preset": "quick", "seed": 0,
            **({"concept": concept} if concept else {})}},
    }


@pytest.fixture(scope="module")
def reported(comfy, synthcanvas_checkpoint):
    run = comfy.run_prompt(_graph(synthcanvas_checkpoint, ["2", 1]))
    assert run.success, run.error
    return run


def test_the_report_attacks_the_erasure_and_says_what_comes_back(reported):
    text, chart, prompt = (reported.outputs["3"][slot][0] for slot in range(3))
    assert "erasure report for 'neon style' (quick preset)" in text
    assert "soft-token attack" in text and "discrete search (16 prompts)" in text
    assert "neutral prompts (no concept at all)" in text  # the floor an attack's share is read against
    assert chart.ndim == 4 and chart.shape[-1] == 3
    # The adapter's first forget prompt with three words in place of 'neon': a prompt the user can sample.
    assert prompt.endswith(" style") and "neon" not in prompt.lower().split()
    assert "in place of 'neon', e.g. " + repr(prompt) in text


def test_a_model_without_the_adapter_is_refused_naming_both(comfy, synthcanvas_checkpoint):
    run = comfy.run_prompt(_graph(synthcanvas_checkpoint, ["1", 0]))
    assert not run.success
    assert "does not carry this adapter (erasing 'neon style')" in str(run.error)


def test_the_word_search_draws_from_the_words_the_tokenizer_knows(comfy, synthcanvas_checkpoint):
    import torch

    from spare_core.comfyui import models
    with torch.inference_mode():
        clip = comfy.node("CheckpointLoaderSimple").load_checkpoint(synthcanvas_checkpoint)[1]
    words = models.tokenizer_words(clip)
    assert len(words) > 10000 and {"neon", "painting", "dog"} <= set(words)
    assert all(w.isalpha() and len(w) >= 3 for w in words)


def test_a_concept_other_than_the_adapters_is_attacked_with_a_warning_naming_both(comfy, synthcanvas_checkpoint,
                                                                                caplog):
    with caplog.at_level("WARNING", logger="spare"):
        run = comfy.run_prompt(_graph(synthcanvas_checkpoint, ["2", 1], concept="glowing style"))
    assert run.success, run.error
    assert "erasure report for 'glowing style'" in run.outputs["3"][0][0]
    assert "attacking 'glowing style', but this adapter erases 'neon style'" in caplog.text
    assert "glowing" not in run.outputs["3"][2][0].split()  # the word search leaves the attacked phrase's words out


def test_a_robust_adapter_gives_back_less_to_the_soft_token_attack_than_a_plain_one(comfy, synthcanvas_checkpoint):
    """The robust mode's point, on the demo model: the same erasure trained with the Train node's robust input on
    holds better against the soft-token attack, as the Erasure Report's job measures it (share of the erasure
    undone), than the one trained without. Short trainings (50 steps; the robust one attacks at steps 0 and 25) and
    a mid-sized attack keep it to about a minute."""
    import torch

    from spare_core import attacks
    from spare_core.comfyui import jobs
    with torch.inference_mode():
        model, clip = comfy.node("CheckpointLoaderSimple").load_checkpoint(synthcanvas_checkpoint)[:2]
    train = comfy.nodes.NODE_CLASS_MAPPINGS["SpareTrainAdapter"]()
    inputs = {"model": model, "clip": clip, "forget_prompts": "neon style", "surrogate_prompt": "pastel style",
              "retain_prompts": "", "rank": 4, "alpha": 4.0, "steps": 50, "learning_rate": 0.003,
              "retain_weight": 2.0, "batch_size": 2, "samples": 2, "resolution": 0, "seed": 0}
    budget = (attacks.SoftTokenBudget(tokens=4, steps=60, learning_rate=0.2, draws=8),
              attacks.DiscreteBudget(queries=1, words=1, batch=1))
    undone = {}
    for robust in (False, True):
        trained = train.job(**inputs, robust=robust)
        assert jobs.header_value(trained.adapter.metadata, "robust") is robust  # the header records the mode
        forget = jobs.header_value(trained.adapter.metadata, "forget_prompts")[:jobs.REPORT_PROMPTS]
        found = jobs.attack_erasure(model, trained.model, clip, forget, "neon", ["neon style"], budget, seed=0)
        undone[robust] = found.soft_token.restored
    assert undone[True] < undone[False] - 0.05, undone
