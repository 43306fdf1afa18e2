"""ComfyUI's progress bar, Cancel button and the live loss curve the web extension draws; and, for command-line
tools, the same progress as terminal bars."""

from __future__ import annotations

import comfy.model_management
import comfy.utils

from ..adapter import verdict_of

PROGRESS_EVENT = "spare.progress"


def _prompt_server():
    import server  # ComfyUI's server module; absent when the pack is used outside ComfyUI's app
    return getattr(server.PromptServer, "instance", None)


class StepReporter:
    """Advance ComfyUI's progress bar and honour the Cancel button once per step; and, like ComfyUI's samplers, a
    terminal bar (``title``) while ComfyUI's progress bars are enabled, so the terminal is not silent while a
    stage runs for minutes."""

    def __init__(self, total: int, title: str = "SPARE"):
        from tqdm import tqdm
        self.bar = comfy.utils.ProgressBar(total)
        self.terminal = tqdm(total=total, desc=title, unit="step", leave=False,
                             disable=not comfy.utils.PROGRESS_BAR_ENABLED)

    def __call__(self, *_step_info) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update(1)
        self.terminal.update(1)
        if self.terminal.n >= self.terminal.total:
            self.terminal.close()

    def training(self, total_steps: int, node_id=None):
        """A per-step callback for the training loop that also pushes (step, loss) to the browser, where the
        web extension draws the live loss curve on node ``node_id`` (the Train node's hidden UNIQUE_ID input;
        None outside a graph, e.g. a benchmark calling the node directly, where no page draws it)."""
        prompt_server = _prompt_server()
        node = None if node_id is None else str(node_id)

        def report(step: int, loss: float, check=None) -> None:
            self()
            if prompt_server is not None:
                event = {"node": node, "step": step + 1, "total": total_steps, "loss": loss}
                if check is not None:
                    verdict, share = verdict_of(check)
                    event.update(gap_closed=check.gap_closed, retain_drift=check.retain_drift,
                                 nearer_surrogate=check.nearer_surrogate, verdict=verdict, verdict_share=share)
                prompt_server.send_sync(PROGRESS_EVENT, event, prompt_server.client_id)
        return report


def server_routes():
    """ComfyUI's aiohttp route table, or None when no ComfyUI server is running."""
    prompt_server = _prompt_server()
    return None if prompt_server is None else prompt_server.routes


def terminal_progress_bars(prompt: dict, position: int = 0) -> None:
    """ComfyUI's progress (the Train node's stages and training steps, each KSampler) as terminal bars, one per
    node as it runs; a headless executor shows nothing otherwise for the minutes training takes. ``position``:
    the terminal line the bars use, below an outer bar of the caller's."""
    from tqdm import tqdm
    try:  # ComfyUI 0.3.x knows which node is running; the 2024 one does not tell a progress hook
        from comfy_execution.utils import get_executing_context
    except ImportError:
        get_executing_context = None
    # These bars show every node's progress, the samplers' included: ComfyUI's own terminal bars would repeat them.
    comfy.utils.set_progress_bar_enabled(False)
    titles = {node_id: node.get("_meta", {}).get("title", node["class_type"]) for node_id, node in prompt.items()}
    bars = {}

    def hook(value, total, preview=None, *_, node_id=None, **__):
        if node_id is None and get_executing_context is not None and get_executing_context() is not None:
            node_id = get_executing_context().node_id
        bar = bars.get("current")
        if bar is None or bar.total != total or value < bar.n or bars.get("node") != node_id:
            if bar is not None:
                bar.close()
            bar = bars["current"] = tqdm(total=total, desc=titles.get(node_id, "running"), unit="step",
                                         position=position, leave=position == 0)
            bars["node"] = node_id
        bar.update(value - bar.n)
        if value >= total:
            bar.close()
            bars.pop("current")

    comfy.utils.set_progress_bar_global_hook(hook)
