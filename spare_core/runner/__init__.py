"""The runner: tools that start ComfyUI themselves and drive it, apart from the door the nodes go through.

``spare_core.comfyui`` is the door: what ComfyUI's nodes call once ComfyUI is running (models, session, patches,
progress, files, jobs). This package is the other side. It boots ComfyUI in this process and hands it graphs of
the pack's own nodes to run through ComfyUI's executor, so it holds no training code of its own:

- ``headless``: ComfyUI booted in-process with no server, the pack loaded as a custom node (the command-line
  tools, the benchmarks and the tests run workflows through it);
- ``jobfile``: the batch runner's job files (YAML or JSON), checked field by field with the line named;
- ``batch``: the batch runner (``python -m spare_core.runner``, ``spare-erase``): the driver that plans, keeps the
  ledger and retries, with the jobs run in this process or, with ``ray_pool``, on a Ray cluster's workers.

The import direction is one way: the runner imports the door (``spare_core.comfyui``: files, progress) and the
core; nothing in ``spare_core.comfyui`` or the core imports the runner. The door stays what ComfyUI's own process
needs, and the pack installed in a user's ComfyUI never loads this package.
"""
