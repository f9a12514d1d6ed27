"""The notebook suite.

- Library notebooks (those with `#| default_exp`) run under nbdev's test runner, so their in-notebook asserts run.
- Runnable notebooks (those with a `parameters` cell) run through papermill in the smoke profile on CPU, exactly as
  `workbench run` runs them, and their `metrics.json` is checked.
- Where CUDA is present, the training notebooks re-run in the full profile (marker `gpu`).
"""
import json
import math
import subprocess
import sys

import nbformat
import pytest

from conftest import NBS
from workbench.runs import list_notebooks, run_notebook

RUNNABLE = {i.name: i for i in list_notebooks(NBS)}
LIBRARY = sorted(p.name for p in NBS.glob("*.ipynb") if p.stem not in RUNNABLE)

# What each runnable notebook must have measured (smoke profile). Keys: notebook stem.
METRIC_CHECKS = {
    "13_gallery": lambda m: m["n_images"] > 0,
    "25_tour": lambda m: m["layers_traced"] > 0 and m["hooks_left_after_exit"] == 0,
    "26_train_aerial_gan": lambda m: m["steps"] > 0 and math.isfinite(m["g_loss_final"]) and m["checkpoint_mb"] > 0,
    "27_train_aerial_clip": lambda m: m["loss_last"] < m["loss_first"] and m["retrieval_top1"] > 2 * m["retrieval_chance"]
                                      and m["masked_auc"] > 0.7,
}
# Notebooks that train a model: re-run in the full profile where CUDA is present.
TRAINING_NOTEBOOKS = ["26_train_aerial_gan", "27_train_aerial_clip"]


@pytest.mark.parametrize("name", LIBRARY)
def test_library_notebook(name):
    code = ("import sys; from nbdev.test import test_nb; "
            f"ok, t = test_nb({str(NBS / name)!r}, skip_flags=['notest', 'slow']); sys.exit(0 if ok else 1)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.mark.notebooks
@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_runnable_notebook_smoke(name, tmp_path):
    out = tmp_path / name
    status = run_notebook(name, profile="smoke", out=out, log_output=False)
    assert status["status"] == "ok"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics, f"{name} measured nothing"
    assert name in METRIC_CHECKS, f"add a metrics check for {name} to METRIC_CHECKS"
    assert METRIC_CHECKS[name](metrics), metrics


def test_every_runnable_notebook_starts_with_profile():
    for info in RUNNABLE.values():
        assert list(info.params)[0] == "profile", info.name
        assert set(info.profiles) >= {"smoke", "full"}, info.name


@pytest.mark.gpu
@pytest.mark.parametrize("name", TRAINING_NOTEBOOKS)
def test_training_notebook_full_profile_gpu(name, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    status = run_notebook(name, profile="full", out=tmp_path / name, log_output=False)
    assert status["status"] == "ok"
