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
    # one after another, here in this process: the reference
    run_table(table, runs_root=tmp_path / "seq", progress=False, overrides=['system.ctx="cpu"'], in_process=True)
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
