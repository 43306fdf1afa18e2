"""The speed benchmark runs end to end at reduced size and writes the documented JSON shape.
(Its figures are not asserted: speed targets are benchmarks, not tests.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.comfy  # the benchmark boots its own ComfyUI
def test_speed_benchmark_smoke(tmp_path):
    out = tmp_path / "speed.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed.py"), "--size", "reduced", "--models", "sd15,sdxl",
                    "--train-steps", "2", "--esd-iterations", "1", "--json", str(out)],
                   check=True, cwd=REPO, env=dict(os.environ), capture_output=True, timeout=600)
    results = json.loads(out.read_text())
    assert {"device", "date", "command"} <= results.keys()
    for family in ("sd15", "sdxl"):
        for method in ("spare", "esd_x", "dense_lora"):
            row = results[family][method]
            assert {"seconds_total", "seconds_by_stage", "peak_memory_gb", "adapter_mb",
                    "step_efficiency"} <= row.keys()
            assert row["seconds_total"] > 0 and row["adapter_mb"] > 0
        assert set(results[family]["spare"]["seconds_by_stage"]) == {"samples", "saliency", "timesteps", "train",
                                                                      "save"}
        assert results[family]["spare"]["modules"] < results[family]["dense_lora"]["modules"]


@pytest.mark.comfy  # the benchmark boots its own ComfyUI
def test_speed_levers_smoke(tmp_path):
    out = tmp_path / "levers.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed_levers.py"), "--size", "reduced",
                    "--models", "sd15", "--levers", "default,gradient_checkpointing,adamw_foreach",
                    "--dtypes", "bf16", "--steps", "1", "--warmup", "1", "--json", str(out)],
                   check=True, cwd=REPO, env=dict(os.environ), capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["sd15"]
    for name in ("default", "gradient_checkpointing", "adamw_foreach", "default_again", "dtype_bf16"):
        assert rows[name]["seconds_per_step"] > 0 and rows[name]["peak_memory_gb"] > 0, name
    assert [rows[f"samples_{n}_steps"]["sampling_steps"] for n in (8, 50)] == [8, 50]


def test_dit_cpu_benchmark_smoke(tmp_path, comfy):
    import comfy.model_base as model_base  # (the name comfy is the fixture here)
    if not hasattr(model_base, "Flux"):
        pytest.skip("this ComfyUI (2024-03) has no Flux, SD3 or Lumina 2 models; benchmarks/dit_cpu.py needs "
                    "ComfyUI 0.3.x")
    out = tmp_path / "dit_cpu.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "dit_cpu.py"), "--steps", "2", "--json", str(out)],
                   check=True, cwd=REPO, env=dict(os.environ), capture_output=True, timeout=600)
    results = json.loads(out.read_text())
    assert {"machine", "date", "command", "speed", "layers"} <= results.keys()
    assert set(results["speed"]) == {"sd1", "sd3", "flux", "lumina2", "z_image"}
    for family in ("sd3", "flux", "lumina2", "z_image"):
        every, trimmed = (results["layers"][family][k]["seeds"] for k in ("every Linear",
                                                                           "without input embedders and final layer"))
        assert len(every) == 3 and all(t["modules"] < e["modules"] for e, t in zip(every, trimmed, strict=True))
