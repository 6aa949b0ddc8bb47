"""`doctor` on the broken installs it exists for, and the CLI's last lines of defence
(reliability-redteam-2 cause 12 and the messages of 18; probe ids in each test)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from gluon_tricks import doctor, needs
from gluon_tricks.recipe import DataSpec

ROOT = Path(__file__).resolve().parent.parent


def cli(args, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "gluon_tricks", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=env)


def test_a_check_that_raises_is_a_fail_line_and_the_others_still_run(monkeypatch):  # probes 3.2-3.5
    def broken():
        raise AttributeError("module 'numpy' has no attribute 'bool'")

    monkeypatch.setattr(doctor, "omp_lines", broken)
    monkeypatch.setattr(doctor, "table_lines", lambda: [])
    out = []
    assert doctor.run(out.append) == 1
    i = out.index("== Threads")
    assert out[i + 1].startswith("FAIL this check failed: AttributeError: module 'numpy' has no attribute 'bool'")
    assert "== Disk" in out  # the sections after it still ran


def test_tables_are_not_checked_once_when_mxnet_or_gluoncv_cannot_be_imported(monkeypatch):  # probes 3.2, 3.4
    monkeypatch.setitem(sys.modules, "gluon_tricks.models", None)  # `import` of it now raises ImportError
    (line,) = doctor.table_lines()
    assert line.status == "FAIL" and line.text.startswith("tables not checked: importing MXNet/GluonCV failed")


def test_a_malformed_table_file_is_one_fail_line_among_the_others(tmp_path):  # probe 1.15
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "r.toml").write_text('[data]\ndataset = "cifar10-mini"\n')
    (tmp_path / "good" / "table.toml").write_text('title = "good"\n[[rows]]\nlabel = "r"\nrecipe = "r.toml"\n')
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "table.toml").write_text('title = "bad"\nrows = 5\n')
    lines = {l.text.split(":")[0]: l for l in doctor.table_lines(tmp_path)}
    assert lines["table bad"].status == "FAIL"
    assert lines["table good"].status == "OK"


def test_the_vendored_cifar100_mini_is_not_missing():  # probe 3.1: it was told to supply ImageNet folders
    assert needs.data_missing(DataSpec(dataset="cifar100-mini"))[0] == []
    missing, fix = needs.data_missing(DataSpec(dataset="cifar100-mini", root="/nonexistent/c100"))
    assert missing == ["/nonexistent/c100/ (cifar100-mini)"]


def test_a_place_where_no_file_can_be_created_fails_whatever_its_free_space(tmp_path):  # probe 3.7
    (tmp_path / "afile").write_text("x")
    lines = doctor.disk_lines({"MXNET_HOME": tmp_path / "afile" / "home", "runs": tmp_path / "runs"},
                              warn_gb=0, fail_gb=0)
    fails = [l for l in lines if l.status == "FAIL"]
    assert len(fails) == 1 and "MXNET_HOME" in fails[0].text and "cannot create files" in fails[0].text
    assert "Not a directory" in fails[0].text
    assert doctor.not_writable(tmp_path) is None


def fake_mxnet(tmp_path) -> Path:
    """A package named mxnet ahead of the real one on sys.path, failing as MXNet 1.9.1 does
    under numpy 1.26."""
    pkg = tmp_path / "fake" / "mxnet"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise AttributeError(\"module 'numpy' has no attribute 'bool'.\")\n")
    return tmp_path / "fake"


def test_train_with_a_broken_mxnet_is_one_line_pointing_at_doctor(tmp_path):  # probes 3.3, 3.5
    env = {"PYTHONPATH": f"{fake_mxnet(tmp_path)}{os.pathsep}{ROOT}"}
    r = cli(["train", "demo/baseline", "--epochs", "1", "--out", tmp_path / "run"], env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "gluon-tricks: error: importing mxnet failed (AttributeError: module 'numpy' has no attribute 'bool'.); "
        "the installed packages do not match setup.py's pins: run gluon-tricks doctor")
    assert "Traceback" not in r.stderr


def test_a_library_mxnet_cannot_load_points_at_doctor_too(tmp_path):
    # MXNet's own loader raises OSError for a missing CUDA library: not a file-system refusal
    fake = fake_mxnet(tmp_path)
    (fake / "mxnet" / "__init__.py").write_text(
        "raise OSError('libcudart.so.11.0: cannot open shared object file: No such file or directory')\n")
    r = cli(["train", "demo/baseline", "--epochs", "1", "--out", tmp_path / "run"],
            {"PYTHONPATH": f"{fake}{os.pathsep}{ROOT}"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("gluon-tricks: error: importing mxnet failed (OSError: libcudart")
    assert r.stderr.strip().endswith("run gluon-tricks doctor")


def test_doctor_with_a_broken_mxnet_prints_fail_lines_and_no_traceback(tmp_path):  # probes 3.2, 3.5
    env = {"PYTHONPATH": f"{fake_mxnet(tmp_path)}{os.pathsep}{ROOT}"}
    r = cli(["doctor"], env)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert "FAIL import mxnet failed" in r.stdout and "== Disk" in r.stdout


def test_a_missing_gluoncv_is_named():  # probe 3.4: gluoncv uninstalled
    from gluon_tricks.cli import broken_install

    assert broken_install(ModuleNotFoundError("No module named 'gluoncv'", name="gluoncv")) == "gluoncv"
    assert broken_install(ModuleNotFoundError("No module named 'gluoncv.model_zoo'", name="gluoncv.model_zoo")) == "gluoncv"


def test_a_bug_elsewhere_keeps_its_traceback():
    from gluon_tricks.cli import broken_install

    try:
        {}["x"]
    except KeyError as e:
        assert broken_install(e) is None
    try:
        import gluoncv_not_installed_here  # noqa: F401
    except ImportError as e:
        assert broken_install(e) is None


def test_a_reader_that_leaves_early_ends_the_output_quietly(tmp_path):  # probe 1.20: "error: Broken pipe", exit 2
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "gluon_tricks", "table", "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


def test_control_characters_of_a_table_reach_stdout_escaped(tmp_path, monkeypatch, capsys):  # probe 9.5
    from gluon_tricks.cli import main

    t = tmp_path / "evil"
    t.mkdir()
    (t / "r.toml").write_text('[data]\ndataset = "cifar10-mini"\n')
    (t / "table.toml").write_text('title = "x\\u001b]0;pwned\\u0007\\u001b[2Jy"\n'
                                  '[[rows]]\nlabel = "row\\u001b[31m"\nrecipe = "r.toml"\n')
    monkeypatch.setenv("GLUON_TRICKS_RECIPES", str(tmp_path))
    monkeypatch.setenv("GLUON_TRICKS_RESULTS", "")
    assert main(["table", "evil", "--runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "x\\x1b]0;pwned\\x07\\x1b[2Jy" in out and "row\\x1b[31m" in out
    assert main(["tables", "--runs", str(tmp_path / "runs")]) == 0
    assert "\x1b" not in capsys.readouterr().out
