"""ComfyUI's progress bar, Cancel button and the live loss curve the web extension draws."""

from __future__ import annotations

import comfy.model_management
import comfy.utils

PROGRESS_EVENT = "spare.progress"


def _prompt_server():
    import server  # ComfyUI's server module; absent when the pack is used outside ComfyUI's app
    return getattr(server.PromptServer, "instance", None)


class StepReporter:
    """Advance ComfyUI's progress bar and honour the Cancel button once per step."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)

    def __call__(self, *_step_info) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update(1)

    def skip(self, steps: int) -> None:
        """Count steps of a stage that did not need to run, so the bar still ends full."""
        for _ in range(steps):
            self()

    def training(self, total_steps: int):
        """A per-step callback for the training loop that also pushes (step, loss) to the browser, where the
        web extension draws the live loss curve on the node."""
        prompt_server = _prompt_server()
        node = getattr(prompt_server, "last_node_id", None)

        def report(step: int, loss: float, check=None) -> None:
            self()
            if prompt_server is not None:
                event = {"node": node, "step": step + 1, "total": total_steps, "loss": loss}
                if check is not None:
                    event.update(gap_closed=check.gap_closed, retain_drift=check.retain_drift)
                prompt_server.send_sync(PROGRESS_EVENT, event, prompt_server.client_id)
        return report


def server_routes():
    """ComfyUI's aiohttp route table, or None when no ComfyUI server is running."""
    prompt_server = _prompt_server()
    return None if prompt_server is None else prompt_server.routes
