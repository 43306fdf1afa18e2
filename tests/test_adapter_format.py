"""The adapter's header: one record (AdapterMetadata) of the prompts, every stage's settings, the seed and the figures,
written by the Train node and read back by everything that reads adapters; the header alone trains the same adapter
again."""

import json

import pytest
import torch

from spare_core.adapter import AdapterMetadata, ErasureFigures, describe, erasure_verdict, load_adapter
from spare_core.config import SaliencyConfig, SampleConfig, TimestepConfig, TrainConfig
from spare_core.neighbours import Neighbourhood
from spare_core.prompts import ErasurePrompts


def _metadata(prompts: ErasurePrompts, **changes) -> AdapterMetadata:
    values = dict(
        prompts=prompts, base_model="sd1", seed=2**63 + 5, samples=SampleConfig(samples_per_prompt=3, cfg=4.5),
        train=TrainConfig(steps=7, learning_rate=1.7e-4, erase_target=0.9, overshoot=0.25),
        saliency=SaliencyConfig(module_fraction=0.3, retain_contrast=0.5), timestep_config=TimestepConfig(bins=3),
        timestep_bin_edges=(0, 333, 666, 1000), timestep_scores=(0.1, 1 / 3, 2.0),
        timestep_probabilities=(0.1 / 2.4333333333333336, (1 / 3) / 2.4333333333333336, 2.0 / 2.4333333333333336),
        modules=12, module_fraction=0.3, row_fraction=1.0,
        figures=ErasureFigures(steps_done=7, gap_closed=0.93, retain_drift=0.012, concept_gap=0.1234567891,
                               nearer_surrogate=0.9375, guided_nearer_surrogate=0.625, verdict="partly erased",
                               checks=((5, 0.5, 0.01), (7, 0.93, 0.012)), final_loss=0.03),
        created="2026-12-06T03:00:00+00:00")
    values.update(changes)
    return AdapterMetadata(**values)


@pytest.mark.parametrize("prompts", [
    ErasurePrompts.parse("Van Gogh style", "a painting", "Monet style\na dog"),
    ErasurePrompts.parse("a cat on a sofa\na cat in a garden", "a dog on a sofa\na dog in a garden", ""),
    ErasurePrompts.parse("neon style -> pastel style\na star -> a circle", "a painting", "a ring\nmosaic style"),
], ids=["concept phrase", "full prompts", "several concepts"])
def test_the_header_holds_every_setting_exactly(prompts):
    metadata = _metadata(prompts)
    header = metadata.to_header()
    assert all(isinstance(key, str) and isinstance(value, str) for key, value in header.items())  # safetensors rule
    back = AdapterMetadata.from_header(header)
    # The figure rounded for people (the gap's size) is the one field that is not stored exactly.
    assert back == _metadata(prompts, figures=ErasureFigures(**{**metadata.figures.__dict__, "concept_gap": 0.123457}))
    assert back.prompts.surrogates == prompts.surrogates and back.prompts.retain_or_unconditional == \
        prompts.retain_or_unconditional
    assert back.not_reproducible_because is None
    # Kohya-style tools read the rank and alpha from their usual keys; the Train node's settings stay flat keys.
    assert header["ss_network_dim"] == "4" and header["rank"] == "4" and json.loads(header["learning_rate"]) == 1.7e-4


def test_neighbours_and_their_weight_survive_the_header_and_older_headers_read_the_default_weight():
    found = Neighbourhood("neon style", "text", ("striped style", "a ring"), (0.0123456789, 0.02), 16)
    prompts = ErasurePrompts.parse("neon style", "pastel style").with_neighbours(found.neighbours)
    metadata = _metadata(prompts, neighbourhood=found, train=TrainConfig(steps=7, adjacency_weight=4.5))
    header = metadata.to_header()
    back = AdapterMetadata.from_header(header)
    assert back.prompts.neighbours == prompts.neighbours and back.train.adjacency_weight == 4.5
    assert back.neighbourhood.neighbours == found.neighbours and back.neighbourhood.distances[0] == 0.012346
    assert describe(header)["neighbours"] == ["striped style", "a ring"]
    older = {key: value for key, value in _metadata(ErasurePrompts.parse("a cat", "a dog")).to_header().items()
             if key != "adjacency_weight"}
    assert AdapterMetadata.from_header(older).train.adjacency_weight == TrainConfig().adjacency_weight
    assert describe(older)["neighbours"] == []


def test_stages_from_their_own_nodes_are_recorded_as_given():
    given = _metadata(ErasurePrompts.parse("a cat", "a dog"), saliency=None, timestep_config=None)
    back = AdapterMetadata.from_header(given.to_header())
    assert back.saliency is None and back.timestep_config is None
    assert back.timestep_probabilities == given.timestep_probabilities  # the distribution itself is kept
    assert "Compute Saliency Mask" in back.not_reproducible_because
    latents = AdapterMetadata.from_header(_metadata(ErasurePrompts.parse("a cat", "a dog"),
                                                    forget_latents_given=True).to_header())
    assert "forget latents" in latents.not_reproducible_because


def test_headers_that_are_not_a_complete_record_say_what_they_lack():
    header = _metadata(ErasurePrompts.parse("a cat", "a dog")).to_header()
    with pytest.raises(ValueError, match="not a SPARE erasure adapter"):
        AdapterMetadata.from_header({"ss_network_dim": "8"})
    older = {key: value for key, value in header.items() if key not in ("sample_config", "timestep_scores")}
    older["spare_version"] = "0.0.9"
    with pytest.raises(ValueError, match=r"lacks sample_config, timestep_scores: it was made by SPARE 0\.0\.9"):
        AdapterMetadata.from_header(older)


def test_any_lora_header_gives_figures_and_a_description():
    """The batch ledger and the library read the figures of any file: None where a header has none or a broken
    value, never an exception."""
    header = _metadata(ErasurePrompts.parse("a cat", "a dog")).to_header()
    figures = ErasureFigures.from_header(header)
    assert (figures.steps_done, figures.gap_closed, figures.checks[-1]) == (7, 0.93, (7, 0.93, 0.012))
    assert describe(header)["gap_closed"] == 0.93 and describe(header)["is_spare"]
    assert figures.nearer_surrogate == describe(header)["nearer_surrogate"] == 0.9375
    # The verdict as the file recorded it, with the share it was read from.
    assert (describe(header)["verdict"], describe(header)["verdict_share"]) == ("partly erased", 0.625)
    before_verdict = {key: value for key, value in header.items()
                      if key not in ("erasure_verdict", "erasure_guided_nearer_surrogate")}
    assert describe(before_verdict)["verdict"] is None and describe(before_verdict)["verdict_share"] is None
    # A file written before the per-draw figure existed describes it as absent.
    older = {key: value for key, value in header.items() if key != "erasure_nearer_surrogate"}
    assert describe(older)["nearer_surrogate"] is None and describe(older)["gap_closed"] == 0.93
    foreign = {"ss_network_dim": "16", "erasure_checks": "7", "steps_done": "many"}
    assert ErasureFigures.from_header(foreign).checks == () and ErasureFigures.from_header(foreign).gap_closed is None
    assert describe(foreign)["rank"] == 16 and not describe(foreign)["is_spare"]


def _train_and_save(checkpoint: str, file_name: str) -> dict:
    """Timestep Selector (4 bins) → Train (non-default overshoot, seed, a few steps) → Save: the Train node computes
    the saliency itself (at its defaults), the timesteps come from their own node."""
    small = {"samples": 1, "resolution": 64}
    forget, surrogate = "a painting in the style of Van Gogh", "a painting"
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "SpareTimestepSelector", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "forget_prompt": forget, "surrogate_prompt": surrogate,
            "bins": 4, "temperature": 2.0, "top_fraction": 1.0, "seed": 11, **small}},
        "3": {"class_type": "SpareTrainAdapter", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "forget_prompts": forget, "surrogate_prompt": surrogate,
            "retain_prompts": "a photo of a dog", "rank": 2, "alpha": 1.0, "steps": 4, "learning_rate": 2e-3,
            "retain_weight": 1.5, "batch_size": 1, "overshoot": 0.5, "seed": 7, "timesteps": ["2", 0], **small}},
        "4": {"class_type": "SpareSaveAdapter", "inputs": {"adapter": ["3", 0], "file_name": file_name,
                                                            "overwrite": True, "keep_float32": True}},
    }


def test_the_header_alone_trains_the_same_adapter_again(comfy, door, compact_sd1_checkpoint):
    run = comfy.run_prompt(_train_and_save(compact_sd1_checkpoint, "header_record.safetensors"))
    assert run.success, run.error
    saved = load_adapter(comfy.folder("loras") / "header_record.safetensors")
    metadata = AdapterMetadata.from_header(saved.metadata)
    assert (metadata.seed, metadata.train.overshoot, metadata.train.rank, metadata.samples.width) == (7, 0.5, 2, 64)
    assert metadata.saliency == SaliencyConfig() and metadata.timestep_config is None  # from its own node
    assert len(metadata.timestep_probabilities) == 4

    with torch.inference_mode():
        model, clip = comfy.node("CheckpointLoaderSimple").load_checkpoint(compact_sd1_checkpoint)[:2]
    again = door.jobs.retrain_from_header(model, clip, metadata).adapter
    assert again.tensors.keys() == saved.tensors.keys()
    differ = [key for key in saved.tensors if not torch.equal(again.tensors[key], saved.tensors[key])]
    assert not differ, f"{len(differ)} of {len(saved.tensors)} tensors differ, e.g. {differ[:3]}"
    assert AdapterMetadata.from_header(again.metadata).figures == metadata.figures


def test_the_verdict_reads_the_share_against_its_two_thresholds():
    lo, hi = 0.25, 0.75
    assert [erasure_verdict(share, (lo, hi)) for share in (0.0, 0.2499, 0.25, 0.7499, 0.75, 1.0)] == [
        "not erased", "not erased", "partly erased", "partly erased", "erased", "erased"]
    assert erasure_verdict(None) is None  # a file older than the figure has no verdict
