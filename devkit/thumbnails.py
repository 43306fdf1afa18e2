"""The hash of an example workflow that its thumbnail carries (scripts/make_thumbnails.py writes it into the
JPEG comment; tests/test_thumbnails.py compares it with the workflow as it is now)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

COMMENT_PREFIX = "spare-thumbnail workflow-sha256="


def workflow_digest(workflow: dict) -> str:
    """What a thumbnail shows of a workflow: each node's type, title, widget values, place and size, and the links."""
    nodes = sorted(({"id": n["id"], "type": n["type"], "title": n.get("title"), "widgets": n.get("widgets_values"),
                     "pos": n.get("pos"), "size": n.get("size")} for n in workflow["nodes"]), key=lambda n: n["id"])
    shown = {"nodes": nodes, "links": workflow.get("links", [])}
    return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()


def recorded_digest(thumbnail: Path) -> str | None:
    """The workflow hash a thumbnail was made from (its JPEG comment), or None."""
    from PIL import Image

    comment = Image.open(thumbnail).info.get("comment", b"").decode(errors="replace")
    return comment[len(COMMENT_PREFIX):] if comment.startswith(COMMENT_PREFIX) else None
