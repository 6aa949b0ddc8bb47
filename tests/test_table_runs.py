"""`table --run`: every row trains in a process of its own; `--parallel` trains rows at once,
one device each, and gives exactly the rows a one-after-another run gives."""
import json

import mxnet as mx
import numpy as np
import pytest

from gluon_tricks.cli import main
from gluon_tricks.errors import UserError
from gluon_tricks.tables import load_table, run_table

BASE = ('epochs = 1\n[data]\ndataset = "cifar10-mini"\nbatch_size = 32\ntrain_limit = 64\ntest_limit = 32\n'
        '[model]\nname = "cifar_resnet20_v1"\n[schedule]\nkind = "step"\ndecay_epochs = [1]\n')


def two_row_table(root, second_row_extra='[smoothing]\neps = 0.1\n'):
    (root / "t").mkdir(parents=True)
    (root / "t" / "a.toml").write_text('name = "row-a"\n' + BASE)
    (root / "t" / "b.toml").write_text('name = "row-b"\n' + BASE + second_row_extra)
    (root / "t" / "table.toml").write_text('title = "tiny"\n[[rows]]\nlabel = "A"\nrecipe = "a.toml"\n'
                                           '[[rows]]\nlabel = "B"\nrecipe = "b.toml"\n')
    return load_table(root, "t")


def finished(runs):
    """row name -> (result.json, final parameters) of every finished run under `runs`."""
    out = {}
    for result_file in runs.glob("*/result.json"):
        result = json.loads(result_file.read_text())
        ckpts = sorted((result_file.parent / "checkpoints").glob("*/net.params"))
        out[result["name"]] = (result, mx.nd.load(str(ckpts[-1])))
    return out


@pytest.fixture
def reproducible_cpu(monkeypatch):
    # Without oneDNN the CPU kernels do not depend on what ran before (docs/reliability.md);
    # the row processes inherit this environment.
    monkeypatch.setenv("MXNET_MKLDNN_ENABLED", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_parallel_rows_equal_rows_run_one_after_another(tmp_path, monkeypatch, reproducible_cpu):
    table = two_row_table(tmp_path / "recipes")
    # one after another, each row in its own process: the reference. (Not in this process: its
    # MXNet was loaded with the suite's OMP_NUM_THREADS and oneDNN, which change the rounding.)
    run_table(table, runs_root=tmp_path / "seq", progress=False, overrides=['system.ctx="cpu"'])
    monkeypatch.setenv("GLUON_TRICKS_RECIPES", str(tmp_path / "recipes"))
    assert main(["table", "t", "--run", "--parallel", "2", "--ctx", "cpu:0,cpu:1", "--quiet",
                 "--runs", str(tmp_path / "par")]) == 0
    seq, par = finished(tmp_path / "seq"), finished(tmp_path / "par")
    assert sorted(seq) == sorted(par) == ["row-a", "row-b"]
    # one device per row: the two rows ran on the two contexts, one each
    assert sorted(par[n][0]["hardware"]["ctx"][0] for n in par) == ["cpu(0)", "cpu(1)"]
    assert all(seq[n][0]["hardware"]["ctx"] == ["cpu(0)"] for n in seq)
    for name in seq:
        (r_seq, p_seq), (r_par, p_par) = seq[name], par[name]
        assert r_seq["hash"] == r_par["hash"]  # the device is not part of a result's identity
        assert (r_seq["final_top1"], r_seq["final_top5"]) == (r_par["final_top1"], r_par["final_top5"])
        assert sorted(p_seq) == sorted(p_par)
        for k in p_seq:
            np.testing.assert_array_equal(p_seq[k].asnumpy(), p_par[k].asnumpy(), err_msg=f"{name} {k}")
    first = sorted(seq["row-a"][1])[0]  # and the two rows are different runs
    assert not np.array_equal(seq["row-a"][1][first].asnumpy(), seq["row-b"][1][first].asnumpy())
    # nothing is left to train: a second parallel run starts no row and changes no result
    before = {p: p.read_bytes() for p in (tmp_path / "par").glob("*/result.json")}
    run_table(table, runs_root=tmp_path / "par", progress=False, overrides=['system.ctx="cpu:0,cpu:1"'], parallel=0)
    assert {p: p.read_bytes() for p in (tmp_path / "par").glob("*/result.json")} == before


def test_a_failing_row_is_named_and_the_other_rows_finish(tmp_path, reproducible_cpu):
    table = two_row_table(tmp_path / "recipes", second_row_extra=(
        '[distill]\nteacher = "no/such/teacher.params"\nteacher_model = "cifar_resnet20_v1"\n'))
    with pytest.raises(UserError) as e:  # one row after the other, each in its own process
        run_table(table, runs_root=tmp_path / "runs", progress=False)
    assert str(e.value).startswith("row 'B': teacher file no/such/teacher.params not found")
    assert sorted(finished(tmp_path / "runs")) == ["row-a"]


def test_parallel_needs_a_non_negative_count(tmp_path):
    table = two_row_table(tmp_path / "recipes")
    with pytest.raises(UserError, match="--parallel -1"):
        run_table(table, runs_root=tmp_path / "runs", progress=False, parallel=-1)


def test_a_killed_table_does_not_leave_its_row_training(tmp_path):
    """kill -9 of `gluon-tricks table --run` (a job scheduler's kill): the row process gets
    SIGTERM from the kernel, checkpoints and exits instead of training on as an orphan."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from gluon_tricks.results import RunDir

    root = tmp_path / "recipes"
    two_row_table(root)
    (root / "t" / "a.toml").write_text('name = "row-a"\n' + BASE.replace("epochs = 1", "epochs = 400"))
    runs = tmp_path / "runs"
    env = dict(os.environ, GLUON_TRICKS_RECIPES=str(root), OMP_NUM_THREADS="1", GLUON_TRICKS_RESULTS="")
    table = subprocess.Popen([sys.executable, "-m", "gluon_tricks", "table", "t", "--run", "--quiet", "--runs", str(runs)],
                             cwd=Path(__file__).resolve().parent.parent, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def rows():  # the table's child processes (the row, and multiprocessing's resource tracker)
        try:
            return [int(p) for p in Path(f"/proc/{table.pid}/task/{table.pid}/children").read_text().split()]
        except OSError:
            return []

    def alive(pid):
        try:
            return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False

    deadline = time.time() + 120
    while time.time() < deadline and not any(RunDir(d).checkpoints() for d in runs.glob("row-a-*")):
        assert table.poll() is None, "table exited before its row checkpointed"
        time.sleep(0.2)
    children = rows()
    assert children, "no row process"
    table.kill()
    table.wait()
    deadline = time.time() + 60
    while time.time() < deadline and any(alive(p) for p in children):
        time.sleep(0.2)
    left = [p for p in children if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, "the row kept training after its table was killed"
    (run,) = runs.glob("row-a-*")
    assert not (run / "result.json").exists() and RunDir(run).latest_checkpoint(quiet=True) is not None
