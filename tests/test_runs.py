"Batch runs through papermill: run folders, parameters, profiles, failures and bad input."
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

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


def _nb(path, cells):
    nb = nbformat.v4.new_notebook()
    for src, tags in cells:
        c = nbformat.v4.new_code_cell(src)
        if tags:
            c.metadata["tags"] = tags
        nb.cells.append(c)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def nbs(tmp_path, monkeypatch, isolated_settings):
    d = tmp_path / "nbs"
    d.mkdir()
    _nb(d / "07_demo.ipynb", [(PARAMS, ["parameters"]), (BODY, [])])
    _nb(d / "08_boom.ipynb", [('profile = "smoke"', ["parameters"]), ("x = 1", []), ("raise RuntimeError('kaboom')", []), ("y = 2", [])])
    _nb(d / "09_library.ipynb", [("#| default_exp lib\nx = 1", [])])
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
