"""Adapter files in ComfyUI's models/loras folders."""

from __future__ import annotations

from pathlib import Path

import folder_paths

LORA_FOLDER = "loras"


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
