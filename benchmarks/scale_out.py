"""The batch runner's scale-out: the same 8 erasures on the SynthCanvas demo model, run one after another in this
process, then over a local Ray cluster of 2 workers; and what Ray's scheduling adds per job.

    python benchmarks/scale_out.py                      # the Train node's defaults
    python benchmarks/scale_out.py --steps 60 --json /tmp/scale_out.json

Writes JSON after each phase, so a stopped run still leaves the sequential figure. A benchmark, not a test: no
figure here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from spare_core.runner import headless
from synthcanvas import demo_model

REPO = Path(__file__).resolve().parents[1]
# Four styles and four objects of the demo world, each mapped onto a neighbour, as a takedown list would mix them.
JOBS = [("neon style", "pastel style"), ("sketch style", "charcoal style"), ("mosaic style", "striped style"),
        ("sunset style", "polka dot style"), ("a star", "a circle"), ("a ring", "a square"),
        ("a triangle", "a diamond"), ("a crescent", "a cross")]


def job_file(folder: Path, checkpoint: Path, settings: dict) -> Path:
    jobs = [{"output": f"erase_{concept.replace(' ', '_')}", "concept": concept, "surrogate": surrogate}
            for concept, surrogate in JOBS]
    path = folder / "scale_out_jobs.json"
    path.write_text(json.dumps({"checkpoint": str(checkpoint), "settings": settings, "jobs": jobs}, indent=2))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps per job (default: the node's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "results" / "scale_out.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spare-scale-out-"))
    runtime = headless.boot(work / "comfyui")
    from spare_core.runner import batch
    checkpoint = demo_model.build_checkpoint(work / "models" / demo_model.CHECKPOINT_NAME)
    settings = {"seed": 0} if args.steps is None else {"seed": 0, "steps": args.steps}
    path = job_file(work, checkpoint, settings)
    result = {"jobs": len(JOBS), "workers": args.workers, "settings": settings,
              "concepts": [concept for concept, _ in JOBS],
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}, CPU only",
              "date": datetime.date.today().isoformat(), "command": " ".join(["python"] + sys.argv)}

    def write():
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")

    phases = (("sequential", lambda runner, jobs: runner.run(jobs)),
              ("ray_local", lambda runner, jobs: runner.run_on_ray(jobs, "local", args.workers, cpu=True)))
    for name, run in phases:
        out = work / name
        runner = batch.BatchRunner(runtime, out, batch.Ledger(out / batch.LEDGER_NAME))
        jobs = runner.read(path)
        started = time.perf_counter()
        outcomes = run(runner, jobs)
        result[f"{name}_s"] = round(time.perf_counter() - started, 1)
        result[f"{name}_job_seconds"] = [o.seconds for o in outcomes]
        result[f"{name}_failed"] = [o.job.output for o in outcomes if o.status != "done"]
        if name == "ray_local":
            result["overhead_ms_per_job"] = round(1000 * sum(o.scheduling_seconds for o in outcomes) / len(outcomes), 1)
            result.update(runner.ray_timings)  # ray_start_s, workers_ready_s: inside ray_local_s, once per run
        print(f"{name}: {result[f'{name}_s']} s for {len(jobs)} jobs", flush=True)
        print(batch.summary_table(outcomes), flush=True)
        write()
    result["speed_up"] = round(result["sequential_s"] / result["ray_local_s"], 2)
    mean_job = sum(result["sequential_job_seconds"]) / len(JOBS)
    per_job = mean_job + result["overhead_ms_per_job"] / 1000
    result["jobs_per_worker_hour_at_sequential_job_time"] = round(3600 / per_job, 1)
    write()
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
