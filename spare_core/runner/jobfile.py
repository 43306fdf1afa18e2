"""Job files for the batch runner (``spare_core.runner.batch``): one checkpoint, shared settings, and one erasure
per job, in YAML or JSON.

Every value keeps the line it was written on, so an error names the field and the line. This module checks the
file's shape, and each setting against the Train node's own input specs, which the caller passes in, so that
ranges live in one place. The checks that need ComfyUI (does the checkpoint exist?) are the runner's.

    checkpoint: synthcanvas_demo.safetensors   # a name in models/checkpoints, or a path to a file
    settings: {steps: 300, seed: 0}            # Train SPARE Adapter inputs for every job (optional)
    jobs:
      - output: erase_neon                     # the adapter's file name (.safetensors is added)
        concept: neon style                    # what the Train node's forget_prompts takes
        surrogate: watercolor style
        retain: [pastel style, a star]         # a list, or one string with one line each (optional)
        settings: {steps: 100}                 # this job's own overrides (optional)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import yaml

TOP_LEVEL_KEYS = ("checkpoint", "settings", "jobs")
JOB_KEYS = ("output", "concept", "surrogate", "retain", "settings", "checkpoint")
REQUIRED_JOB_KEYS = ("output", "concept", "surrogate")


class JobFileError(ValueError):
    """A job file that cannot be run; the message names the file, the line and the field."""


@dataclass(frozen=True)
class Job:
    output: str
    checkpoint: str
    concept: str
    surrogate: str
    retain: tuple[str, ...]
    # Every Train input other than the prompts, defaults filled in: a change of recipe changes the hash.
    settings: Mapping[str, object] = field(default_factory=dict)
    output_line: int = 0
    checkpoint_line: int = 0

    def input_hash(self, checkpoint_identity: str) -> str:
        """What the adapter is made from. ``checkpoint_identity`` tells two checkpoints of the same name apart."""
        fields = {"checkpoint": self.checkpoint, "checkpoint_identity": checkpoint_identity,
                  "concept": self.concept, "surrogate": self.surrogate, "retain": list(self.retain),
                  "settings": dict(sorted(self.settings.items()))}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class _Reader:
    """Values from a composed YAML node tree, each error tagged with ``source line N: field``."""

    def __init__(self, source: str):
        self.source = source
        self.constructor = yaml.SafeLoader("")

    def fail(self, node, where: str, message: str):
        raise JobFileError(f"{self.source} line {node.start_mark.line + 1}: {where}: {message}")

    def mapping(self, node, where: str, allowed: tuple[str, ...]) -> dict:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, where, f"expected a mapping of {', '.join(allowed)}")
        entries = {}
        for key_node, value_node in node.value:
            key = self.constructor.construct_object(key_node, deep=True)
            if key not in allowed:
                self.fail(key_node, f"{where}.{key}" if where else str(key),
                          f"unknown field; valid fields are {', '.join(allowed)}")
            if key in entries:
                self.fail(key_node, f"{where}.{key}" if where else key, "given twice")
            entries[key] = value_node
        return entries

    def text(self, node, where: str, required: bool = True) -> str:
        value = self.constructor.construct_object(node, deep=True)
        if not isinstance(value, str) or (required and not value.strip()):
            self.fail(node, where, f"expected {'a non-empty' if required else 'a'} string, got {value!r}")
        return value.strip()

    def lines(self, node, where: str) -> tuple[str, ...]:
        value = self.constructor.construct_object(node, deep=True)
        if isinstance(value, str):
            return tuple(line.strip() for line in value.splitlines() if line.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(v.strip() for v in value if v.strip())
        self.fail(node, where, f"expected a list of strings (or one string, one per line), got {value!r}")

    def settings(self, node, where: str, specs: Mapping[str, tuple]) -> dict:
        values = {}
        for key, value_node in self.mapping(node, where, tuple(specs)).items():
            values[key] = self.setting(value_node, f"{where}.{key}", *specs[key])
        return values

    def setting(self, node, where: str, kind: str, spec: Mapping):
        value = self.constructor.construct_object(node, deep=True)
        if kind == "BOOLEAN":
            if not isinstance(value, bool):
                self.fail(node, where, f"expected true or false, got {value!r}")
            return value
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "INT" and not (numeric and float(value).is_integer()):
            self.fail(node, where, f"expected a whole number, got {value!r}")
        if kind == "FLOAT" and not numeric:
            self.fail(node, where, f"expected a number, got {value!r}")
        low, high = spec.get("min"), spec.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(node, where, f"{value!r} is outside its range {low} to {high}")
        return int(value) if kind == "INT" else float(value)


def read_job_file(path: Path, setting_specs: Mapping[str, tuple]) -> list[Job]:
    """The jobs in ``path``. ``setting_specs``: name → (kind, spec) of each Train input a job may set, as in a
    node's INPUT_TYPES (kind INT, FLOAT or BOOLEAN; spec with default, min, max)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise JobFileError(f"job file {path}: cannot be read ({error.strerror or error})") from error
    return parse_jobs(text, path.name, setting_specs)


def parse_jobs(text: str, source: str, setting_specs: Mapping[str, tuple]) -> list[Job]:
    reader = _Reader(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise JobFileError(f"{source}{where}: not valid YAML or JSON: {getattr(error, 'problem', error)}") from error
    if root is None:
        raise JobFileError(f"{source}: the file is empty; it needs at least 'jobs:' with one job")
    top = reader.mapping(root, "", TOP_LEVEL_KEYS)
    if "jobs" not in top:
        reader.fail(root, "jobs", "missing: list at least one job (output, concept, surrogate)")
    shared_checkpoint = reader.text(top["checkpoint"], "checkpoint") if "checkpoint" in top else None
    shared_settings = reader.settings(top["settings"], "settings", setting_specs) if "settings" in top else {}
    jobs_node = top["jobs"]
    if not isinstance(jobs_node, yaml.SequenceNode) or not jobs_node.value:
        reader.fail(jobs_node, "jobs", "expected a non-empty list of jobs")
    defaults = {name: spec.get("default") for name, (_, spec) in setting_specs.items()}
    jobs, outputs = [], {}
    for index, job_node in enumerate(jobs_node.value):
        where = f"jobs[{index}]"
        entries = reader.mapping(job_node, where, JOB_KEYS)
        for key in REQUIRED_JOB_KEYS:
            if key not in entries:
                reader.fail(job_node, f"{where}.{key}", "missing")
        output = reader.text(entries["output"], f"{where}.output")
        # Case-insensitive: the same file on Windows and macOS file systems.
        same_file = output.lower().removesuffix(".safetensors")
        if same_file in outputs:
            reader.fail(entries["output"], f"{where}.output", f"{output!r} is also the output of the job on line "
                                                              f"{outputs[same_file]}; give each job its own name")
        outputs[same_file] = job_node.start_mark.line + 1
        if "checkpoint" in entries:
            checkpoint_node = entries["checkpoint"]
            checkpoint = reader.text(checkpoint_node, f"{where}.checkpoint")
        elif shared_checkpoint is not None:
            checkpoint_node, checkpoint = top["checkpoint"], shared_checkpoint
        else:
            reader.fail(job_node, f"{where}.checkpoint", "missing, and the file gives no top-level checkpoint")
        own = reader.settings(entries["settings"], f"{where}.settings", setting_specs) if "settings" in entries else {}
        jobs.append(Job(
            output=output.removesuffix(".safetensors"), checkpoint=checkpoint,
            concept=reader.text(entries["concept"], f"{where}.concept"),
            surrogate=reader.text(entries["surrogate"], f"{where}.surrogate"),
            retain=reader.lines(entries["retain"], f"{where}.retain") if "retain" in entries else (),
            settings={**defaults, **shared_settings, **own}, output_line=entries["output"].start_mark.line + 1,
            checkpoint_line=checkpoint_node.start_mark.line + 1))
    return jobs
