"""Every example workflow runs through the executor (at test size: the 64-channel SD1 checkpoint, 64 px, 2 training
steps), and its UI twin is the same graph."""

import json
from pathlib import Path

import pytest
import torch
from workflows import shrink_for_cpu

from devkit.workflow_format import ui_to_api

# Crosses the ComfyUI door where versions differ: the example graphs in the executor, UI twins read with node specs.
pytestmark = pytest.mark.compat

EXAMPLES = Path(__file__).resolve().parents[1] / "example_workflows"
API_FILES = sorted((EXAMPLES / "api").glob("*.json"))
# The erasure examples save the adapters that the load / compare / stack examples use.
# Their Save nodes add a counter (the default), so a fresh models/loras gets _00001_.
SAVES = {"erase_style": "spare_erase_van_gogh_00001_.safetensors", "erase_object": "spare_erase_cat_00001_.safetensors"}


def _canonical(api: dict) -> dict:
    """Node ids renumbered in file order, titles dropped: what identifies a graph."""
    renumber = {node_id: str(index + 1) for index, node_id in enumerate(api)}
    out = {}
    for node_id, node in api.items():
        inputs = {k: [renumber[v[0]], v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        out[renumber[node_id]] = {"class_type": node["class_type"], "inputs": inputs}
    return out


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.stem)
def test_ui_twin_describes_the_same_graph(comfy, api_file):
    ui_file = EXAMPLES / api_file.name
    assert ui_file.exists(), f"{api_file.name} has no UI twin (run scripts/write_ui_workflows.py)"
    api = json.loads(api_file.read_text())
    from_ui = ui_to_api(json.loads(ui_file.read_text()), comfy.nodes.NODE_CLASS_MAPPINGS)
    assert _canonical(from_ui) == _canonical(api)


def _run_example(comfy, checkpoint, name):
    prompt = shrink_for_cpu(json.loads((EXAMPLES / "api" / f"{name}.json").read_text()), 2, checkpoint)
    return comfy.run_prompt(prompt)


@pytest.fixture(scope="module")
def example_adapters(comfy, compact_sd1_checkpoint):
    """Runs the erasure examples (which save the adapters the other examples load) once, in order."""
    runs = {}
    for name, file_name in SAVES.items():
        for earlier in comfy.folder("loras").glob(file_name.replace("_00001_", "_*_")):
            earlier.unlink()
        runs[name] = _run_example(comfy, compact_sd1_checkpoint, name)
    return runs


def test_every_example_is_covered():
    # synthcanvas_erase_style, erase_several and erase_with_neighbours run on the demo model, in
    # test_synthcanvas_model.py, test_several_concepts.py and test_neighbourhood.py.
    assert {p.stem for p in API_FILES} == set(SAVES) | {"compare_saved_adapter", "stack_and_remove",
                                                         "synthcanvas_erase_style", "erase_several",
                                                         "erase_with_neighbours"}


@pytest.mark.parametrize("name", list(SAVES))
def test_erasure_examples_run_and_save_their_adapter(comfy, example_adapters, name):
    assert example_adapters[name].success, example_adapters[name].error
    assert (comfy.folder("loras") / SAVES[name]).exists()


def test_compare_example_shows_without_and_with_side_by_side(comfy, compact_sd1_checkpoint, example_adapters):
    run = _run_example(comfy, compact_sd1_checkpoint, "compare_saved_adapter")
    assert run.success, run.error
    without, with_adapter = run.outputs["11"][0][0]
    assert not torch.equal(without, with_adapter)
    info = run.ui["3"]["spare_adapter"][0]
    assert info["concept"] == "Van Gogh style" and info["forget_prompts"][0] == "a village in Van Gogh style"


def test_stack_example_removes_one_erasure_and_keeps_the_other(comfy, door, compact_sd1_checkpoint, example_adapters):
    run = _run_example(comfy, compact_sd1_checkpoint, "stack_and_remove")
    assert run.success, run.error
    both, one_removed = run.outputs["5"][0][0], run.outputs["6"][0][0]
    cat_only = door.patches.apply_adapter(run.outputs["1"][0][0], run.outputs["3"][0][0], 1.0)
    def entries(model):
        return sum(len(v) for v in model.patches.values())
    assert set(one_removed.patches) == set(cat_only.patches)
    assert entries(one_removed) == entries(cat_only) < entries(both)
