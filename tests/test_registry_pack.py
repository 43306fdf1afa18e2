"""What the Comfy Registry would publish: the archive that comfy-cli's own ``comfy node pack`` builds from this
checkout (git-tracked files, less what .comfyignore leaves out), and the Registry fields pyproject.toml declares."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
COMFY_CLI = ROOT / ".venv" / "comfy-cli"  # installed by scripts/setup_env.sh, apart from the suite's own packages


def _checkout_files() -> list[str]:
    """The files a commit of this working tree would hold: tracked, and new ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [name for name in listed if (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> zipfile.ZipFile:
    """``comfy node pack`` run in a copy of the checkout (it writes node.zip where it runs), with telemetry off
    and its settings in a scratch home."""
    if not COMFY_CLI.is_dir():
        pytest.skip("comfy-cli is not installed: run scripts/setup_env.sh")
    pack = tmp_path_factory.mktemp("pack") / "comfyui-spare"
    for name in _checkout_files():
        (pack / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, pack / name)
    subprocess.run(["git", "init", "-q"], cwd=pack, check=True)
    subprocess.run(["git", "add", "-A"], cwd=pack, check=True)
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ, PYTHONPATH=str(COMFY_CLI), DO_NOT_TRACK="1", HOME=str(home),
               XDG_CONFIG_HOME=str(home / ".config"))
    run = subprocess.run([sys.executable, "-m", "comfy_cli", "node", "pack"], cwd=pack, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return zipfile.ZipFile(pack / "node.zip")


def test_the_published_archive_holds_what_runs_in_comfyui_and_nothing_else(archive):
    names = set(archive.namelist())
    needed = {"__init__.py", "nodes/erasure_nodes.py", "spare_core/adapter.py", "spare_core/comfyui/jobs.py",
              "spare_core/runner/batch.py", "spare_core/vocabulary/general.txt", "web/spare.js", "web/icon.png",
              "example_workflows/synthcanvas_erase_style.json", "example_workflows/api/erase_style.json",
              "scripts/install_demo_model.py", "synthcanvas/demo_model.py", "synthcanvas/rng.py",
              "synthcanvas/weights/demo_model.safetensors", "LICENSE", "README.md", "pyproject.toml",
              "requirements.txt"}
    assert needed <= names, sorted(needed - names)
    for folder in ("tests/", "benchmarks/", "docs/", ".ci/", "devkit/", "example_jobs/"):
        assert not any(name.startswith(folder) for name in names), folder
    leftovers = {"scripts/run_tests.sh", "scripts/setup_env.sh", "synthcanvas/training.py",
                 "synthcanvas/weights/classifier.safetensors", ".comfyignore", ".gitignore"}
    assert not leftovers & names, sorted(leftovers & names)
    # Every Python file the archive ships is one the nodes or the demo installer can import from the archive.
    shipped_packages = {name.split("/")[0] for name in names if name.endswith(".py") and "/" in name}
    assert shipped_packages == {"nodes", "spare_core", "scripts", "synthcanvas"}


def _imported_modules(source: str, module: str) -> set[str]:
    """Dotted names of the modules one file imports, relative imports resolved against ``module``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[:-node.level]
                base = ".".join(package + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule imported by name
    return found


def test_every_import_of_the_pack_s_own_code_is_in_the_archive(archive):
    """Nothing the shipped code imports from the pack's own folders was left out of the archive (a module imported
    by name may be a function instead; only names that are files or packages in the checkout are held to it)."""
    names = set(archive.namelist())
    own = {"nodes", "spare_core", "synthcanvas", "devkit", "benchmarks", "tests", "scripts"}
    missing = []
    for name in sorted(n for n in names if n.endswith(".py")):
        module = name[:-3].replace("/", ".").removesuffix(".__init__")
        for imported in _imported_modules(archive.read(name).decode(), module if not name.endswith(
                "__init__.py") else module + ".__init__"):
            if imported.split(".")[0] not in own:
                continue
            path = imported.replace(".", "/")
            in_checkout = (ROOT / f"{path}.py").is_file() or (ROOT / path / "__init__.py").is_file()
            if in_checkout and f"{path}.py" not in names and f"{path}/__init__.py" not in names:
                missing.append(f"{name} imports {imported}")
    assert not missing, missing


def test_pyproject_declares_what_the_registry_reads():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    urls = project["project"]["urls"]
    assert {"Repository", "Homepage", "Documentation", "Issues"} <= urls.keys()
    assert all(url.startswith("https://") for url in urls.values())
    comfy = project["tool"]["comfy"]
    assert comfy["Icon"].startswith(urls["Repository"].replace("github.com", "raw.githubusercontent.com"))
    assert comfy["Icon"].endswith("/web/icon.png") and (ROOT / "web" / "icon.png").is_file()
    assert comfy["requires-comfyui"].startswith(">=")
    classifiers = project["project"]["classifiers"]
    assert any(c.startswith("Operating System :: ") for c in classifiers)
    assert any(c.startswith("Environment :: GPU :: ") for c in classifiers)
