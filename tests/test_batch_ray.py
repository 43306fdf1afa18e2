"""The batch runner on a real local Ray cluster with 2 CPU workers, each booting its own headless ComfyUI (the
one this session runs): every adapter lands and loads through the stock loader, a bad job fails alone, a worker
killed mid-job leads to a retry with no partial file, and a second run resumes without starting any worker."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from spare_core.adapter import load_adapter

pytest.importorskip("ray", reason="Ray is the optional [cluster] extra; tests/requirements.txt installs it")

QUICK = {"steps": 4, "samples": 1, "erase_target": 0.0, "seed": 5}


@pytest.fixture(scope="module")
def batch(comfy):
    from spare_core.runner import batch
    return batch


def _job_file(tmp_path: Path, checkpoint: Path, jobs: list[dict], settings=QUICK) -> Path:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"checkpoint": str(checkpoint), "settings": settings, "jobs": jobs}, indent=2))
    return path


def _checkpoint(comfy, name: str) -> Path:
    return comfy.folder("checkpoints") / name


def _worker_pids(method: str) -> list[int]:
    """Processes whose title Ray has set to ``ray::BatchWorker.<method>``: a worker while it runs that method."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith(f"ray::BatchWorker.{method}"):
                pids.append(int(entry.name))
    return pids


def test_jobs_fan_out_over_two_workers_and_resume(batch, comfy, synthcanvas_checkpoint, tmp_path):
    out = comfy.folder("loras") / "ray_fan_out"
    jobs = [{"output": f"erase_{o}", "concept": f"a {o} in neon style", "surrogate": f"a {o} in pastel style"}
            for o in ("star", "ring", "circle", "cross")]
    jobs.insert(2, {"output": "bad", "concept": "a cat", "surrogate": "a cat"})
    path = _job_file(tmp_path, _checkpoint(comfy, synthcanvas_checkpoint), jobs)
    ledger = batch.Ledger(tmp_path / "ledger.jsonl")
    runner = batch.BatchRunner(comfy, out, ledger)
    outcomes = runner.run_on_ray(runner.read(path), "local", workers=2, cpu=True)

    assert [o.status for o in outcomes] == ["done", "done", "failed", "done", "done"], [o.error for o in outcomes]
    assert "equals the concept phrase 'a cat'" in outcomes[2].error and outcomes[2].attempts == 1
    records = ledger.records()
    assert sorted(r["output"] for r in records) == sorted(j["output"] for j in jobs)
    with __import__("torch").inference_mode():
        base = comfy.node("CheckpointLoaderSimple").load_checkpoint(synthcanvas_checkpoint)[0]
    for outcome in outcomes[:2] + outcomes[3:]:
        adapter = load_adapter(outcome.adapter)
        patched = comfy.node("LoraLoaderModelOnly").load_lora_model_only(
            base, f"ray_fan_out/{outcome.adapter.name}", 1.0)[0]
        assert len(patched.patches) == len(adapter.module_stems) > 0
        record, = (r for r in records if r["output"] == outcome.job.output)
        assert record["adapter_sha256"] == batch.file_sha256(outcome.adapter) and record["figures"]["steps_done"] == 4

    stamps = {o.adapter: o.adapter.stat().st_mtime_ns for o in outcomes if o.adapter}
    again = runner.run_on_ray(runner.read(path), "local", workers=2, cpu=True)
    assert [o.status for o in again] == ["skipped", "skipped", "failed", "skipped", "skipped"]
    assert {o.adapter: o.adapter.stat().st_mtime_ns for o in again if o.adapter} == stamps


def test_a_worker_killed_mid_job_is_replaced_and_the_job_retried(batch, comfy, synthcanvas_checkpoint, tmp_path):
    out = tmp_path / "adapters"
    # Long enough (a few seconds each on two cores) that a worker is caught inside a job.
    jobs = [{"output": f"erase_{o}", "concept": f"a {o} in neon style", "surrogate": f"a {o} in pastel style"}
            for o in ("star", "ring")]
    path = _job_file(tmp_path, _checkpoint(comfy, synthcanvas_checkpoint), jobs, settings={**QUICK, "steps": 20})
    ledger = batch.Ledger(tmp_path / "ledger.jsonl")
    runner = batch.BatchRunner(comfy, out, ledger)
    killed = []

    def kill_the_first_worker_seen_in_a_job():
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            for pid in _worker_pids("run_job"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_first_worker_seen_in_a_job, daemon=True)
    killer.start()
    outcomes = runner.run_on_ray(runner.read(path), "local", workers=2, cpu=True)
    killer.join(timeout=5)

    assert len(killed) == 1
    assert [o.status for o in outcomes] == ["done", "done"], [o.error for o in outcomes]
    assert sorted(o.attempts for o in outcomes) == [1, 2]  # the killed job ran again, on a fresh worker
    assert sorted(p.name for p in out.iterdir()) == ["erase_ring.safetensors", "erase_star.safetensors"]
    for outcome in outcomes:
        assert load_adapter(outcome.adapter).tensors


def test_an_unreachable_ray_address_is_named(batch, comfy, synthcanvas_checkpoint, tmp_path):
    path = _job_file(tmp_path, _checkpoint(comfy, synthcanvas_checkpoint),
                     [{"output": "never", "concept": "a star in neon style", "surrogate": "a star in pastel style"}])
    runner = batch.BatchRunner(comfy, tmp_path / "out", batch.Ledger(tmp_path / "ledger.jsonl"))
    with pytest.raises(ValueError, match="--ray '127.0.0.1:1': no Ray cluster answers at 127.0.0.1:1"):
        runner.run_on_ray(runner.read(path), "127.0.0.1:1", workers=1)
    with pytest.raises(ValueError, match="expected 'local', 'auto' or HOST:PORT"):
        runner.run_on_ray(runner.read(path), "my-cluster", workers=1)
    assert not (tmp_path / "ledger.jsonl").exists() and not (tmp_path / "out" / "never.safetensors").exists()
