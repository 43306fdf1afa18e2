"""Batch jobs run in this process, on the ComfyUI it booted, one at a time (``python -m spare_core.runner.batch``
without ``--ray``).

``LocalPool`` has the surface of ``ray_pool.WorkerPool`` (a context manager with ``submit``, ``busy`` and
``next_result``), so that ``batch.BatchRunner`` drives both with one loop. It runs each try with
``worker.attempt_job``, as a Ray worker does, inside ``next_result``: in submission order, one at a time.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from .worker import attempt_job


class LocalPool:
    """This process as the one worker. ``next_result`` runs the next job handed in and gives (key, Attempt,
    seconds the try took); the Attempt is never None, since a crash that ends this process ends the run too."""

    # Nothing waits for a worker here: the driver hands in one job at a time, plans the next once this one is
    # recorded, and a retry runs right after the try that failed (batch.BatchRunner._run).
    queues_jobs = False

    def __init__(self, runtime, out: Path, show_progress: bool = False):
        self.runtime, self.out, self.show_progress = runtime, Path(out), show_progress
        self.queue: deque = deque()
        # Nothing to start: see ray_pool.WorkerPool.timings.
        self.timings: dict[str, float] = {}

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *_exc) -> None:
        self.queue.clear()

    def submit(self, key, job, checkpoint: Path) -> None:
        self.queue.append((key, job, checkpoint))

    def busy(self) -> bool:
        return bool(self.queue)

    def next_result(self):
        from ..comfyui import files
        key, job, checkpoint = self.queue.popleft()
        clock = time.perf_counter()
        # The output folder first in models/loras, where the Save node writes (a Ray worker does the same).
        with files.lora_folder_first(self.out):
            tried = attempt_job(self.runtime, job, checkpoint, self.show_progress)
        return key, tried, time.perf_counter() - clock
