"Settings precedence and the `workbench settings` command."
import pytest

from workbench.cli import main
from workbench.core import InputError, load_settings


def test_precedence_each_layer(isolated_settings, tmp_path, monkeypatch):
    proj = isolated_settings
    (proj / "settings.ini").write_text("[workbench]\nseed = 1\ndevice = cpu\nnum_workers = 1\nprofile = full\n")
    user = tmp_path / "user" / "settings.ini"
    user.parent.mkdir()
    user.write_text("[workbench]\nseed = 2\nnum_workers = 2\n")
    monkeypatch.setenv("WORKBENCH_NUM_WORKERS", "3")
    s = load_settings(seed=None)
    assert (s.device, s.seed, s.num_workers, s.profile) == ("cpu", 2, 3, "full")
    assert s.sources["device"].startswith("project file")
    assert s.sources["seed"].startswith("user file")
    assert s.sources["num_workers"] == "environment WORKBENCH_NUM_WORKERS"
    assert s.sources["runs_dir"] == "built-in default"
    s = load_settings(num_workers=4)
    assert (s.num_workers, s.sources["num_workers"]) == (4, "argument")


def test_relative_paths_resolve_against_their_file(isolated_settings):
    s = load_settings()
    assert s.runs_dir == isolated_settings / "runs"


@pytest.mark.parametrize("text, msg", [
    ("[workbench]\ndevice = tpu\n", "valid: auto, cpu, cuda"),
    ("[workbench]\nseeed = 1\n", "unknown key(s) seeed"),
    ("[workbench]\nallow_download = maybe\n", "expected true or false"),
])
def test_bad_settings_are_named(isolated_settings, text, msg):
    (isolated_settings / "settings.ini").write_text(text)
    with pytest.raises(InputError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_settings()


def test_settings_command_prints_sources(isolated_settings, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_DEVICE", "cpu")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("device"))
    assert "cpu" in line and "environment WORKBENCH_DEVICE" in line
    assert len(out.splitlines()) == 8


def test_bad_setting_exits_2(isolated_settings, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_SEED", "abc")
    assert main(["settings"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "WORKBENCH_SEED" in err[0]


def test_negative_workers_are_refused_at_settings_time(isolated_settings, monkeypatch, capsys):
    from workbench.cli import main
    monkeypatch.setenv("WORKBENCH_NUM_WORKERS", "-3")
    with pytest.raises(InputError, match=r"num_workers='-3' from environment WORKBENCH_NUM_WORKERS: expected an integer >= 0"):
        load_settings()
    assert main(["settings"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_workers" in err[0]
    monkeypatch.delenv("WORKBENCH_NUM_WORKERS")
    with pytest.raises(InputError, match="expected an integer >= 0"):
        load_settings(num_workers=-1)


def test_cuda_device_setting_without_cuda_is_refused(isolated_settings, monkeypatch, capsys):
    import torch
    from workbench.cli import main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORKBENCH_DEVICE", "cuda")
    with pytest.raises(InputError, match="CUDA is not available on this machine; valid here: auto, cpu"):
        load_settings()
    assert main(["settings"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert load_settings().device == "cuda"
