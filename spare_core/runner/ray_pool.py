"""Batch jobs fanned out over a Ray cluster (``python -m spare_core.runner.batch --ray local|ADDRESS``).

Each worker is a long-lived Ray actor. It boots its own headless ComfyUI once and then runs many jobs, one at a
time, with ``worker.attempt_job``, which is the code the in-process runner uses too. An actor takes one GPU where
the cluster has GPUs, else one CPU. Ray is optional (``pip install "comfyui-spare[cluster]"``): only this module
imports it, and only when a run asks for it. Several workers may share a GPU (``--jobs-per-gpu``), since a job
uses a fraction of a large GPU's memory and SPARE's training step leaves the GPU idle much of the time
(docs/benchmarks.md).

Every machine of the cluster needs the pack and the checkpoints at the same paths as the machine that submits the
jobs. The output folder must be shared too (adapters are written there directly, atomically).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections import deque
from pathlib import Path

from .worker import Attempt, attempt_job

LOCAL = "local"
# Enough for the small results the workers send back; Ray's default takes 30 % of the machine's memory.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def _ray():
    try:
        import ray
    except ImportError as error:
        raise RuntimeError("--ray needs Ray, which is not installed: pip install \"comfyui-spare[cluster]\" (or "
                           "pip install ray)") from error
    return ray


def check_address(address: str) -> None:
    """Fail fast, naming the address, when nothing listens there; Ray itself waits a long time before it gives up.
    "local" starts a cluster here and "auto" lets Ray find the running one, so neither is checked."""
    if address in (LOCAL, "auto"):
        return
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray {address!r}: expected 'local', 'auto' or HOST:PORT of a running Ray cluster (e.g. "
                         f"10.0.0.5:6379, as `ray start --head` prints)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise ValueError(f"--ray {address!r}: no Ray cluster answers at {host}:{port} ({error}); start one with "
                         f"`ray start --head` on that machine, or use --ray local") from error


class BatchWorker:
    """One Ray actor: a headless ComfyUI of its own, booted once, that runs jobs on request."""

    def __init__(self, out: str, cpu: bool, comfyui_path: str | None):
        if comfyui_path:
            os.environ["COMFYUI_PATH"] = comfyui_path
        from . import headless
        self.out = Path(out)
        self.runtime = headless.boot(Path(tempfile.mkdtemp(prefix="spare-worker-")), cpu=cpu,
                                     model_folders_in_work=False)

    def run_job(self, job, checkpoint: str):
        from ..comfyui import files
        with files.lora_folder_first(self.out):
            try:
                path = files.checkpoint_path(checkpoint)
            except FileNotFoundError as error:
                return Attempt(False, f"on this worker: {error}")
            return attempt_job(self.runtime, job, path)


class WorkerPool:
    """Workers on a Ray cluster and a queue of jobs for them. ``next_result`` gives (key, Attempt, seconds from
    hand-out to result) as each job ends, with None for the Attempt when its worker died; a dead worker is
    replaced before the next job is handed out. Nothing starts (and nothing is checked) before ``__enter__``, which
    the driver reaches only when a job needs training. ``local_pool.LocalPool`` has the same surface."""

    # Jobs wait here for a free worker: the driver hands in every job at once, and a retry joins the back of the
    # queue (batch.BatchRunner._run).
    queues_jobs = True

    def __init__(self, address: str, out: Path, workers: int | None = None, cpu: bool = False, jobs_per_gpu: int = 1):
        self.address, self.out, self.workers, self.cpu = address, Path(out), workers, cpu
        self.jobs_per_gpu = jobs_per_gpu
        self.queue: deque = deque()
        self.running: dict = {}
        self.idle: list = []
        # Once started: seconds to start (or join) Ray, then to boot every worker's ComfyUI.
        self.timings: dict[str, float] = {}

    def __enter__(self) -> WorkerPool:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers {self.workers}: give at least 1")
        if self.jobs_per_gpu < 1:
            raise ValueError(f"--jobs-per-gpu {self.jobs_per_gpu}: give at least 1")
        ray = _ray()  # the address was checked by the caller (BatchRunner.run_on_ray), before any job was planned
        clock = time.perf_counter()
        if self.address == LOCAL:
            ray.init(num_cpus=os.cpu_count(), object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False,
                     log_to_driver=False)
        else:
            ray.init(address=self.address, log_to_driver=False)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        use_gpus = gpus > 0 and not self.cpu
        count = self.workers or (gpus * self.jobs_per_gpu if use_gpus else 1)
        # Ray packs workers onto GPUs by their share: jobs_per_gpu workers with 1/jobs_per_gpu each share one.
        resources = {"num_gpus": 1 / self.jobs_per_gpu, "num_cpus": 1} if use_gpus else {"num_cpus": 1}
        self.actor_class = ray.remote(max_restarts=0, max_task_retries=0, **resources)(BatchWorker)
        self.timings["ray_start_s"] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()
        self.idle = [self._start_worker() for _ in range(count)]
        # Wait for every ComfyUI to boot, so that a job's time is its own and not its worker's start.
        ray.get([actor.__ray_ready__.remote() for actor in self.idle])
        self.timings["workers_ready_s"] = round(time.perf_counter() - clock, 2)
        return self

    def __exit__(self, *_exc) -> None:
        ray = _ray()
        for actor in self.idle + [actor for actor, *_ in self.running.values()]:
            ray.kill(actor)
        ray.shutdown()

    def _start_worker(self):
        return self.actor_class.remote(str(self.out), self.cpu, os.environ.get("COMFYUI_PATH"))

    def submit(self, key, job, checkpoint: Path) -> None:
        self.queue.append((key, job, str(checkpoint)))
        self._hand_out()

    def _hand_out(self) -> None:
        while self.idle and self.queue:
            actor = self.idle.pop()
            key, job, checkpoint = self.queue.popleft()
            self.running[actor.run_job.remote(job, checkpoint)] = (actor, key, time.perf_counter())

    def busy(self) -> bool:
        return bool(self.queue or self.running)

    def next_result(self):
        ray = _ray()
        (ready,), _ = ray.wait(list(self.running), num_returns=1)
        actor, key, handed_out = self.running.pop(ready)
        try:
            result = ray.get(ready)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):
            ray.kill(actor)
            actor, result = self._start_worker(), None
        round_trip = time.perf_counter() - handed_out
        self.idle.append(actor)
        self._hand_out()
        return key, result, round_trip
