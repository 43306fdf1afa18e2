"""Model files: adapters in ComfyUI's models/loras folders, and the checkpoints a batch job names."""

from __future__ import annotations

import contextlib
from pathlib import Path

import folder_paths

LORA_FOLDER, CHECKPOINT_FOLDER = "loras", "checkpoints"


def lora_file_names() -> list[str]:
    return folder_paths.get_filename_list(LORA_FOLDER)


def lora_file_path(name: str) -> Path:
    path = folder_paths.get_full_path(LORA_FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"adapter file {name!r} is not in models/loras (found: {lora_file_names()[:10]})")
    return Path(path)


def lora_root() -> Path:
    """The models/loras folder new adapters are written to (the first one ComfyUI lists)."""
    return Path(folder_paths.get_folder_paths(LORA_FOLDER)[0]).resolve()


def new_lora_file_path(name: str) -> Path:
    """Where a new adapter named ``name`` goes: inside the first models/loras folder, never outside it."""
    cleaned = name.strip().replace("\\", "/")
    if not cleaned or cleaned.startswith("/") or any(part in ("", ".", "..") for part in cleaned.split("/")):
        raise ValueError(f"file_name {name!r} is not a plain file name inside models/loras (no '..', no absolute "
                         f"paths, e.g. 'erase_van_gogh')")
    if not cleaned.endswith(".safetensors"):
        cleaned += ".safetensors"
    root = lora_root()
    target = (root / cleaned).resolve()
    if root not in target.parents:
        raise ValueError(f"file_name {name!r} would be written outside models/loras")
    return target


def _forget_cached_file_lists() -> None:
    if hasattr(folder_paths, "filename_list_cache"):
        folder_paths.filename_list_cache.clear()


@contextlib.contextmanager
def lora_folder_first(folder: Path):
    """For the duration, ``folder`` is the first models/loras folder: where new adapters are written."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    paths, extensions = folder_paths.folder_names_and_paths[LORA_FOLDER]
    folder_paths.folder_names_and_paths[LORA_FOLDER] = ([str(folder)] + [p for p in paths if Path(p) != folder],
                                                        extensions)
    _forget_cached_file_lists()
    try:
        yield folder
    finally:
        folder_paths.folder_names_and_paths[LORA_FOLDER] = (paths, extensions)
        _forget_cached_file_lists()


def checkpoint_path(name_or_path: str) -> Path:
    """A checkpoint named as the stock loader lists it, or a path to a file. A file outside models/checkpoints
    has its folder added to the list (as extra_model_paths.yaml would), so that the stock loader reads it."""
    found = folder_paths.get_full_path(CHECKPOINT_FOLDER, name_or_path)
    if found is not None:
        return Path(found)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        names = folder_paths.get_filename_list(CHECKPOINT_FOLDER)
        raise FileNotFoundError(f"{name_or_path!r} is neither a checkpoint in models/checkpoints (found: "
                                f"{names[:10]}) nor a file")
    path = path.resolve()
    folder_paths.add_model_folder_path(CHECKPOINT_FOLDER, str(path.parent))
    _forget_cached_file_lists()
    listed = folder_paths.get_full_path(CHECKPOINT_FOLDER, path.name)
    if listed is None or Path(listed).resolve() != path:
        raise FileNotFoundError(f"{name_or_path!r}: another checkpoint named {path.name!r} is listed first "
                                f"({listed}); rename the file or give that checkpoint's name")
    return path
