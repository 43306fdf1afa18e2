"""Several concepts in one adapter: the erase_several example erases two styles and an object from the demo model in
one Train job ('concept -> surrogate' lines), at the Train node's defaults, through ComfyUI's executor."""

import json
from pathlib import Path

import pytest
import workflows

from spare_core.adapter import AdapterMetadata, describe, load_adapter
from synthcanvas import evaluation
from synthcanvas.generation import generate
from synthcanvas.render import OBJECTS, STYLES, caption

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example_workflows" / "api" / "erase_several.json"
ERASED_STYLES, ERASED_OBJECTS = ("neon", "mosaic"), ("star",)
KEPT_STYLES = [s for s in STYLES if s not in ERASED_STYLES]
KEPT_OBJECTS = [o for o in OBJECTS if o not in ERASED_OBJECTS]
HELD_OUT_SEED = 4_000_017  # neither training's seeds, the recipe's dev seeds nor the benchmark's


@pytest.fixture(scope="module")
def several_erased(comfy, synthcanvas_checkpoint):
    return workflows.run_example_saving_first(comfy, EXAMPLE, "spare_erase_several")


def test_one_adapter_records_every_concept_with_its_surrogate(comfy, several_erased):
    adapter = load_adapter(comfy.folder("loras") / "spare_erase_several_00001_.safetensors")
    metadata = AdapterMetadata.from_header(adapter.metadata)
    assert metadata.prompts.concepts == (("neon style", "pastel style"), ("mosaic style", "pastel style"),
                                         ("a star", "a circle"))
    # What the Load node and the adapter library show.
    assert describe(adapter.metadata)["concepts"] == [["neon style", "pastel style"], ["mosaic style", "pastel style"],
                                                      ["a star", "a circle"]]
    # Three concepts train the node's 300 steps times √3 (the budget rule), and the header says so.
    assert metadata.train.steps == metadata.figures.steps_done == 520
    # The retain term never holds an erased concept.
    assert not any(word in prompt for prompt in metadata.prompts.retain for word in ("neon", "mosaic", "star"))


def test_the_examples_own_images_lose_the_erased_concepts_and_keep_the_ring(several_erased):
    decoded = {"star_neon": ("9", "12"), "ring_mosaic": ("15", "18")}  # VAEDecode before / after, 4 seeds each
    judged = {(label, when): evaluation.classify(several_erased.outputs[node][0][0])
              for label, nodes in decoded.items() for when, node in zip(("before", "after"), nodes, strict=True)}
    neon, mosaic = STYLES.index("neon"), STYLES.index("mosaic")
    star, ring = OBJECTS.index("star"), OBJECTS.index("ring")
    objects, styles = judged["star_neon", "before"]
    assert (styles == neon).sum() >= 3 and (objects == star).sum() >= 3, (styles, objects)
    objects, styles = judged["star_neon", "after"]
    assert (styles == neon).sum() <= 1 and (objects == star).sum() <= 1, (styles, objects)
    objects, styles = judged["ring_mosaic", "before"]
    assert (styles == mosaic).sum() >= 3 and (objects == ring).sum() >= 3, (styles, objects)
    objects, styles = judged["ring_mosaic", "after"]
    assert (styles == mosaic).sum() <= 1, styles
    assert (objects == ring).sum() >= 3, objects  # the ring is not erased with the mosaic


def test_held_out_seed_every_concept_erased_and_the_others_kept(comfy, several_erased):
    """A held-out sampler seed, the stock KSampler and the shipped classifier, the unerased model beside it: each
    erased concept drawn with kept ones (UA: the judge does not see the erased concept), and kept objects in kept
    styles (both must be recognised)."""
    base, clip, vae = (several_erased.outputs["1"][slot][0] for slot in range(3))
    erased = several_erased.outputs["2"][1][0]
    erased_prompts = [(caption(o, s), STYLES.index(s), "style") for s in ERASED_STYLES for o in KEPT_OBJECTS[::2]] + \
                     [(caption(o, s), OBJECTS.index(o), "object") for o in ERASED_OBJECTS for s in KEPT_STYLES]
    kept_pairs = [(KEPT_OBJECTS[(2 * k + j) % len(KEPT_OBJECTS)], s) for k, s in enumerate(KEPT_STYLES)
                  for j in range(2)]
    prompts = [p for p, _, _ in erased_prompts] + [caption(o, s) for o, s in kept_pairs]

    def judged(model):
        objects, styles = evaluation.classify(generate(comfy.nodes, model, clip, vae, prompts, HELD_OUT_SEED))
        seen = [int((styles if domain == "style" else objects)[i]) == index
                for i, (_, index, domain) in enumerate(erased_prompts)]
        start = len(erased_prompts)
        kept = [int(objects[start + i]) == OBJECTS.index(o) and int(styles[start + i]) == STYLES.index(s)
                for i, (o, s) in enumerate(kept_pairs)]
        return 1 - sum(seen) / len(seen), sum(kept) / len(kept)

    ua_before, kept_before = judged(base)
    ua_after, kept_after = judged(erased)
    assert ua_before <= 0.15, ua_before  # the unerased model draws the concepts
    assert ua_after >= 0.9, (ua_after, ua_before)
    assert kept_after >= kept_before - 2 / len(kept_pairs), (kept_after, kept_before)  # at most two of 12 lost


def test_multi_concept_benchmark_smoke(comfy, synthcanvas_checkpoint, tmp_path):
    """The benchmark's path for joint and stacked rows (3 training steps on one sample per prompt, 4 sampler steps,
    one image per pair, paraphrases of the two concepts only): the
    rows are written after each, a second call skips them, and the figures sit beside the unerased model's."""
    from benchmarks import synthcanvas_multi
    results = synthcanvas_multi.measure(comfy, ["joint:2", "stacked:2"], {}, tmp_path / "multi.json", tmp_path,
                                        repeats=1, steps=3, sampler_steps=4, paraphrase_set=2, samples=1)
    written = json.loads((tmp_path / "multi.json").read_text())
    assert written["joint"]["2"]["concepts"] == written["stacked"]["2"]["concepts"] == ["style:neon", "object:star"]
    assert set(written["base"]["2"]["per_concept"]) == {"style:neon", "object:star"}
    assert written["stacked"]["2"]["adapter_mb"] == pytest.approx(2 * written["joint"]["2"]["adapter_mb"], rel=0.01)
    assert (tmp_path / "joint_2.png").is_file()
    assert results["joint"]["2"] == written["joint"]["2"]
    assert synthcanvas_multi.main(["--rows", "joint:2,stacked:2", "--json", str(tmp_path / "multi.json")]) == 0
