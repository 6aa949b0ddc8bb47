"""Nothing the tool did not create is deleted, truncated or overwritten (red team 2, causes
1-4, 14, 16: probes 7.27, 9.1, 9.2, 9.6, 9.7, 9.8, 9.11, 6.1, 6.3)."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest

from gluon_tricks.cli import main
from gluon_tricks.data.prepare import check_records, prepare
from gluon_tricks.errors import UserError


def image_tree(root: Path, classes="abc", per_class=3) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / name / f"{i}.png"), np.full((12, 12, 3), 80 * c + i, np.uint8))
    return root


def corrupt_record(prefix: Path, key: int) -> None:
    reader = mx.recordio.MXIndexedRecordIO(f"{prefix}.idx", f"{prefix}.rec", "r")
    pos = reader.idx[key]
    reader.close()
    data = bytearray(Path(f"{prefix}.rec").read_bytes())
    data[pos + 8:pos + 40] = b"\xff" * 32  # the record's header and the start of its image
    Path(f"{prefix}.rec").write_bytes(bytes(data))


@pytest.fixture
def records(tmp_path):
    prefix = tmp_path / "rec" / "train"
    prepare(image_tree(tmp_path / "img"), prefix, workers=1, progress=False)
    corrupt_record(prefix, 4)
    return prefix


def snapshot(prefix: Path) -> dict:
    return {p.name: p.read_bytes() for p in prefix.parent.iterdir()}


# -- cause 1: check-records --repair ------------------------------------------------------------
def test_repair_onto_its_own_input_is_refused_and_nothing_is_touched(records, capsys):
    # probe 7.27: `check-records P --repair P` truncated P.rec and P.idx to 0 bytes
    before = snapshot(records)
    assert main(["check-records", str(records), "--repair", str(records)]) == 2
    err = capsys.readouterr().err
    assert "would write over the records it reads" in err and err.count("\n") == 1
    assert snapshot(records) == before
    # the same files named another way (a symlinked directory)
    os.symlink(records.parent, records.parent.parent / "alias")
    with pytest.raises(UserError, match="would write over"):
        check_records(records, records.parent.parent / "alias" / "train")
    assert snapshot(records) == before


def test_repair_onto_an_existing_file_is_refused(records):
    (records.parent / "clean.idx").write_text("someone's index")
    with pytest.raises(UserError, match="clean.idx already exists"):
        check_records(records, records.parent / "clean")
    assert (records.parent / "clean.idx").read_text() == "someone's index"
    assert not (records.parent / "clean.rec").exists()


def test_repair_writes_a_whole_dataset_under_temporary_names_first(records, monkeypatch):
    clean = records.parent / "clean"
    info = check_records(records, clean)
    assert info == {"records": 9, "bad": [4]}
    assert check_records(clean) == {"records": 8, "bad": []}
    assert (records.parent / "clean.classes.txt").read_text() == "a\nb\nc\n"
    lst = [l.split("\t") for l in (records.parent / "clean.lst").read_text().splitlines()]
    assert [int(row[0]) for row in lst] == list(range(8))  # renumbered like the records
    original = {row[2]: row[1] for row in (l.split("\t") for l in Path(f"{records}.lst").read_text().splitlines())}
    assert all(original[path] == label for _, label, path in lst) and len(original) == 9

    # a failure while writing leaves nothing under the final names
    def full(self, idx, buf):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mx.recordio.MXIndexedRecordIO, "write_idx", full)
    with pytest.raises(UserError, match="the disk is full; nothing was written"):
        check_records(records, records.parent / "again")
    assert not [p for p in records.parent.iterdir() if "again" in p.name]


# -- causes 2 and 3: pruning and the run directory's own files ------------------------------------
HASH = "0123456789abcdef"


def save(run: "RunDir", epoch: int, keep=2):
    return run.save_checkpoint(epoch, 0, {}, lambda p: Path(p).write_bytes(b"params"),
                               lambda p: Path(p).write_bytes(b"states"), keep=keep)


def test_pruning_deletes_only_the_checkpoints_it_wrote(tmp_path):
    from gluon_tricks.results import RunDir

    # probe 9.8: the user's copy of a checkpoint inside checkpoints/ was deleted at the next save
    run = RunDir(tmp_path / "r")
    run.prepare(HASH, "tiny", "epochs = 3\n", False, False)
    save(run, 1)
    best = run.ckpt_root / "best_after_epoch1"
    best.mkdir()
    (best / "net.params").write_bytes(b"precious")
    (run.ckpt_root / ".my-hidden-notes").mkdir()
    for epoch in (2, 3, 4):
        save(run, epoch)
    assert [p.name for p in run.checkpoints()] == ["epoch0003-step0000000", "epoch0004-step0000000"]
    assert (best / "net.params").read_bytes() == b"precious"
    assert (run.ckpt_root / ".my-hidden-notes").is_dir()
    # --overwrite deletes this run's checkpoints, nothing else
    run.unlock()
    run.prepare("fedcba9876543210", "tiny", "epochs = 3\n", False, True)
    assert sorted(p.name for p in run.ckpt_root.iterdir()) == [".my-hidden-notes", "best_after_epoch1"]


def test_pruning_in_a_symlinked_scratch_directory_keeps_its_other_folders(tmp_path):
    from gluon_tricks.results import RunDir

    # probe 9.7: checkpoints/ -> a scratch disk that also holds backup_models/: deleted at the next save
    scratch = tmp_path / "scratch"
    (scratch / "backup_models").mkdir(parents=True)
    (scratch / "backup_models" / "weights.bin").write_bytes(b"other work")
    elsewhere = tmp_path / "elsewhere" / "epoch0000-step0000001"  # a link with our name points out
    elsewhere.mkdir(parents=True)
    run = RunDir(tmp_path / "r")
    run.prepare(HASH, "tiny", "epochs = 3\n", False, False)
    os.symlink(scratch, run.ckpt_root)
    os.symlink(elsewhere, scratch / "epoch0000-step0000001")
    for epoch in (1, 2, 3):
        save(run, epoch)
    assert sorted(p.name for p in scratch.iterdir()) == \
        ["backup_models", "epoch0000-step0000001", "epoch0002-step0000000", "epoch0003-step0000000"]
    assert (scratch / "backup_models" / "weights.bin").read_bytes() == b"other work"
    assert elsewhere.is_dir()


def test_a_lock_or_metrics_file_that_is_a_symlink_is_refused_and_its_target_kept(tmp_path):
    from gluon_tricks.results import RunDir

    # probe 9.6: a copied run whose .lock links to a file: --resume truncated it and wrote its pid there
    victim = tmp_path / "victim.txt"
    victim.write_text("precious content line\n")
    run = RunDir(tmp_path / "r")
    run.prepare(HASH, "tiny", "epochs = 3\n", False, False)
    run.unlock()
    (run.path / ".lock").unlink()
    os.symlink(victim, run.path / ".lock")
    with pytest.raises(UserError, match=r"\.lock is a symlink or not a regular file"):
        run.prepare(HASH, "tiny", "epochs = 3\n", True, False)
    (run.path / ".lock").unlink()
    os.mkfifo(run.path / ".lock")
    with pytest.raises(UserError, match="not a regular file"):
        run.prepare(HASH, "tiny", "epochs = 3\n", True, False)
    (run.path / ".lock").unlink()
    run.prepare(HASH, "tiny", "epochs = 3\n", True, False)
    os.symlink(victim, run.metrics_file)
    with pytest.raises(UserError, match=r"metrics\.jsonl is a symlink"):
        run.append_metrics({"epoch": 0})
    assert victim.read_text() == "precious content line\n"


# -- cause 4: a recipe's name stays inside the runs root ------------------------------------------
@pytest.mark.parametrize("name", ["../../../../x/escaped", "ABS/absname", "a\\b", "x\x1b]0;t\x07y", "n" * 201, " "])
def test_a_name_that_is_not_one_file_name_is_refused_at_load(tmp_path, capsys, name):
    # probes 9.1, 9.2: the run directory was created outside --runs (four levels up, or at the absolute path)
    name = name.replace("ABS", str(tmp_path / "abs"))
    recipe = tmp_path / "deep" / "r.toml"
    recipe.parent.mkdir()
    recipe.write_text(f"name = {json.dumps(name)}\nepochs = 1\n[data]\ndataset = \"cifar10-mini\"\n")
    runs = tmp_path / "runs" / "a" / "b"
    assert main(["train", str(recipe), "--runs", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "the name becomes the run directory" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]  # nothing created anywhere


def test_run_dir_for_never_leaves_the_root(tmp_path):
    from gluon_tricks.results import run_dir_for

    assert run_dir_for("..", HASH, tmp_path) == tmp_path / f"..-{HASH}"  # probe 9.3: a plain name
    for name in ("../x", "/abs/x", "a/b"):
        with pytest.raises(UserError, match="not a plain file name"):
            run_dir_for(name, HASH, tmp_path)


def a_result(run_hash, top1=10.0, **changes):
    """A result.json as engine._summarize writes it (the keys tables read)."""
    return dict({"hash": run_hash, "final_top1": top1, "final_top5": 50.0, "seconds_per_epoch": 1.0, "epochs": 3,
                 "hardware": {"ctx": ["cpu(0)"], "machine": "x86_64", "cpus": 2}}, **changes)


# -- cause 14 (and 10, export of an unfinished run) ----------------------------------------------------
@pytest.fixture
def run_with_checkpoint(tmp_path):
    from gluon_tricks.results import RunDir

    run = RunDir(tmp_path / "run")
    run.prepare(HASH, "tiny", "epochs = 3\n", False, False)
    run.save_checkpoint(1, 0, {}, lambda p: mx.nd.save(p, {"w": mx.nd.ones((4,))}),
                        lambda p: Path(p).write_bytes(b"states"))
    run.unlock()
    return run


def test_export_refuses_an_existing_file_unless_overwrite(run_with_checkpoint, tmp_path, capsys):
    # probe 6.3: "my precious teacher" was replaced without a question
    out = tmp_path / "existing.params"
    out.write_text("my precious teacher")
    assert main(["export", str(run_with_checkpoint.path), str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite" in err and err.count("\n") == 1
    assert out.read_text() == "my precious teacher"
    assert main(["export", str(run_with_checkpoint.path), str(out), "--overwrite"]) == 0
    assert out.read_bytes() == (run_with_checkpoint.checkpoints()[-1] / "net.params").read_bytes()


def test_export_is_atomic(run_with_checkpoint, tmp_path, monkeypatch, capsys):
    import shutil

    out = tmp_path / "teacher.params"
    out.write_text("the old teacher")

    def cut_copy(src, dst):  # a full disk (or a kill) half-way through the copy
        Path(dst).write_bytes(Path(src).read_bytes()[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", cut_copy)
    assert main(["export", str(run_with_checkpoint.path), str(out), "--overwrite"]) == 2
    assert "the disk is full" in capsys.readouterr().err
    assert out.read_text() == "the old teacher"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "teacher.params"]  # no temporary left


def test_export_of_an_unfinished_run_says_so(run_with_checkpoint, tmp_path, capsys):
    # probe 6.1: a run killed in epoch 2 of 3 was exported without a word
    assert main(["export", str(run_with_checkpoint.path), str(tmp_path / "a.params")]) == 0
    assert "is unfinished (1 of 3 epochs done, no result.json)" in capsys.readouterr().err
    (run_with_checkpoint.result_file).write_text(json.dumps({"final_top1": 10.0}))  # not a whole result
    assert main(["export", str(run_with_checkpoint.path), str(tmp_path / "b.params")]) == 0
    assert "is unfinished (1 of 3 epochs done; " in capsys.readouterr().err
    (run_with_checkpoint.result_file).write_text(json.dumps(a_result(HASH)))
    (tmp_path / "b.params").unlink()
    assert main(["export", str(run_with_checkpoint.path), str(tmp_path / "b.params")]) == 0
    assert "unfinished" not in capsys.readouterr().err


# -- cause 16: trainer.states is unpickled with an allow-list ----------------------------------------
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_trainer_states_runs_no_code_at_resume(tmp_path, monkeypatch):
    import hashlib

    import seams
    from gluon_tricks.engine import train
    from gluon_tricks.errors import Interrupted
    from gluon_tricks.recipe import recipe_from_dict

    # probe 9.11: trainer.states replaced by a pickle that runs a command, its SHA-256 updated in state.json
    seams.linear_zoo(monkeypatch)
    d = seams.tiny(epochs=2, images=32)
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(recipe_from_dict(d), run, progress=False, max_steps=3)
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    marker = tmp_path / "PWNED"
    (ckpt / "trainer.states").write_bytes(pickle.dumps(({0: _Payload(marker)}, None)))
    state = json.loads((ckpt / "state.json").read_text())
    state["sha256"]["trainer.states"] = hashlib.sha256((ckpt / "trainer.states").read_bytes()).hexdigest()
    (ckpt / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match=r"trainer.states is not optimizer states written by gluon-tricks "
                                        r"\(refusing to load posix.system\)"):
        train(recipe_from_dict(d), run, resume=True, progress=False)
    assert not marker.exists()


@pytest.mark.parametrize("optimizer,dtype", [(o, "float32") for o in ("nag", "sgd", "adam", "nadam", "adadelta",
                                                                       "rmsprop")] + [("nag", "float16")])
def test_the_states_every_optimizer_saves_pass_the_allow_list(tmp_path, optimizer, dtype):
    from mxnet import autograd, gluon

    from gluon_tricks.recipe import recipe_from_dict
    from gluon_tricks.checkpoints import check_trainer_states
    from gluon_tricks.tricks.optim import make_optimizer

    recipe = recipe_from_dict({"optim": {"name": optimizer}, "schedule": {"kind": "cosine"},
                               "model": {"dtype": dtype}})
    net = gluon.nn.Dense(3, in_units=4)
    net.initialize()
    net.cast(dtype)
    trainer = gluon.Trainer(net.collect_params(), *make_optimizer(recipe, net, 10))
    with autograd.record():  # float16 layers do not run on the CPU; elementwise ops do
        loss = mx.nd.add_n(*[p.data().astype("float32").sum() for p in net.collect_params().values()])
    loss.backward()
    trainer.step(2)
    trainer.save_states(str(tmp_path / "trainer.states"))
    assert (tmp_path / "trainer.states").read_bytes().count(b"NDArray")  # states were saved, not an empty dict
    check_trainer_states(tmp_path / "trainer.states")
