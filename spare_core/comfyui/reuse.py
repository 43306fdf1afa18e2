"""Work done once per graph run: the prompt encodings and the concept's samples that Compute Saliency Mask,
Timestep Selector and Train all need.

Wired as in the examples, the three stage nodes take the same MODEL, CLIP, prompts, samples and seed, and each used
to encode the same prompts and draw the same concept samples again. A small cache keyed by those inputs lets the
second and third node take the first node's results. Why a cache, not a new output/input between the nodes: saved
workflows keep working unchanged, a node used alone works as before, and the results are the very tensors the node
would have computed (same model object, prompts, settings and seed, on the same device), so the adapter is the same
bit for bit (tests/test_synthcanvas_model.py checks the example's adapter against its recorded digest).

Entries outlive a graph run (a second run with the same inputs reuses them too: they are the same tensors), up to
the last 8. The key holds the MODEL and CLIP objects by weak reference and compares them by identity, with the
model's patch set (``patches_uuid``): another checkpoint, a LoRA stacked in front, or a reloaded model is another
key, and a cache entry never keeps a model alive. Entries are few and small (latents and text features, a few MB).
"""

from __future__ import annotations

import logging
import sys
import weakref
from collections import OrderedDict
from typing import Callable, Hashable

log = logging.getLogger("spare")

_MAX_ENTRIES = 8
_entries: "OrderedDict[Hashable, tuple[tuple, object]]" = OrderedDict()


def _identity(thing) -> tuple:
    """What tells one MODEL or CLIP apart: the object itself (weakly) and its current patch set."""
    if thing is None:
        return (None, None)
    return (weakref.ref(thing), getattr(thing, "patches_uuid", None)
            or getattr(getattr(thing, "patcher", None), "patches_uuid", None))


def _alive(identities: tuple, objects: tuple) -> bool:
    """The stored objects are these very objects, alive and with the same patches."""
    return all(ref() is thing and patches == _identity(thing)[1] if ref is not None else thing is None
               for (ref, patches), thing in zip(identities, objects, strict=True))


def _key(kind: str, objects: tuple, settings: Hashable) -> tuple:
    return (kind, tuple(id(thing) for thing in objects), settings)


def lookup(kind: str, objects: tuple, settings: Hashable):
    """What an earlier node stored for these MODEL / CLIP ``objects`` and ``settings``, or None."""
    key = _key(kind, objects, settings)
    entry = _entries.get(key)
    if entry is None or not _alive(entry[0], objects):
        return None
    _entries.move_to_end(key)
    log.debug("SPARE: reusing the %s computed by an earlier node of this graph", kind)
    return entry[1]


def store(kind: str, objects: tuple, settings: Hashable, value) -> None:
    key = _key(kind, objects, settings)
    _entries[key] = (tuple(_identity(thing) for thing in objects), value)
    _entries.move_to_end(key)
    while len(_entries) > _MAX_ENTRIES:
        _entries.popitem(last=False)


def computed_once(kind: str, objects: tuple, settings: Hashable, compute: Callable[[], object]):
    """``compute()``'s result for these MODEL / CLIP ``objects`` and ``settings``, computed on the first call and
    handed back on the next ones while the objects live unchanged."""
    value = lookup(kind, objects, settings)
    if value is None:
        value = compute()
        store(kind, objects, settings, value)
    return value


def forget() -> None:
    """Drop every entry, in every copy of this module in the process: ComfyUI imports the pack under its folder's
    path, beside the ``spare_core`` a benchmark or test imports. Benchmarks call it before each erasure they time,
    so that no method is timed on samples another one drew."""
    for name, module in list(sys.modules.items()):
        if name.endswith("spare_core.comfyui.reuse") and hasattr(module, "_entries"):
            module._entries.clear()
