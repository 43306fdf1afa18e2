"""Each example workflow's thumbnail (what ComfyUI's template browser shows) was made from the workflow as it is
now: scripts/make_thumbnails.py records the workflow's hash in the picture, and a workflow edited since (a widget
value, a title, the layout) fails here until its thumbnail is made again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devkit.thumbnails import recorded_digest, workflow_digest

EXAMPLES = Path(__file__).resolve().parents[1] / "example_workflows"


@pytest.mark.parametrize("name", sorted(path.stem for path in EXAMPLES.glob("*.json")))
def test_thumbnail_was_made_from_the_workflow_as_it_is(name):
    thumbnail = EXAMPLES / f"{name}.jpg"
    assert thumbnail.is_file(), f"{name}.json has no thumbnail: run scripts/make_thumbnails.py"
    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    assert recorded_digest(thumbnail) == workflow_digest(workflow), (
        f"example_workflows/{name}.json changed since its thumbnail was made: run scripts/make_thumbnails.py "
        f"--only {name}")


def test_the_digest_sees_a_changed_widget_value():
    workflow = json.loads((EXAMPLES / "synthcanvas_erase_style.json").read_text())
    before = workflow_digest(workflow)
    train = next(node for node in workflow["nodes"] if node["type"] == "SpareTrainAdapter")
    train["widgets_values"][5] = 200  # steps
    assert workflow_digest(workflow) != before
