from ..spare_core.comfyui import models
from . import routes
from .erasure_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# Pack load is ComfyUI's registration moment: the adapter-library route and the compact SD1 architecture.
routes.register()
models.register_compact_sd1()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
