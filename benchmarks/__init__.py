"""Benchmarks: scripts that measure and write JSON; none of them asserts anything.

- ``unlearncanvas``: the miniature UnlearnCanvas on the SynthCanvas demo model (SPARE, its ablations, ESD-x, UCE);
- ``baselines``: ESD-x and UCE, the erasure methods SPARE is compared with;
- ``recipe_dev``: the protocol that chose the Train node's defaults, on a named dev split;
- ``speed``, ``speed_levers``, ``saliency_memory``, ``saliency_ablation``: speed, memory and saliency studies.

Each runs as a script (``python benchmarks/<name>.py``) or a module (``python -m benchmarks.<name>``).
"""
