"""The batch runner (``python -m spare_core.runner.batch``) on the demo model, through ComfyUI's executor: job
files checked with the field and line named, adapters that the stock loader reads, a complete ledger, a bad job
that fails alone, and a second run that resumes without retraining or overwriting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spare_core.adapter import VERDICTS, load_adapter
from spare_core.runner.jobfile import JobFileError, parse_jobs

REPO = Path(__file__).resolve().parents[1]
# One full prompt per job (five words or more: used as written) and a few steps keep each training to seconds.
QUICK = {"steps": 4, "samples": 1, "erase_target": 0.0, "seed": 3}


@pytest.fixture(scope="module")
def batch(comfy):
    from spare_core.runner import batch
    return batch


@pytest.fixture(scope="module")
def specs(batch, comfy):
    return batch.train_setting_specs(comfy.nodes.NODE_CLASS_MAPPINGS["SpareTrainAdapter"])


def _job_file(tmp_path: Path, checkpoint: str, jobs: list[dict], settings=QUICK) -> Path:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"checkpoint": checkpoint, "settings": settings, "jobs": jobs}, indent=2))
    return path


def test_settings_default_to_the_train_nodes_own(specs):
    jobs = parse_jobs("checkpoint: x.safetensors\njobs:\n  - {output: a, concept: neon style, surrogate: a painting}\n",
                      "jobs.yaml", specs)
    assert jobs[0].settings == {name: spec["default"] for name, (_, spec) in specs.items()}
    assert {"steps", "learning_rate", "seed", "erase_target", "overshoot", "gradient_checkpointing"} <= set(specs)
    assert not {"forget_prompts", "surrogate_prompt", "retain_prompts", "model", "clip"} & set(specs)


@pytest.mark.parametrize("text, message", [
    ("jobs: [\n  {output: a, concept: x\n", "jobs.yaml line 3: not valid YAML or JSON"),
    ("checkpoint: c\njobs:\n  - output: a\n    concept: neon style\n    surogate: a painting\n",
     "jobs.yaml line 5: jobs\\[0\\].surogate: unknown field; valid fields are output, concept, surrogate"),
    ("checkpoint: c\njobs:\n  - {output: a, concept: neon style}\n", "line 3: jobs\\[0\\].surrogate: missing"),
    ("jobs:\n  - {output: a, concept: neon style, surrogate: a dog}\n",
     "line 2: jobs\\[0\\].checkpoint: missing, and the file gives no top-level checkpoint"),
    ("checkpoint: c\njobs:\n  - {output: erase, concept: a cat, surrogate: a dog}\n"
     "  - {output: Erase.safetensors, concept: a fox, surrogate: a dog}\n",
     "line 4: jobs\\[1\\].output: 'Erase.safetensors' is also the output of the job on line 3"),
    ("checkpoint: c\nsettings: {steps: 0}\njobs:\n  - {output: a, concept: a cat, surrogate: a dog}\n",
     "line 2: settings.steps: 0 is outside its range 1 to 100000"),
    ("checkpoint: c\njobs:\n  - {output: a, concept: a cat, surrogate: a dog, settings: {rank: 2.5}}\n",
     "line 3: jobs\\[0\\].settings.rank: expected a whole number, got 2.5"),
    ("checkpoint: c\njobs:\n  - {output: a, concept: a cat, surrogate: a dog, settings: {ranks: 2}}\n",
     "jobs\\[0\\].settings.ranks: unknown field; valid fields are rank, alpha, steps"),
    ("checkpoint: c\njobs: []\n", "line 2: jobs: expected a non-empty list of jobs"),
    ("", "jobs.yaml: the file is empty"),
])
def test_a_bad_job_file_is_refused_naming_the_field_and_line(specs, text, message):
    with pytest.raises(JobFileError, match=message):
        parse_jobs(text, "jobs.yaml", specs)


def test_an_unknown_checkpoint_or_a_bad_output_name_is_refused_before_anything_runs(batch, comfy,
                                                                                    synthcanvas_checkpoint, tmp_path):
    runner = batch.BatchRunner(comfy, tmp_path / "out", batch.Ledger(tmp_path / "ledger.jsonl"))
    missing = _job_file(tmp_path, "no_such_model.safetensors", [{"output": "a", "concept": "a cat",
                                                                 "surrogate": "a dog"}])
    with pytest.raises(JobFileError, match="jobs.json line 2: checkpoint: 'no_such_model.safetensors' is neither a "
                                           "checkpoint in models/checkpoints"):
        runner.read(missing)
    escaping = _job_file(tmp_path, synthcanvas_checkpoint, [{"output": "../a", "concept": "a cat",
                                                             "surrogate": "a dog"}])
    line = escaping.read_text().splitlines().index('      "output": "../a",') + 1
    with pytest.raises(JobFileError, match=f"jobs.json line {line}: output: '../a' is not a plain file name inside "
                                           f"the output folder"):
        runner.read(escaping)
    assert not (tmp_path / "ledger.jsonl").exists()


def _patched_weight_count(comfy, model, lora_name: str) -> int:
    patched = comfy.node("LoraLoaderModelOnly").load_lora_model_only(model, lora_name, 1.0)[0]
    return len(patched.patches)


def test_jobs_land_a_bad_one_fails_alone_and_a_second_run_resumes(batch, comfy, synthcanvas_checkpoint, tmp_path):
    out = comfy.folder("loras") / "batch_resume"
    ledger = batch.Ledger(tmp_path / "ledger.jsonl")
    jobs = [{"output": "erase_neon", "concept": "a star in neon style", "surrogate": "a star in pastel style",
             "retain": ["a circle in pastel style"]},
            {"output": "bad", "concept": "a cat", "surrogate": "a cat"},  # surrogate = concept: refused by the pack
            {"output": "erase_ring", "concept": "a ring in sketch style, plain", "surrogate": "a ring, plain"}]
    path = _job_file(tmp_path, synthcanvas_checkpoint, jobs)
    runner = batch.BatchRunner(comfy, out, ledger)
    outcomes = runner.run(runner.read(path))

    assert [o.status for o in outcomes] == ["done", "failed", "done"]
    assert "surrogate_prompt 'a cat' equals the concept phrase 'a cat'" in outcomes[1].error
    assert outcomes[1].attempts == 1  # bad input: a retry would fail the same way
    records = ledger.records()
    assert [(r["output"], r["status"]) for r in records] == [("erase_neon", "done"), ("bad", "failed"),
                                                              ("erase_ring", "done")]
    for record in records:
        assert len(record["input_hash"]) == 64 and record["started"] and record["ended"]
    with torch.inference_mode():  # as the executor loads it
        base = comfy.node("CheckpointLoaderSimple").load_checkpoint(synthcanvas_checkpoint)[0]
    for outcome, record in zip(outcomes[::2], records[::2], strict=True):
        assert record["adapter_sha256"] == batch.file_sha256(outcome.adapter)
        assert record["figures"]["steps_done"] == QUICK["steps"] and 0 <= record["figures"]["retain_drift"]
        assert record["figures"]["verdict"] in VERDICTS  # what an operator reads first in the ledger
        adapter = load_adapter(outcome.adapter)
        # The stock loader maps every module of the adapter onto the model (one weight patch per module).
        assert _patched_weight_count(comfy, base, f"batch_resume/{outcome.adapter.name}") \
            == len(adapter.module_stems) > 0
    assert records[1]["adapter_sha256"] is None and "equals the concept phrase" in records[1]["error"]

    stamps = {o.adapter: o.adapter.stat().st_mtime_ns for o in outcomes if o.adapter}
    again = runner.run(runner.read(path))
    assert [o.status for o in again] == ["skipped", "failed", "skipped"]
    assert {o.adapter: o.adapter.stat().st_mtime_ns for o in again if o.adapter} == stamps  # nothing rewritten
    assert len(ledger.records()) == 6

    # A changed setting is another input hash: the file on disk was not made for it, so it is left alone.
    changed = _job_file(tmp_path, synthcanvas_checkpoint, jobs[:1], settings={**QUICK, "seed": 4})
    refused = runner.run(runner.read(changed))
    assert refused[0].status == "failed" and "exists and this runner's ledger does not record making it" \
        in refused[0].error
    assert outcomes[0].adapter.stat().st_mtime_ns == stamps[outcomes[0].adapter]


def test_a_file_the_runner_did_not_make_is_never_overwritten(batch, comfy, synthcanvas_checkpoint, tmp_path):
    out = tmp_path / "loras"
    out.mkdir()
    (out / "mine.safetensors").write_bytes(b"a user's own file")
    path = _job_file(tmp_path, synthcanvas_checkpoint, [{"output": "mine", "concept": "a star in neon style",
                                                          "surrogate": "a star in pastel style"}])
    runner = batch.BatchRunner(comfy, out, batch.Ledger(tmp_path / "ledger.jsonl"))
    outcome, = runner.run(runner.read(path))
    assert outcome.status == "failed" and outcome.attempts == 0
    assert (out / "mine.safetensors").read_bytes() == b"a user's own file"


@pytest.mark.compat
def test_the_runner_trains_what_the_nodes_train(batch, comfy, synthcanvas_checkpoint, tmp_path):
    """Same inputs and seed, the same adapter: the runner is the nodes, not a second copy of the algorithm."""
    job = {"output": "same_as_nodes", "concept": "a star in neon style", "surrogate": "a star in pastel style"}
    path = _job_file(tmp_path, synthcanvas_checkpoint, [job])
    runner = batch.BatchRunner(comfy, tmp_path / "out", batch.Ledger(tmp_path / "ledger.jsonl"))
    outcome, = runner.run(runner.read(path))
    assert outcome.status == "done", outcome.error
    train = comfy.nodes.NODE_CLASS_MAPPINGS["SpareTrainAdapter"]
    defaults = {name: spec["default"] for name, (_, spec) in batch.train_setting_specs(train).items()}
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": synthcanvas_checkpoint}},
              "2": {"class_type": "SpareTrainAdapter", "inputs": {
                  **defaults, **QUICK, "model": ["1", 0], "clip": ["1", 1], "forget_prompts": job["concept"],
                  "surrogate_prompt": job["surrogate"], "retain_prompts": ""}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 2]}}}
    run = comfy.run_prompt(prompt)
    assert run.success, run.error
    from_nodes = run.outputs["2"][0][0].tensors
    from_runner = load_adapter(outcome.adapter).tensors
    assert from_nodes.keys() == from_runner.keys()
    for key in from_nodes:  # the runner saves through Save Erasure Adapter: float16 weights by default
        assert torch.equal(from_nodes[key].to(from_runner[key].dtype), from_runner[key]), key


@pytest.mark.compat
def test_the_command_line_exits_non_zero_when_a_job_failed(comfy, synthcanvas_checkpoint, tmp_path):
    """``python -m spare_core.runner.batch`` in its own process (its own headless ComfyUI, the same one as this
    session's), with the checkpoint given as a path outside models/checkpoints."""
    checkpoint = tmp_path / "models" / "demo.safetensors"
    checkpoint.parent.mkdir()
    os.link(comfy.folder("checkpoints") / synthcanvas_checkpoint, checkpoint)
    path = _job_file(tmp_path, str(checkpoint), [
        {"output": "cli_neon", "concept": "a star in neon style", "surrogate": "a star in pastel style"},
        {"output": "cli_bad", "concept": "a cat", "surrogate": "a cat"}])
    env = {**os.environ, "COMFYUI_PATH": str(comfy.root)}
    done = subprocess.run([sys.executable, "-m", "spare_core.runner.batch", str(path), "--out",
                           str(tmp_path / "adapters"), "--cpu"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 of 2 jobs done or already done" in done.stdout
    assert "cli_bad   failed" in done.stdout and "equals the concept phrase" in done.stdout
    assert load_adapter(tmp_path / "adapters" / "cli_neon.safetensors").tensors
    ledger = [json.loads(line) for line in (tmp_path / "adapters" / "spare_ledger.jsonl").read_text().splitlines()]
    assert [(r["output"], r["status"]) for r in ledger] == [("cli_neon", "done"), ("cli_bad", "failed")]


def test_a_job_that_crashes_is_retried_once_then_recorded(batch, comfy, tmp_path):
    """Not bad input but a failure inside ComfyUI (here a checkpoint file cut short): one retry, then failed,
    with the error in the ledger."""
    broken = tmp_path / "models" / "broken.safetensors"
    broken.parent.mkdir()
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}")  # a header that promises more than it holds
    path = _job_file(tmp_path, str(broken), [{"output": "from_broken", "concept": "a star in neon style",
                                              "surrogate": "a star in pastel style"}])
    ledger = batch.Ledger(tmp_path / "ledger.jsonl")
    runner = batch.BatchRunner(comfy, tmp_path / "out", ledger)
    outcome, = runner.run(runner.read(path))
    assert outcome.status == "failed" and outcome.attempts == 2, outcome
    record, = ledger.records()
    assert record["status"] == "failed" and record["attempts"] == 2 and record["error"]
    assert not (tmp_path / "out" / "from_broken.safetensors").exists()


def test_the_example_job_file_is_valid(batch, comfy, synthcanvas_checkpoint, tmp_path):
    runner = batch.BatchRunner(comfy, tmp_path / "out", batch.Ledger(tmp_path / "ledger.jsonl"))
    jobs = runner.read(REPO / "example_jobs" / "synthcanvas_erase_two.yaml")
    assert [(j.output, j.concept, j.surrogate) for j in jobs] == [("erase_neon", "neon style", "pastel style"),
                                                                  ("erase_star", "a star", "a circle")]
    assert jobs[0].settings["seed"] == jobs[1].settings["seed"] == 0 and jobs[1].settings["steps"] == 200
