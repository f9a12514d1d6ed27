"Batch runs through papermill: run folders, parameters, profiles, failures and bad input."
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import write_notebook
from workbench.cli import main
from workbench.runs import find_notebook, list_notebooks

PARAMS = 'profile = "smoke"\nn = None  # how many things\nname = "planes"\n'
BODY = '''from workbench.core import resolve_profile
from workbench.runs import start_run
PROFILES = {"smoke": dict(n=2), "full": dict(n=1000)}
cfg = resolve_profile(profile, PROFILES, n=n, name=name)
run = start_run("demo", cfg)
import matplotlib.pyplot as plt
fig, ax = plt.subplots(); ax.plot(range(cfg.n))
run.save_figure(fig, "curve")
run.log_metrics(n=cfg.n, name=cfg.name, profile=cfg.profile)
'''



@pytest.fixture
def nbs(tmp_path, monkeypatch, isolated_settings):
    d = tmp_path / "nbs"
    d.mkdir()
    write_notebook(d / "07_demo.ipynb", [(PARAMS, ["parameters"]), (BODY, [])])
    write_notebook(d / "08_boom.ipynb", [('profile = "smoke"', ["parameters"]), ("x = 1", []), ("raise RuntimeError('kaboom')", []), ("y = 2", [])])
    write_notebook(d / "09_library.ipynb", [("#| default_exp lib\nx = 1", [])])
    monkeypatch.setenv("WORKBENCH_NBS", str(d))
    return d


def test_list_finds_runnable_notebooks_only(nbs, capsys):
    assert [i.short_name for i in list_notebooks()] == ["demo", "boom"]
    info = find_notebook("demo")
    assert list(info.params) == ["profile", "n", "name"]
    assert info.profiles["full"]["n"] == 1000
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "demo  (07_demo.ipynb)" in out and "n = None   [smoke=2  full=1000]  # how many things" in out


def test_run_writes_a_complete_run_folder(nbs, tmp_path):
    out = tmp_path / "run1"
    assert main(["run", "demo", "--profile", "full", "-p", "name", "cars", "--out", str(out), "-q"]) == 0
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "ok"
    assert json.loads((out / "params.json").read_text()) == {"notebook": "07_demo", "name": "cars", "profile": "full"}
    # the profile sets n; the explicit parameter overrides the notebook default
    assert json.loads((out / "metrics.json").read_text()) == {"n": 1000, "name": "cars", "profile": "full"}
    env = json.loads((out / "env.json").read_text())
    assert env["packages"]["torch"] and "git" in env
    assert (out / "figures" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "notebook.ipynb").exists() and (out / "report.html").exists()


def test_explicit_parameter_beats_profile(nbs, tmp_path):
    out = tmp_path / "run2"
    assert main(["run", "07_demo", "-p", "n", "5", "--out", str(out), "-q"]) == 0
    assert json.loads((out / "metrics.json").read_text())["n"] == 5


def test_failing_notebook_marks_run_failed(nbs, tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["run", "boom", "--out", str(out), "-q"]) == 1
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed"
    assert status["error"] == "RuntimeError: kaboom"
    assert "kaboom" in status["cell_source"]
    executed = nbformat.read(out / "notebook.ipynb", as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in executed.cells for o in c.get("outputs", []))
    assert "run FAILED" in capsys.readouterr().err


def test_failed_run_exit_status_from_the_shell(nbs, tmp_path):
    exe = Path(sys.executable).with_name("workbench")
    r = subprocess.run([str(exe), "run", "boom", "--out", str(tmp_path / "bad2"), "-q"], capture_output=True, text=True)
    assert r.returncode == 1


@pytest.mark.parametrize("argv, needle", [
    (["run", "no-such-notebook"], "unknown notebook 'no-such-notebook'; valid: demo, boom"),
    (["run", "demo", "-p", "nn", "3"], "unknown parameter 'nn' for notebook demo; valid: profile, n, name"),
    (["run", "demo", "--profile", "huge"], "unknown profile 'huge' for notebook demo; valid: smoke, full"),
    (["run", "library"], "unknown notebook 'library'"),
])
def test_bad_input_is_one_line_exit_2(nbs, capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_unknown_notebook_exit_2_from_the_shell(nbs):
    exe = Path(sys.executable).with_name("workbench")
    r = subprocess.run([str(exe), "run", "no-such-notebook"], capture_output=True, text=True)
    assert r.returncode == 2 and "no-such-notebook" in r.stderr and r.stderr.count("\n") == 1


def test_existing_run_folder_is_never_overwritten(nbs, tmp_path):
    out = tmp_path / "run3"
    assert main(["run", "demo", "--out", str(out), "-q"]) == 0
    assert main(["run", "demo", "--out", str(out), "-q"]) == 2


def test_out_folder_with_other_files_is_refused_untouched(nbs, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notebook.ipynb").write_text("my own notebook")
    assert main(["run", "demo", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not empty and is not a run folder" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["notebook.ipynb"]
    assert (out / "notebook.ipynb").read_text() == "my own notebook"


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_out_is_one_line_exit_2(nbs, tmp_path, capsys, where):
    if where == "under_a_file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "run"
    else:
        out = Path("/proc/workbench-run")
    assert main(["run", "demo", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write there" in err[0] and str(out) in err[0], err


@pytest.mark.parametrize("value, needle", [
    ("notanumber", "parameter n='notanumber' for notebook demo: expected int (its profiles use 1000, 2)"),
    ("-5", "parameter n=-5 for notebook demo: expected a value >= 1"),
    ("2.5", "expected int"),
])
def test_parameter_values_are_checked_before_the_kernel_starts(nbs, tmp_path, capsys, value, needle):
    out = tmp_path / "never"
    assert main(["run", "demo", "-p", "n", value, "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_sigterm_ends_the_run_interrupted(nbs, tmp_path):
    import signal
    import time
    write_notebook(nbs / "10_sleepy.ipynb", [('profile = "smoke"', ["parameters"]),
                                  ("import time\nfor _ in range(600): time.sleep(0.1)", [])])
    out = tmp_path / "sleepy"
    exe = Path(sys.executable).with_name("workbench")
    proc = subprocess.Popen([str(exe), "run", "sleepy", "--out", str(out), "-q"], stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 60:   # wait until the kernel runs the sleeping cell
        nbp = out / "notebook.ipynb"
        if nbp.exists() and "time.sleep" in nbp.read_text() and '"execution_count": 1' in nbp.read_text():
            break
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    # the last line is ours; the kernel, stopped mid-cell, may log its own socket error above it
    assert err.strip().splitlines()[-1].startswith("workbench: interrupted by SIGTERM"), err
    assert "workbench/runs.py" not in err and "workbench/cli.py" not in err, err
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and status["error"] == "interrupted by SIGTERM"
    assert status["finished"] and status["seconds"] > 0


def test_runs_lists_folders_and_marks_stale_ones(nbs, tmp_path, capsys, monkeypatch):
    import platform
    runs = tmp_path / "all_runs"
    assert main(["run", "demo", "--out", str(runs / "good"), "-q"]) == 0
    (runs / "gone").mkdir()
    (runs / "gone" / "status.json").write_text(json.dumps(dict(status="running", notebook="07_demo", profile="full",
                                                                pid=2**22 + 4321, host=platform.node())))
    capsys.readouterr()
    assert main(["runs", str(runs)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["status", "notebook", "profile"]
    good = next(line for line in lines if line.endswith("good"))
    gone = next(line for line in lines if line.endswith("gone"))
    assert good.split()[:3] == ["ok", "07_demo", "smoke"] and "n=2" in good
    assert gone.split()[:3] == ["stale", "07_demo", "full"]


def test_dry_run_clamps_the_full_profile_and_says_so_everywhere(nbs, tmp_path, capsys):
    "`--dry-run` runs the full profile's code path with counts clamped; folder, status, params and `workbench runs` say so, and its metrics sit under `dry_run_metrics`."
    runs = tmp_path / "runs_dry"
    out = runs / "d"
    assert main(["run", "demo", "--profile", "full", "--dry-run", "--out", str(out), "-q"]) == 0
    assert "dry run ok" in capsys.readouterr().out
    st, params = (json.loads((out / f).read_text()) for f in ("status.json", "params.json"))
    assert st["status"] == "ok" and st["dry_run"] is True and params["dry_run"] is True
    m = json.loads((out / "metrics.json").read_text())
    # the full profile's n = 1000 is clamped to a handful; nothing is left at the top level to be read as a result
    assert m == {"dry_run": True, "note": m["note"], "dry_run_metrics": {"n": 8, "name": "planes", "profile": "full"}}
    assert "not results" in m["note"]
    capsys.readouterr()
    assert main(["runs", str(runs)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.endswith("/d"))
    assert row.split()[:4] == ["ok", "07_demo", "full", "(dry-run)"] and "not results" in row
    # a plain run of the same notebook is not clamped (the environment variable does not leak out of the dry run)
    assert main(["run", "demo", "--profile", "full", "--out", str(tmp_path / "real"), "-q"]) == 0
    assert json.loads((tmp_path / "real" / "metrics.json").read_text())["n"] == 1000


def test_dry_run_never_publishes(nbs, tmp_path, capsys):
    nb = nbs / "07_demo.ipynb"
    nb.write_text(nb.read_text().replace('name = \\"planes\\"\\n', 'name = \\"planes\\"\\npublish = False\\n'))
    assert "publish" in find_notebook("demo").params
    assert main(["run", "demo", "--dry-run", "-p", "publish", "true", "--out", str(tmp_path / "p"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "a dry run never publishes" in err and not (tmp_path / "p").exists()
