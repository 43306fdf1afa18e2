"""Counting what the pack does inside ComfyUI: how often the nodes, as ComfyUI imported them, encode prompts and
draw concept samples. The real functions run; the counters only listen. For tests/test_reuse.py and
benchmarks/reuse_saving.py."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


def pack_module(node_class_mappings, name: str):
    """One module of the pack as ComfyUI imported it: the package of its node classes is named after the pack
    folder's path, beside the ``spare_core`` that tests and benchmarks import."""
    pack = node_class_mappings["SpareTrainAdapter"].__module__.removesuffix(".nodes.erasure_nodes")
    return sys.modules[f"{pack}.{name}"]


@contextlib.contextmanager
def counted_encodes_and_draws(node_class_mappings) -> Iterator[dict]:
    """{"encode": text-encoder calls, "draw": forget-sample draws} made while the block runs."""
    models = pack_module(node_class_mappings, "spare_core.comfyui.models")
    pipeline = pack_module(node_class_mappings, "spare_core.pipeline")
    counts = {"encode": 0, "draw": 0}
    real_encode, real_draw = models.encode_prompts, pipeline.forget_samples

    def encode(*args, **kwargs):
        counts["encode"] += 1
        return real_encode(*args, **kwargs)

    def draw(*args, **kwargs):
        counts["draw"] += 1
        return real_draw(*args, **kwargs)
    models.encode_prompts, pipeline.forget_samples = encode, draw
    try:
        yield counts
    finally:
        models.encode_prompts, pipeline.forget_samples = real_encode, real_draw
