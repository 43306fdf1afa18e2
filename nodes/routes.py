"""Read-only HTTP route for the web extension's adapter library: GET /spare/adapters.

Only files that ComfyUI itself lists in models/loras are read, and only their safetensors headers; no path
from the request is ever opened.
"""

from __future__ import annotations

import logging

from ..spare_core.adapter import describe, read_metadata
from ..spare_core.comfyui import files, progress

log = logging.getLogger("spare")


def adapter_library() -> list[dict]:
    entries = []
    for name in files.lora_file_names():
        if not name.endswith(".safetensors"):
            continue
        try:
            entry = describe(read_metadata(files.lora_file_path(name)))
        except (ValueError, FileNotFoundError) as error:
            entry = {"is_spare": False, "error": str(error)}
        entries.append({"file": name, **entry})
    return entries


def register() -> None:
    routes = progress.server_routes()
    if routes is None:
        return
    from aiohttp import web

    @routes.get("/spare/adapters")
    async def list_adapters(request):
        return web.json_response({"adapters": adapter_library()})
