"""table --run checks every row's inputs before training, names a row whose process died and
every row that failed; plot sees the runs table made with --epochs-scale/--set/--seeds (red team 2,
cause 13: probes 1.12-1.14, 1.21)."""
from __future__ import annotations

import json
import os
import signal

import pytest

import seams
from gluon_tricks.cli import main
from gluon_tricks.errors import DivergenceError, UserError
from gluon_tricks.identity import content_hash
from gluon_tricks.recipe import recipe_from_dict
from gluon_tricks.runner import PendingRun, row_slots, train_in_processes
from gluon_tricks.tables import load_table, row_recipes


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    root = tmp_path / "recipes"
    (root / "t").mkdir(parents=True)
    (root / "t" / "a.toml").write_text('name = "row-a"\nepochs = 2\n[data]\ndataset = "cifar10-mini"\n')
    monkeypatch.setenv("GLUON_TRICKS_RECIPES", str(root))
    monkeypatch.setenv("GLUON_TRICKS_RESULTS", "")
    return root


def test_missing_teachers_and_data_of_any_row_refuse_the_table_before_training(recipes, tmp_path, capsys):
    # probe 1.14: row 1 trained, then row 2 found its teacher missing; rows after it never ran
    (recipes / "t" / "b.toml").write_text(
        f'name = "row-b"\nepochs = 2\n[data]\ndataset = "cifar10-mini"\n'
        f'[distill]\nteacher = "{tmp_path}/no-such-teacher.params"\nteacher_model = "cifar_resnet20_v1"\n')
    (recipes / "t" / "c.toml").write_text(f'name = "row-c"\nepochs = 2\n[data]\ndataset = "recordio"\n'
                                          f'root = "{tmp_path}/imagenet"\n')
    (recipes / "t" / "table.toml").write_text(
        'title = "t"\n' + "".join(f'[[rows]]\nlabel = "{x}"\nrecipe = "{x}.toml"\n' for x in "abc"))
    runs = tmp_path / "runs"
    assert main(["table", "t", "--run", "--runs", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "table t cannot run: missing " in err and "(nothing was trained)" in err
    assert f"{tmp_path}/no-such-teacher.params -> teacher/train_teacher.sh" in err
    assert f"{tmp_path}/imagenet/{{train.rec,train.idx" in err
    assert not runs.exists()


def _die(*args):
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does


def _diverge(recipe_dict, *args):
    raise DivergenceError(f"the weights of {recipe_dict['name']} are NaN/Inf after epoch 1")


def pending(tmp_path, *names):
    out = []
    for name in names:
        recipe = recipe_from_dict(seams.tiny(name=name))
        out.append(PendingRun(f"row {name}", recipe, content_hash(recipe), tmp_path / name, False))
    return out


def test_a_row_whose_process_died_is_named(tmp_path, monkeypatch):
    # probe 1.12: kill -9 of a row process ended the table in a BrokenProcessPool traceback naming no row
    import gluon_tricks.runner as runner

    monkeypatch.setattr(runner, "_train_row", _die)  # the spawned process finds it by name in this module
    with pytest.raises(UserError, match=r"^row 'row a': its process died \(killed by a signal: out of memory\?\); "
                                        r"run the same command again"):
        train_in_processes("t", pending(tmp_path, "a"), progress=False)


def test_every_failed_row_is_reported(tmp_path, monkeypatch):
    # probe 1.13: two rows diverged in parallel; only the first was mentioned
    import gluon_tricks.runner as runner

    monkeypatch.setattr(runner, "_train_row", _diverge)
    with pytest.raises(DivergenceError) as e:
        train_in_processes("t", pending(tmp_path, "a", "b"), progress=False, slots=row_slots(["cpu:0", "cpu:1"], 1, 2))
    assert "row 'row a': the weights of a are NaN" in str(e.value)
    assert "row 'row b': the weights of b are NaN" in str(e.value)


def test_plot_sees_the_runs_of_a_scaled_table(recipes, tmp_path, capsys):
    # probe 1.21: plot had no --epochs-scale/--set/--seeds, so a table run with them plotted as "not run"
    (recipes / "t" / "table.toml").write_text('title = "t"\n[[rows]]\nlabel = "A"\nrecipe = "a.toml"\n')
    runs = tmp_path / "runs"
    row = load_table(recipes, "t").rows[0]
    for seed, recipe in enumerate(row_recipes(row, 2, 0.5, ["optim.lr=0.05"])):
        h = content_hash(recipe)
        d = runs / f"{recipe.name}-{h}"
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"tool": "gluon-tricks", "format": 1, "hash": h, "name": recipe.name}))
        (d / "result.json").write_text(json.dumps({
            "hash": h, "final_top1": 30.0 + seed, "final_top5": 50.0, "seconds_per_epoch": 1.0, "epochs": 1,
            "hardware": {"ctx": ["cpu(0)"], "machine": "x86_64", "cpus": 2}}))
    assert main(["plot", "t", "--runs", str(runs), "--out", str(tmp_path / "p"), "--epochs-scale", "0.5",
                 "--seeds", "2", "--set", "optim.lr=0.05"]) == 0
    assert "| A   | 30.50 ± 0.71 |" in (tmp_path / "p" / "table.md").read_text()
