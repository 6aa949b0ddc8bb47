"""The run directory's promises (README "Train", docs/reliability.md), checked on disk.

Runs use a linear, BatchNorm-free stand-in for the zoo model (tests/seams.py): the
promises are about files, not about the network, and a run then takes a second.
"""
import json
import os

import pytest

import seams
from gluon_tricks.cli import main
from gluon_tricks.engine import train
from gluon_tricks.errors import Interrupted, UserError
from gluon_tricks.recipe import recipe_from_dict, to_toml


@pytest.fixture(autouse=True)
def linear_model(monkeypatch):
    return seams.linear_zoo(monkeypatch)


def checkpoints(run):
    """{next_epoch: directory} of the checkpoints on disk (state.json says where each resumes)."""
    root = run / "checkpoints"
    dirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return {json.loads((d / "state.json").read_text())["next_epoch"]: d for d in dirs}


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("keep", [1, 2])
def test_only_the_last_keep_checkpoints_stay(tmp_path, keep):
    train(recipe_from_dict(seams.tiny(epochs=3, images=16, system={"keep_checkpoints": keep})), tmp_path / "run",
          progress=False)
    assert sorted(checkpoints(tmp_path / "run")) == [3 - i for i in range(keep)][::-1]


def test_resume_drops_stale_and_cut_metrics_lines(tmp_path):
    """A metrics line at or past the resumed epoch (written before a kill, replayed after it) and a
    line cut by a kill mid-write are dropped: one whole line per epoch."""
    d = seams.tiny(epochs=2, images=32)
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(recipe_from_dict(d), run, progress=False, max_steps=3)  # epoch 1 done, in epoch 2
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 1, "stale": True}) + "\n")
        f.write('{"epoch": 1, "train_lo')
    train(recipe_from_dict(d), run, resume=True, progress=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line whole
    assert [r["epoch"] for r in parsed] == [0, 1] and not any("stale" in r for r in parsed)


def test_resumed_epoch_row_counts_the_steps_before_the_interruption(tmp_path):
    """A run interrupted mid-epoch and resumed writes the same metrics row as an uninterrupted
    run: its loss is the mean over ALL the epoch's images, not only those after the resume."""
    d = seams.tiny(batch=8, images=64, optim={"lr": 0.05})
    whole = train(recipe_from_dict(d), tmp_path / "whole", progress=False)
    with pytest.raises(Interrupted):
        train(recipe_from_dict(d), tmp_path / "cut", progress=False, max_steps=3)
    cut = train(recipe_from_dict(d), tmp_path / "cut", resume=True, progress=False)
    assert [r["epoch"] for r in rows(tmp_path / "cut")] == [0]
    assert rows(tmp_path / "cut")[0]["train_loss"] == pytest.approx(rows(tmp_path / "whole")[0]["train_loss"],
                                                                    rel=1e-4)
    assert cut["final_top1"] == pytest.approx(whole["final_top1"])


@pytest.mark.parametrize("resume", [False, True])
def test_a_different_recipes_run_directory_is_refused(tmp_path, resume):
    a = seams.tiny(name="a", epochs=2, images=16)
    b = seams.tiny(name="a", epochs=2, images=16, optim={"lr": 0.05})  # same name, other content
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(recipe_from_dict(a), run, progress=False, max_steps=1)
    before = {p.name: p.read_bytes() for p in run.glob("*") if p.is_file()}
    with pytest.raises(UserError, match="different run"):
        train(recipe_from_dict(b), run, resume=resume, progress=False)
    assert {p.name: p.read_bytes() for p in run.glob("*") if p.is_file()} == before
    assert sorted(checkpoints(run)) == [0]


def test_the_cli_refuses_another_recipes_run_with_one_line(tmp_path, capsys):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(to_toml(recipe_from_dict(seams.tiny(images=16))))
    b.write_text(to_toml(recipe_from_dict(seams.tiny(images=16, seed=1))))
    assert main(["train", str(a), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["train", str(b), "--out", str(tmp_path / "run"), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "different run" in err[-1] and "--out" in err[-1]


@pytest.mark.parametrize("bad", [{"distill": {"teacher": "missing.params", "teacher_model": "cifar_resnet20_v1"}},
                                 {"model": {"name": "cifar_resnet57_v1"}},
                                 {"data": {"batch_size": 48}}])
def test_no_run_directory_until_every_input_is_checked(tmp_path, bad):
    """docs/reliability.md: a bad teacher, model or batch is refused before the run dir exists."""
    with pytest.raises(UserError):
        train(recipe_from_dict(seams.tiny(images=32, **bad)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_run_files_are_written_by_rename(tmp_path, monkeypatch):
    """docs/reliability.md: every file of a run appears by an atomic rename of a complete temporary
    file, so a kill leaves the old version or the new one, never half of one."""
    renamed, real = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append((str(src), str(dst))), real(src, dst))[1])
    run = tmp_path / "run"
    train(recipe_from_dict(seams.tiny(images=16)), run, progress=False)
    targets = {os.path.relpath(dst, run) for _, dst in renamed}
    assert {"recipe.toml", "run.json", "result.json"} <= targets
    (ckpt,) = checkpoints(run).values()
    assert os.path.relpath(ckpt, run) in targets  # the checkpoint directory, complete, by one rename
    assert all(os.path.dirname(src) == os.path.dirname(dst) for src, dst in renamed)  # same filesystem


def test_a_batch_is_a_function_of_seed_epoch_and_step():
    """docs/reliability.md: shuffle, augmentation (and mixing) draws depend only on (seed, epoch,
    step), so a stream started at step 2, in a fresh process state, yields the batches an
    uninterrupted epoch yields from step 2 on; another epoch or seed yields others."""
    import numpy as np

    from gluon_tricks.data import make_streams

    def batches(seed, epoch, start=0):
        d = seams.tiny(images=64, seed=seed)
        d["data"] = dict(d["data"], augment="followup")
        stream = make_streams(recipe_from_dict(d)).train
        return [np.asarray(b[1]) for b in stream.epoch(epoch, start)]

    whole, resumed = batches(0, 1), batches(0, 1, start=2)
    assert len(whole) == 4 and len(resumed) == 2
    for a, b in zip(whole[2:], resumed):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(whole[0], batches(0, 2)[0]) and not np.allclose(whole[0], batches(1, 1)[0])
