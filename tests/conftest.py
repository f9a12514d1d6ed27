import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WORKBENCH_PROGRESS", "off")


@pytest.fixture
def one_thread():
    """Run each test of a module on one torch thread: small models gain nothing from more, and OpenMP threads that wait
    for each other on a loaded 2-core machine make them several times slower. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    from workbench.core import torch_threads
    with torch_threads(1): yield


@pytest.fixture
def isolated_settings(tmp_path, monkeypatch):
    "Point every settings layer at temporary files so a test sees only what it writes."
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "settings.ini").write_text("[workbench]\nruns_dir = runs\nweights_dir = weights\ndata_root = data\n")
    monkeypatch.setenv("WORKBENCH_SETTINGS_FILE", str(proj / "settings.ini"))
    monkeypatch.setenv("WORKBENCH_USER_SETTINGS", str(tmp_path / "user" / "settings.ini"))
    for k in ["DATA_ROOT", "WEIGHTS_DIR", "RUNS_DIR", "DEVICE", "PROFILE", "SEED", "NUM_WORKERS", "ALLOW_DOWNLOAD"]:
        monkeypatch.delenv(f"WORKBENCH_{k}", raising=False)
    return proj


def assert_names_argument(call, name: str):
    "`call()` raises an `InputError` with one line that starts with the argument's name (the workbench's bad-input rule)."
    from workbench.core import InputError
    with pytest.raises(InputError) as e:
        call()
    msg = str(e.value)
    assert msg.startswith(f"{name}:") and "\n" not in msg, msg


def write_notebook(path, cells):
    "Write a notebook of code cells, each `(source, tags)`, with a python3 kernelspec (the runner's and sweeps' test notebooks)."
    import nbformat
    nb = nbformat.v4.new_notebook()
    for src, tags in cells:
        c = nbformat.v4.new_code_cell(src)
        if tags: c.metadata["tags"] = tags
        nb.cells.append(c)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, path)
