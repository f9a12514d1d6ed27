"Sweeps of a notebook through submitit: the grid, one run folder per point, the summary, failures and --resume, bad input."
import csv
import json

import pytest

from conftest import write_notebook
from workbench.cli import main
from workbench.sweeps import Sweep, plan_sweep, submit_sweep

PARAMS = 'profile = "smoke"\nseed = None\nscale = None  # (> 0)\nfail_flag = ""  # a file that makes the point seed 1 and scale 2 fail while it exists\n'
BODY = '''from pathlib import Path
from workbench.core import resolve_profile
from workbench.runs import start_run
PROFILES = {"smoke": dict(seed=0, scale=1.0), "full": dict(seed=0, scale=10.0)}
cfg = resolve_profile(profile, PROFILES, seed=seed, scale=scale, fail_flag=fail_flag)
run = start_run("probe", cfg)
if cfg.fail_flag and Path(cfg.fail_flag).exists() and cfg.seed == 1 and cfg.scale == 2:
    raise RuntimeError("made to fail")
run.log_metrics(loss=cfg.scale * (1 + cfg.seed), table=[dict(name="a", f1=0.1 * cfg.seed + cfg.scale), dict(name="b", f1=cfg.scale)])
'''



@pytest.fixture
def nbs(tmp_path, monkeypatch, isolated_settings):
    d = tmp_path / "nbs"
    d.mkdir()
    write_notebook(d / "07_probe.ipynb", [(PARAMS, ["parameters"]), (BODY, [])])
    monkeypatch.setenv("WORKBENCH_NBS", str(d))
    return d


def _rows(folder):
    return list(csv.DictReader(open(folder / "summary.csv")))


def test_local_sweep_summary_failure_and_resume(nbs, tmp_path, capsys):
    "2 seeds × 2 scales on submitit's LocalExecutor: one point made to fail, reported with its error, and --resume re-runs only it."
    flag = tmp_path / "fail-now"; flag.write_text("")
    out = tmp_path / "sweep"
    rc = main(["sweep", "probe", "-p", "seed", "0,1", "-p", "scale", "1,2", "-p", "fail_flag", str(flag),
               "--executor", "local", "--max-parallel", "2", "--out", str(out)])
    assert rc == 1                                   # a point failed
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["grid"] == {"seed": [0, 1], "scale": [1, 2], "fail_flag": [str(flag)]} and spec["executor"]["kind"] == "local"
    assert all(p["job_id"] for p in spec["points"])
    rows = _rows(out)
    assert [(r["point"], r["status"]) for r in rows] == [("000-seed=0-scale=1", "ok"), ("001-seed=0-scale=2", "ok"),
                                                        ("002-seed=1-scale=1", "ok"), ("003-seed=1-scale=2", "failed")]
    assert [r["loss"] for r in rows] == ["1.0", "2.0", "2.0", ""] and rows[2]["table[a].f1"] == "1.1"
    assert "made to fail" in rows[3]["error"] and (out / rows[3]["point"] / "notebook.ipynb").exists()
    md = (out / "summary.md").read_text()
    assert "made to fail" in md and "Mean ± std over seeds" in md
    assert "| 1 | 0, 1 | 1.5 ± 0.71 |" in md and "| 2 | 0 | 2 (1 seed) |" in md, md
    ok_started = {r["point"]: json.loads((out / r["point"] / "status.json").read_text())["started"] for r in rows[:3]}

    flag.unlink()
    assert main(["sweep", "--resume", "--out", str(out)]) == 0
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok"] * 4 and rows[3]["loss"] == "4.0"
    assert {r["point"]: json.loads((out / r["point"] / "status.json").read_text())["started"] for r in rows[:3]} == ok_started
    assert json.loads((out / "attempts" / "003-seed=1-scale=2.1" / "status.json").read_text())["status"] == "failed"
    assert [p["attempts"] for p in json.loads((out / "sweep.json").read_text())["points"]] == [1, 1, 1, 2]
    assert "| 2 | 0, 1 | 3 ± 1.4 |" in (out / "summary.md").read_text()
    capsys.readouterr()
    assert main(["sweep-status", str(out)]) == 0
    assert "4 points (4 ok)" in capsys.readouterr().out


def test_an_unfinished_point_is_never_ok(nbs, tmp_path):
    "A point whose run was killed (status.json still says running, its process gone) is stale, and --resume would run it again."
    sw = plan_sweep("probe", None, [("seed", "0,1")], out=tmp_path / "s")
    sw.save()
    d = sw.point_dir(sw.points[0]); d.mkdir()
    (d / "status.json").write_text(json.dumps(dict(status="running", pid=2 ** 22 + 4321, host=__import__("platform").node())))
    from workbench.sweeps import point_state, write_summary
    assert [point_state(sw, p)["status"] for p in sw.points] == ["stale", "pending"]
    write_summary(sw)
    assert [r["status"] for r in _rows(tmp_path / "s")] == ["stale", "pending"]


@pytest.mark.parametrize("argv, needle", [
    (["sweep", "nope", "-p", "seed", "0,1"], "unknown notebook 'nope'"),
    (["sweep", "probe", "-p", "sede", "0,1"], "unknown parameter 'sede'"),
    (["sweep", "probe", "-p", "seed", "0,x"], "expected int"),
    (["sweep", "probe", "-p", "scale", "1,-2"], "expected a value > 0"),
    (["sweep", "probe", "-p", "seed", "[0,1"], "unbalanced"),
    (["sweep", "probe", "--profile", "huge", "-p", "seed", "0"], "unknown profile 'huge'"),
    (["sweep", "probe", "-p", "seed", "0", "--executor", "cloud"], "invalid choice: 'cloud'"),
    (["sweep", "probe", "-p", "seed", "0", "--max-parallel", "0"], "--max-parallel 0"),
    (["sweep-status", "."], "not a sweep folder"),
])
def test_bad_input_is_one_line_exit_2_before_anything_is_submitted(nbs, tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err, err
    assert not (tmp_path / "proj" / "runs").exists()


def test_json_list_values_and_quoted_commas(nbs, tmp_path):
    from workbench.runs import find_notebook
    from workbench.sweeps import sweep_grid
    info = find_notebook("probe")
    assert sweep_grid(info, None, [("fail_flag", '"a, b",c')]) == {"fail_flag": ["a, b", "c"]}
    sw = plan_sweep("probe", "full", [("seed", "0,1,2")], out=tmp_path / "s")
    assert [p["name"] for p in sw.points] == ["000-seed=0", "001-seed=1", "002-seed=2"] and sw.profile == "full"


def test_slurm_sweep_submits_one_job_array_with_the_settings_and_flags(nbs, tmp_path, monkeypatch, capsys, isolated_settings):
    "No cluster here: stand-in `srun` / `sbatch` on PATH record the sbatch file submitit writes; [slurm] settings < flags."
    bin_ = tmp_path / "bin"; bin_.mkdir()
    (bin_ / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_ / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    for f in bin_.iterdir(): f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{__import__('os').environ['PATH']}")
    settings = isolated_settings / "settings.ini"
    settings.write_text(settings.read_text() + "\n[slurm]\npartition = cpu\ntime = 60\ncpus_per_task = 4\nconstraint = a100\n")
    out = tmp_path / "sw"
    assert main(["sweep", "probe", "-p", "seed", "0,1,2", "--executor", "slurm", "--max-parallel", "2", "--out", str(out),
                 "--partition", "gpu", "--gpus", "1", "--account", "lab", "--slurm", "qos=high"]) == 0
    assert "follow with: workbench sweep-status" in capsys.readouterr().out
    spec = json.loads((out / "sweep.json").read_text())
    assert [p["job_id"] for p in spec["points"]] == ["4242_0", "4242_1", "4242_2"] and spec["executor"]["kind"] == "slurm"
    sbatch = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=60", "#SBATCH --account=lab",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --qos=high", "#SBATCH --constraint=a100", "#SBATCH --array=0-2%2"):
        assert line in sbatch, (line, sbatch)
    assert [r["status"] for r in _rows(out)] == ["submitted"] * 3
    assert main(["sweep-status", str(out)]) == 0
