"""The package's architecture, checked from the code: every module imports only its own layer and the layers before it,
nothing outside `viz.browsers` pulls in ipywidgets, and every committed checkpoint still loads."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PKG = ROOT / "workbench"
# Layers in order; a module may import from its own layer and from earlier ones. `core` and `runs` form the platform.
LAYERS = [("core", "runs", "sweeps"), ("data",), ("models",), ("train",), ("eval",), ("methods",), ("viz",), ("cli",)]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if p.name not in ("__init__.py", "_modidx.py"))


def layer_of(module: str) -> str:
    "The layer of a `workbench.*` module: its first component after `workbench`."
    return module.split(".")[1]


def imports_of(source: str, module: str) -> set[str]:
    "Every workbench module that `source` (the text of `module`) imports, at the top or inside functions, relative imports resolved."
    here = module.split(".")
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("workbench.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level]
                target = ".".join(base + ([node.module] if node.module else []))
            else: target = node.module or ""
            if target == "workbench":       # `from workbench import x`: x is a module
                found |= {f"workbench.{a.name}" for a in node.names}
            elif target.startswith("workbench."): found.add(target)
    return found


def violations(module: str, imported: set[str]) -> list[str]:
    me = layer_of(module)
    return [f"{module} imports {imp}" for imp in sorted(imported) if RANK[layer_of(imp)] > RANK[me]]


def test_every_layer_imports_only_itself_and_earlier_layers():
    assert {layer_of(module_name(p)) for p in modules()} <= set(RANK), "a module outside the known layers"
    bad = [v for p in modules() for v in violations(module_name(p), imports_of(p.read_text(), module_name(p)))]
    assert not bad, "\n".join(bad)


def test_the_layer_check_sees_relative_and_function_level_imports():
    src = "from ..models.clip import ClipScorer\nfrom .samples import Sample\ndef f():\n    from workbench.viz.figures import figure_png\n"
    found = imports_of(src, "workbench.data.probe")
    assert found == {"workbench.models.clip", "workbench.data.samples", "workbench.viz.figures"}
    assert violations("workbench.data.probe", found) == ["workbench.data.probe imports workbench.models.clip",
                                                          "workbench.data.probe imports workbench.viz.figures"]


def test_no_module_outside_the_browsers_imports_ipywidgets():
    names = [module_name(p) for p in modules() if not module_name(p).startswith("workbench.viz.browsers")]
    code = ("import importlib, sys\n"
            f"for m in {names!r}: importlib.import_module(m)\n"
            "print('ipywidgets' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "False", "a module outside workbench.viz.browsers imported ipywidgets"
    r = subprocess.run([sys.executable, "-c", "import sys, workbench.viz.browsers.vit; print('ipywidgets' in sys.modules)"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.stdout.strip().splitlines()[-1] == "True"          # the check can tell


CHECKPOINTS = sorted((ROOT / "checkpoints").glob("*.safetensors"))


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[p.name for p in CHECKPOINTS])
def test_every_committed_checkpoint_loads_in_a_fresh_process(path):
    "Nothing imported beforehand: the checkpoint's own metadata (which may name a module from before the layers) must register its architecture."
    code = ("import json, sys\n"
            "from workbench.models.registry import load_model, read_checkpoint\n"
            f"p = {str(path)!r}\n"
            "info = read_checkpoint(p).info\n"
            "lm = load_model(p, device='cpu')\n"
            "import torch\n"
            "finite = all(torch.isfinite(t).all() for t in lm.model.state_dict().values() if t.is_floating_point())\n"
            "print(json.dumps(dict(module=info.get('module'), arch=lm.arch, registered_by=type(lm.model).__module__, finite=bool(finite))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["arch"].startswith("wb:") and out["finite"], out
    prov = path.with_suffix(".json")
    if prov.exists(): assert json.loads(prov.read_text()).get("made_by", "").startswith("nbs/")


def test_checkpoints_were_found():
    assert {p.name for p in CHECKPOINTS} >= {"aerial_gan.safetensors", "aerial_clip.safetensors", "object_vit_dino.safetensors"}


def test_every_subpackage_is_packaged():
    "A non-editable install must carry every layer: the package list of pyproject.toml finds each folder with an __init__.py."
    tomllib = pytest.importorskip("tomllib")
    from setuptools import find_packages
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packaged = set(find_packages(where=str(ROOT), include=find["include"]))
    expected = {".".join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob("__init__.py")}
    assert expected <= packaged, sorted(expected - packaged)
    assert {"workbench.eval", "workbench.viz.browsers"} <= packaged


def _ignored(paths: list[Path]) -> set[str]:
    out = subprocess.run(["git", "check-ignore", "--no-index", *map(str, paths)], cwd=ROOT, capture_output=True, text=True)
    return set(out.stdout.split())


def test_no_library_file_is_git_ignored():
    "A clone must carry the whole library: a .gitignore rule such as `data/` once hid workbench/data from every commit."
    if not (ROOT / ".git").exists(): pytest.skip("not a git checkout")
    files = sorted(p.relative_to(ROOT) for p in PKG.rglob("*.py"))
    assert Path("workbench/data/worlds.py") in files
    assert not _ignored(files), sorted(_ignored(files))
    assert _ignored([Path("runs/x/status.json"), Path("data/coco/x.json")]), "the control: project folders are still ignored"
