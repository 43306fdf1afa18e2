"""The runner: tools that start ComfyUI themselves and drive it, apart from the door the nodes go through.

``spare_core.comfyui`` is the door: what ComfyUI's nodes call once ComfyUI is running (models, session, patches,
progress, files, jobs). This package is the other side. It boots ComfyUI in this process and hands it graphs of
the pack's own nodes to run through ComfyUI's executor, so it holds no training code of its own:

- ``headless``: ComfyUI booted in-process with no server, the pack loaded as a custom node (the command-line
  tools, the benchmarks and the tests run workflows through it);
- ``jobfile``: the batch runner's job files (YAML or JSON), checked field by field with the line named;
- ``batch``: the batch runner (``python -m spare_core.runner``, ``spare-erase``): the driver, which plans each job,
  retries and keeps the ledger, in one loop whether the jobs run here or on Ray;
- ``worker``: one try at one job on a booted ComfyUI, wherever it runs (a leaf: it imports neither ``batch`` nor
  the pools);
- ``local_pool`` and ``ray_pool``: where the tries run, behind one surface (``submit``, ``busy``,
  ``next_result``): in this process one at a time, or on a Ray cluster's workers, each with its own ComfyUI.

The import direction is one way: the runner imports the door (``spare_core.comfyui``: files, progress) and may
import the core (today it reaches the core only through the nodes it runs); nothing in ``spare_core.comfyui`` or
the core imports the runner. The door stays what ComfyUI's own process needs: ComfyUI loading the pack's nodes
never imports this package.
"""
