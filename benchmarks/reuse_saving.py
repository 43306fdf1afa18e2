"""What sharing the stage nodes' work saves: the demo example graph (example_workflows/api/synthcanvas_erase_style.json:
Compute Saliency Mask, Timestep Selector and Train on the same inputs, then sampling before / after) run through
ComfyUI's executor with the reuse cache on, and with it off (each node encodes and samples for itself, as before).

    python benchmarks/reuse_saving.py --json docs/results/reuse_saving.json

Each variant runs in a process of its own (ComfyUI's executor would otherwise hand back the first run's outputs),
one after the other; run nothing else meanwhile. The adapters of the two runs are compared tensor by tensor.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example_workflows" / "api" / "synthcanvas_erase_style.json"


def run_variant(reuse: bool, adapter_out: Path) -> dict:
    """One run of the example in this process; its wall time and the counts of encodings and sample draws."""
    from spare_core.runner import headless
    runtime = headless.boot(Path(tempfile.mkdtemp(prefix="spare-reuse-")))
    from synthcanvas import demo_model
    demo_model.build_checkpoint(runtime.folder("checkpoints") / demo_model.CHECKPOINT_NAME)
    from devkit.pack_calls import counted_encodes_and_draws, pack_module
    if not reuse:
        pack_module(runtime.nodes.NODE_CLASS_MAPPINGS, "spare_core.comfyui.reuse").lookup = lambda *a, **k: None
    prompt = json.loads(EXAMPLE.read_text())
    with counted_encodes_and_draws(runtime.nodes.NODE_CLASS_MAPPINGS) as counts:
        started = time.perf_counter()
        run = runtime.run_prompt(prompt)
        seconds = time.perf_counter() - started
    if not run.success:
        raise RuntimeError(f"the example failed: {run.error}")
    from safetensors.torch import save_file
    adapter = run.outputs["6"][0][0]
    save_file(dict(adapter.tensors), str(adapter_out))
    return {"reuse": reuse, "seconds": round(seconds, 1), "encode_calls": counts["encode"],
            "forget_sample_draws": counts["draw"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--variant", choices=["on", "off"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--adapter", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:  # the child process
        print(json.dumps(run_variant(args.variant == "on", args.adapter)))
        return 0
    folder = Path(tempfile.mkdtemp(prefix="spare-reuse-adapters-"))
    rows = []
    for variant in ("off", "on"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--adapter",
                              str(folder / f"{variant}.safetensors")], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    from safetensors.torch import load_file
    off, on = load_file(str(folder / "off.safetensors")), load_file(str(folder / "on.safetensors"))
    same = off.keys() == on.keys() and all(bool((off[k] == on[k]).all()) for k in off)
    result = {"date": datetime.date.today().isoformat(), "machine": platform.platform(),
              "graph": str(EXAMPLE.relative_to(REPO)), "rows": rows, "same_adapter": same,
              "saved_seconds": round(rows[0]["seconds"] - rows[1]["seconds"], 1)}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
