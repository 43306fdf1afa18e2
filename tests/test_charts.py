"""The charts the stage nodes output say something at a glance: the saliency chart shows every block's saliency, also
when every module is kept and one block's gradients are a thousand times another's."""

from __future__ import annotations

import numpy as np

from devkit.pack_calls import pack_module

# Mean saliency per block as the SynthCanvas demo model gives them for "neon style" (first convolution 0.26, last
# 1.0, the middle block 0.001): one block per value, one module each.
BLOCK_SCORES = {"input_blocks.0.0": 0.26, "input_blocks.1.1.proj": 0.02, "middle_block.1.proj": 0.001,
                "output_blocks.2.0.conv": 0.03, "out.2": 1.0}


def _chart(comfy, selected):
    jobs = pack_module(comfy.nodes.NODE_CLASS_MAPPINGS, "spare_core.comfyui.jobs")
    saliency = pack_module(comfy.nodes.NODE_CLASS_MAPPINGS, "spare_core.saliency")
    charts = pack_module(comfy.nodes.NODE_CLASS_MAPPINGS, "spare_core.charts")
    result = saliency.SaliencyMap(dict(BLOCK_SCORES), tuple(selected), {name: None for name in selected}, 1.0, 1.0)
    image = np.rint(jobs.saliency_chart(result)[0].numpy() * 255).astype(int)
    slot = (charts.WIDTH - charts.MARGIN - 10) / len(BLOCK_SCORES)
    columns = [image[:, round(charts.MARGIN + (i + 0.5) * slot)] for i in range(len(BLOCK_SCORES))]
    plain = [int((np.abs(column - charts.BAR).max(axis=-1) == 0).sum()) for column in columns]
    highlighted = [int((np.abs(column - charts.HIGHLIGHT).max(axis=-1) == 0).sum()) for column in columns]
    return plain, highlighted, charts.HEIGHT - 2 * charts.MARGIN - 10


def test_every_block_shows_its_saliency_when_every_module_is_kept(comfy):
    plain, highlighted, plot_height = _chart(comfy, BLOCK_SCORES)
    assert not any(highlighted), "every module is kept: no block may be singled out"
    heights = dict(zip(BLOCK_SCORES.values(), plain, strict=True))
    # The smallest block is still a bar a user sees (on a linear scale it would be a third of a pixel), and bars
    # keep the blocks' order of saliency.
    assert min(heights.values()) >= 0.05 * plot_height, heights
    ordered = [heights[score] for score in sorted(heights)]
    assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered), heights


def test_kept_blocks_stand_out_when_a_share_of_modules_is_kept(comfy):
    kept = ("out.2", "input_blocks.0.0")
    plain, highlighted, _ = _chart(comfy, kept)
    for (name, _), bar, orange in zip(BLOCK_SCORES.items(), plain, highlighted, strict=True):
        assert (orange > 0) == (name in kept) and (bar > 0) == (name not in kept), (name, bar, orange)
