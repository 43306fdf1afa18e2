"""One try at one job, wherever a job runs: in the driver's own process or on a Ray worker.

``attempt_job`` turns a job into its three-node prompt (stock CheckpointLoaderSimple → Train SPARE Adapter → Save
Erasure Adapter), runs it once on a booted ComfyUI (``headless.boot``) and reports an ``Attempt``: plain data, so
that it crosses process boundaries under Ray. It never raises, and it tells bad input (a retry would fail the same
way) from a crash. Deciding what to run, retrying and the ledger are the driver's (``batch``).

A leaf of the runner: it imports neither ``batch`` nor the pools, which import it.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..adapter import ErasureFigures
from .jobfile import Job

TRAIN_NODE, SAVE_NODE = "SpareTrainAdapter", "SpareSaveAdapter"
# Errors that say the input is wrong: running it again would fail the same way.
INPUT_ERRORS = ("ValueError", "JobFileError", "FileExistsError")


@dataclass(frozen=True)
class Attempt:
    """One try at one job, as a worker reports it (plain data: it crosses process boundaries under Ray)."""
    ok: bool
    error: str | None = None
    bad_input: bool = False
    figures: dict | None = None
    seconds: float = 0.0  # inside the worker, from prompt to saved file


def job_prompt(job: Job, checkpoint_name: str) -> dict:
    """The API-format prompt a job runs: stock checkpoint loader → Train SPARE Adapter → Save Erasure Adapter."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint_name}},
        "2": {"class_type": TRAIN_NODE, "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "forget_prompts": job.concept, "surrogate_prompt": job.surrogate,
            "retain_prompts": "\n".join(job.retain), **job.settings}},
        "3": {"class_type": SAVE_NODE, "inputs": {"adapter": ["2", 0], "file_name": job.output, "overwrite": False,
                                                  "counter": False}},
    }


def _error_text(run) -> tuple[str, bool]:
    """(what went wrong, whether it is bad input) for a failed PromptRun."""
    if not run.validation[0] or not isinstance(run.error, dict):
        return f"the prompt did not validate: {run.error}", True
    kind = run.error.get("exception_type", "")
    message = run.error.get("exception_message", str(run.error))
    return f"{kind}: {message}".strip(": "), kind.rsplit(".", 1)[-1] in INPUT_ERRORS


def attempt_job(runtime, job: Job, checkpoint: Path, show_progress: bool = False) -> Attempt:
    """Train and save one job's adapter once, on a booted ComfyUI whose first models/loras folder is the output
    folder. Never raises: a crash of one job must not stop the others."""
    from ..comfyui import progress
    prompt = job_prompt(job, checkpoint.name)
    if show_progress:
        progress.terminal_progress_bars(prompt, position=1)
    clock = time.perf_counter()
    try:
        run = runtime.run_prompt(prompt)
    except Exception as error:
        return Attempt(False, f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}",
                       type(error).__name__ in INPUT_ERRORS, seconds=time.perf_counter() - clock)
    finally:
        runtime.unload_models()
    seconds = time.perf_counter() - clock
    if not run.success:
        error, bad_input = _error_text(run)
        return Attempt(False, error, bad_input, seconds=seconds)
    recorded = ErasureFigures.from_header(run.outputs["2"][0][0].metadata)
    shown = ("verdict", "guided_nearer_surrogate", "gap_closed", "retain_drift", "nearer_surrogate", "steps_done")
    figures = {name: getattr(recorded, name) for name in shown if getattr(recorded, name) is not None}
    return Attempt(True, figures=figures, seconds=seconds)
