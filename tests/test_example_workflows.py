"""Every example workflow runs through the executor (at test size), and its UI twin is the same graph."""

import importlib.util
import json
from pathlib import Path

import pytest

from workflow_format import ui_to_api

EXAMPLES = Path(__file__).resolve().parents[1] / "example_workflows"
API_FILES = sorted((EXAMPLES / "api").glob("*.json"))


def _demo_module():
    spec = importlib.util.spec_from_file_location("spare_demo", EXAMPLES.parent / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.stem)
def test_example_runs_through_the_executor(comfy, sd15_checkpoint, api_file):
    demo = _demo_module()
    prompt = demo.shrink_for_cpu(json.loads(api_file.read_text()), train_steps=2)
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = sd15_checkpoint
        if node["class_type"] == "SpareSaveAdapter":
            node["inputs"]["file_name"] = f"example_{api_file.stem}"
    run = comfy.run_prompt(prompt)
    assert run.success, run.error
    assert (comfy.folder("loras") / f"example_{api_file.stem}.safetensors").exists()
