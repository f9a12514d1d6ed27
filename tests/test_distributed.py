"""Training on several processes: torchrun with two gloo processes on the CPU (workbench.train.distributed). The ranks end
with identical weights, and two processes at batch B train what one process trains at batch 2B."""
import os

import pytest
import torch

from conftest import ROOT
from workbench.train.distributed import launch

ENV = dict(PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]), CUDA_VISIBLE_DEVICES="",
           OMP_NUM_THREADS="1", WORKBENCH_PROGRESS="off")
LOOPS = ["gan", "vit", "dino", "mae", "clip", "detector"]
EXACT = ["gan", "vit", "dino", "mae"]          # every random draw comes from the global batch's stream: 2 × B == 1 × 2B


def _run(tmp_path, name, nproc, batch_size, loops, steps=3):
    out = tmp_path / name
    out.mkdir()
    res = launch("ddp_jobs:train_tiny", dict(out=str(out), batch_size=batch_size, steps=steps, loops=loops), nproc=nproc,
                 workdir=out, env=ENV, timeout=900)
    assert res["world_size"] == nproc and (out / "written-by-rank0").read_text() == str(nproc)
    return [torch.load(out / f"rank{r}.pt") for r in range(nproc)]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def test_two_gloo_ranks_agree_and_equal_one_process_with_the_doubled_batch(tmp_path):
    two = _run(tmp_path, "two", 2, 4, LOOPS)
    for loop in LOOPS:
        assert _max_diff(two[0][loop], two[1][loop]) == 0.0, f"{loop}: the ranks' weights differ"
    one = _run(tmp_path, "one", 1, 8, EXACT)
    for loop in EXACT:
        d = _max_diff(two[0][loop], one[0][loop])
        assert d < 1e-4, f"{loop}: 2 ranks × 4 differ from 1 process × 8 by {d}"
    # and training moved the weights at all (a loop that ignored its data would pass the comparisons above)
    assert _max_diff(two[0]["vit"], _run(tmp_path, "short", 1, 8, ["vit"], steps=1)[0]["vit"]) > 1e-4


def test_launch_reports_a_failing_rank(tmp_path):
    from workbench.core import WorkbenchError
    with pytest.raises(WorkbenchError, match="failed"):
        launch("ddp_jobs:train_tiny", dict(out=str(tmp_path / "missing"), batch_size=4, steps=1, loops=[]), nproc=2, workdir=tmp_path, env=ENV)
