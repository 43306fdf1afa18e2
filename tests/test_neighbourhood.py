"""Concept neighbourhoods on the SynthCanvas demo model, through ComfyUI's executor: the Concept Neighbourhood node
finds what the unerased model confuses with a concept, the erase_with_neighbours example keeps the neighbours it
found with the adjacency term, and the term changes the adapter and keeps the neighbours better than no term."""

from pathlib import Path

import pytest
import torch
import workflows

from benchmarks.unlearncanvas import node_defaults
from spare_core.adapter import AdapterMetadata, describe, load_adapter
from spare_core.neighbours import Neighbourhood
from synthcanvas import classifier, evaluation
from synthcanvas.generation import generate
from synthcanvas.render import OBJECTS, STYLES, caption

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example_workflows" / "api" / "erase_with_neighbours.json"
HELD_OUT_SEED = 4_000_031  # neither training's seeds, the dev seeds nor the benchmarks'


@pytest.fixture(scope="module")
def demo(comfy, synthcanvas_checkpoint):
    with torch.inference_mode():
        return comfy.node("CheckpointLoaderSimple").load_checkpoint(synthcanvas_checkpoint)[:3]


@pytest.fixture(scope="module")
def with_neighbours(comfy, synthcanvas_checkpoint):
    return workflows.run_example_saving_first(comfy, EXAMPLE, "spare_erase_with_neighbours")


def _find(comfy, model, clip, concept: str, count: int, **inputs) -> Neighbourhood:
    node = comfy.nodes.NODE_CLASS_MAPPINGS["SpareConceptNeighbourhood"]
    return node().find(**{**node_defaults(node), "model": model, "clip": clip, "concept": concept, "count": count,
                          "vocabulary": "synthcanvas", **inputs})[0]


def test_the_node_ranks_first_the_object_the_unerased_model_confuses_with_the_concept(comfy, demo):
    """The unerased model's confusion, measured here: the shipped judge's mean probability of 'diamond' on images
    of each other object (every style, two seeds). The object it is most confused with must be the node's first."""
    model, clip, vae = demo
    others = [o for o in OBJECTS if o != "diamond"]
    prompts = [caption(o, s) for o in others for s in STYLES for _ in range(2)]
    images = generate(comfy.nodes, model, clip, vae, prompts, HELD_OUT_SEED)
    with torch.no_grad():
        object_logits, _ = classifier.load()(images.permute(0, 3, 1, 2).float().contiguous())
    probability = object_logits.softmax(1)[:, OBJECTS.index("diamond")].view(len(others), -1).mean(1)
    confused_most = others[int(probability.argmax())]
    found = _find(comfy, model, clip, "a diamond", 3)
    assert found.neighbours[0] == f"a {confused_most}", (found, dict(zip(others, probability.tolist(), strict=True)))


def test_both_rankings_return_k_candidates_nearest_first_never_the_concept(comfy, demo):
    model, clip, _ = demo
    for ranking in ("text", "model"):
        found = _find(comfy, model, clip, "neon style", 5, ranking=ranking, candidates="a lighthouse")
        assert found.ranking == ranking and found.candidates == 16  # 15 demo concepts and the user's line
        assert len(found.neighbours) == 5 and "neon style" not in found.neighbours
        assert list(found.distances) == sorted(found.distances)


def test_the_example_records_its_neighbours_and_keeps_them(comfy, with_neighbours):
    adapter = load_adapter(comfy.folder("loras") / "spare_erase_with_neighbours_00001_.safetensors")
    metadata = AdapterMetadata.from_header(adapter.metadata)
    found = with_neighbours.outputs["2"][0][0]
    # The header keeps the distances to 6 decimals; which neighbours, in which order, by which ranking, exactly.
    assert (metadata.neighbourhood.neighbours, metadata.neighbourhood.ranking) == (found.neighbours, found.ranking)
    assert found.neighbours[0] == "striped style"
    assert metadata.train.adjacency_weight == 4.0
    for name in (n[:-len(" style")] for n in found.neighbours):  # each neighbour has prompts of its own
        assert any(name in prompt for prompt in metadata.prompts.neighbours), (name, metadata.prompts.neighbours)
    assert describe(adapter.metadata)["neighbours"] == list(found.neighbours)
    # The retain box was wired from the node's lines: the neighbours are kept by both terms.
    assert with_neighbours.outputs["2"][1][0] == "\n".join(found.neighbours)
    chart = with_neighbours.outputs["2"][2][0]
    assert chart.ndim == 4 and chart.shape[-1] == 3

    decoded = {"neon": ("10", "13"), "striped": ("16", "19")}  # VAEDecode before / after, 4 seeds each
    styles = {(label, when): evaluation.classify(with_neighbours.outputs[node][0][0])[1]
              for label, nodes in decoded.items() for when, node in zip(("before", "after"), nodes, strict=True)}
    neon, striped = STYLES.index("neon"), STYLES.index("striped")
    assert (styles["neon", "before"] == neon).sum() >= 3 and (styles["neon", "after"] == neon).sum() <= 1, styles
    assert (styles["striped", "before"] == striped).sum() >= 3, styles
    assert (styles["striped", "after"] == striped).sum() >= 3, styles  # the nearest neighbour stays


def test_the_adjacency_term_changes_the_adapter_and_keeps_the_neighbours_better(comfy, demo):
    """A star → a circle with an empty retain box (which costs the other objects most on this model,
    docs/synthcanvas.md), once alone and once with its three neighbours in the adjacency term; on a held-out seed the
    neighbours (drawn in every style) are recognised more often with the term."""
    model, clip, vae = demo
    found = _find(comfy, model, clip, "a star", 3)
    train = comfy.nodes.NODE_CLASS_MAPPINGS["SpareTrainAdapter"]
    inputs = {**node_defaults(train), "model": model, "clip": clip, "forget_prompts": "a star",
              "surrogate_prompt": "a circle", "retain_prompts": ""}
    alone = train().job(**inputs)
    kept = train().job(**inputs, neighbours=found)
    assert any(not torch.equal(alone.adapter.tensors[k], kept.adapter.tensors[k]) for k in alone.adapter.tensors)

    names = [n.removeprefix("a ") for n in found.neighbours]
    prompts = [caption(o, s) for o in names for s in STYLES]

    def recognised(m) -> float:
        objects, _ = evaluation.classify(generate(comfy.nodes, m, clip, vae, prompts, HELD_OUT_SEED))
        truth = torch.tensor([OBJECTS.index(o) for o in names for _ in STYLES])
        return float((objects == truth).float().mean())
    before, without_term, with_term = recognised(model), recognised(alone.model), recognised(kept.model)
    assert with_term > without_term, (before, without_term, with_term)
