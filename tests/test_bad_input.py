"""Bad input ends in one line naming the thing and the fix, exit 2, no traceback."""
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import pytest

from gluon_tricks.cli import main
from gluon_tricks.models import build_model
from gluon_tricks.recipe import recipe_from_dict, to_toml

ROOT = Path(__file__).resolve().parent.parent


def recipe_file(tmp_path, name="r.toml", **extra):
    d = {"epochs": 1, "data": {"dataset": "cifar10-mini", "batch_size": 32, "train_limit": 64, "test_limit": 32},
         "model": {"name": "cifar_resnet20_v1"}}
    for k, v in extra.items():
        d[k] = dict(d.get(k, {}), **v) if isinstance(v, dict) else v
    p = tmp_path / name
    p.write_text(to_toml(recipe_from_dict(d)))
    return p


def one_line_error(capsys, argv, *needles):
    assert main([str(a) for a in argv]) == 2
    # warnings about the recipe (recipe.run_warnings, e.g. decays after a 1-epoch run) are not the error
    err = "\n".join(l for l in capsys.readouterr().err.strip().splitlines()
                    if not l.startswith("gluon-tricks: warning:"))
    assert len(err.splitlines()) == 1 and err.startswith("gluon-tricks: error:"), err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_missing_dataset_directory(tmp_path, capsys, monkeypatch):
    import mxnet.gluon.data.vision as vision

    monkeypatch.setattr(vision, "CIFAR10", lambda **k: (_ for _ in ()).throw(ConnectionError("offline")))
    p = recipe_file(tmp_path, data={"dataset": "cifar10", "root": str(tmp_path / "none")})
    one_line_error(capsys, ["train", p, "--out", tmp_path / "run"], str(tmp_path / "none"), "data_batch_1.bin")
    assert not (tmp_path / "run").exists()


def test_cifar_file_of_wrong_size(tmp_path, capsys):
    root = tmp_path / "c"
    root.mkdir()
    for i in range(1, 6):
        (root / f"data_batch_{i}.bin").write_bytes(bytes(3073 * 40))
    (root / "test_batch.bin").write_bytes(bytes(3073 * 40 - 5))
    p = recipe_file(tmp_path, data={"dataset": "cifar10", "root": str(root)})
    one_line_error(capsys, ["train", p, "--out", tmp_path / "run"], "test_batch.bin", "truncated")


@pytest.mark.parametrize("text,needle", [
    ("[optim]\nlearningrate = 0.1\n", "unknown key 'optim.learningrate'"),
    ("epochs = \"ten\"\n", "epochs: expected int"),
    ("extends = \"r.toml\"\n", "cyclic extends"),
    ("import os\nos.system('echo hacked')\n", "not valid TOML"),
])
def test_recipe_errors(tmp_path, capsys, text, needle):
    p = tmp_path / "r.toml"
    p.write_text(text)
    one_line_error(capsys, ["train", p], needle)


def test_teacher_of_another_architecture_or_class_count(tmp_path, capsys):
    net = build_model(recipe_from_dict({"model": {"name": "cifar_resnet20_v1"}}), 100, [mx.cpu()])
    net(mx.nd.zeros((1, 3, 32, 32)))
    net.save_parameters(str(tmp_path / "t.params"))
    p = recipe_file(tmp_path, distill={"teacher": str(tmp_path / "t.params"), "teacher_model": "cifar_resnet56_v1"})
    one_line_error(capsys, ["train", p, "--out", tmp_path / "a"], "t.params", "does not match cifar_resnet56_v1")
    p = recipe_file(tmp_path, "q.toml", distill={"teacher": str(tmp_path / "t.params"), "teacher_model": "cifar_resnet20_v1"})
    one_line_error(capsys, ["train", p, "--out", tmp_path / "b"], "with 10 classes")


def test_gpu_without_gpu(tmp_path, capsys):
    missing = f"gpu:{mx.context.num_gpus()}"  # one past the last GPU MXNet sees (gpu:0 on CPU)
    one_line_error(capsys, ["train", recipe_file(tmp_path), "--ctx", missing], "GPU", "docs/gpu.md")


def test_output_dir_with_a_different_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    one_line_error(capsys, ["train", recipe_file(tmp_path), "--out", out], "not a gluon-tricks run")
    one_line_error(capsys, ["train", recipe_file(tmp_path), "--out", out, "--overwrite"], "not a gluon-tricks run")
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite never deletes what is not a run


def test_unknown_table_and_model(tmp_path, capsys):
    one_line_error(capsys, ["table", "followup/table99"], "no table 'followup/table99'")
    one_line_error(capsys, ["train", recipe_file(tmp_path, model={"name": "resnet51"})], "unknown model 'resnet51'")
    one_line_error(capsys, ["train", "does/not/exist"], "recipe file not found")


def test_subprocess_error_has_no_traceback(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("[mixup]\nkind = \"cutmix\"\n")
    proc = subprocess.run([sys.executable, "-m", "gluon_tricks", "train", str(p)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "mixup.kind = 'cutmix' is not one of" in proc.stderr


def test_keep_checkpoints_below_one_is_refused(tmp_path, capsys):
    # keep = -1 used to delete every checkpoint right after writing it (checkpoints()[:-(-1)]).
    for keep in (-1, 0):
        one_line_error(capsys, ["train", recipe_file(tmp_path), "--set", f"system.keep_checkpoints={keep}",
                                "--out", tmp_path / "run"], "system.keep_checkpoints must be at least 1")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key", ["optim.lr", "optim.wd", "optim.momentum", "schedule.final_lr",
                                 "schedule.warmup_start_lr", "mixup.alpha", "distill.temperature", "data.min_area"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_must_be_a_finite_number(tmp_path, capsys, key, value):
    one_line_error(capsys, ["train", recipe_file(tmp_path), "--set", f"{key}={value}", "--out", tmp_path / "run"],
                   key, "finite")
    assert not (tmp_path / "run").exists()  # refused before anything is created


def test_nan_in_a_float_list_is_refused(tmp_path, capsys):
    one_line_error(capsys, ["train", recipe_file(tmp_path), "--set", "data.std=[0.2, nan, 0.2]"], "data.std", "finite")


@pytest.mark.parametrize("flag,value,needle", [
    ("--seed", "-1", "seed must be in 0..4294967295"),            # numpy's seed range: [0, 2**32)
    ("--seed", str(2 ** 32), "seed must be in 0..4294967295"),
    ("--set", "model.classes=-1", "model.classes must be >= 0"),
])
def test_out_of_range_integers(tmp_path, capsys, flag, value, needle):
    one_line_error(capsys, ["train", recipe_file(tmp_path), flag, value, "--out", tmp_path / "run"], needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,needle", [
    (["table", "demo", "--epochs-scale", "nan"], "--epochs-scale"),
    (["table", "demo", "--epochs-scale", "inf"], "--epochs-scale"),
    (["table", "demo", "--epochs-scale", "0"], "--epochs-scale"),
    (["table", "demo", "--seeds", "0"], "--seeds"),
    (["table", "demo", "--seeds", "-1"], "--seeds"),
    (["table", "demo", "--format", "xml"], "--format"),
])
def test_bad_flag_values_are_one_line_errors(tmp_path, capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--runs", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "--help" in err, err


def test_too_long_or_nul_names_are_one_line_errors(tmp_path, capsys):
    one_line_error(capsys, ["train", "x" * 5000], "File name too long")
    long_parent = tmp_path / "long.toml"
    long_parent.write_text(f'extends = "{"x" * 5000}.toml"\n')
    one_line_error(capsys, ["train", long_parent], "long.toml", "File name too long")
    nul = tmp_path / "nul.toml"
    nul.write_text('extends = "a\\u0000b.toml"\n')
    one_line_error(capsys, ["train", nul], "nul.toml", "NUL")
    one_line_error(capsys, ["train", recipe_file(tmp_path), "--out", tmp_path / ("y" * 5000)], "File name too long")


def test_control_characters_in_paths_stay_on_one_line(tmp_path, capsys):
    err = one_line_error(capsys, ["train", str(tmp_path / "no\nsuch.toml")], "recipe file not found", "no\\nsuch.toml")
    err = one_line_error(capsys, ["train", str(tmp_path / "x\x1b]0;pwned\x07\x1b[2J.toml")], "recipe file not found")
    assert "\x1b" not in err and "\x07" not in err


def test_prepare_output_under_a_file_is_one_line(tmp_path, capsys):
    src = tmp_path / "img" / "a"
    src.mkdir(parents=True)
    import numpy as np, cv2
    cv2.imwrite(str(src / "0.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "afile").write_text("")
    # the message names the file in the way and says what it is (not the OS's "File exists")
    err = one_line_error(capsys, ["prepare", tmp_path / "img", tmp_path / "afile" / "train", "--workers", "1"],
                         "afile is a file")
    assert "File exists" not in err


@pytest.mark.parametrize("content", [bytes(range(256)) * 20, b""])
def test_a_teacher_file_that_is_not_params_says_so(tmp_path, capsys, content):
    (tmp_path / "bad.params").write_bytes(content)
    p = recipe_file(tmp_path, distill={"teacher": str(tmp_path / "bad.params"), "teacher_model": "cifar_resnet20_v1"})
    err = one_line_error(capsys, ["train", p, "--out", tmp_path / "run"], "bad.params", "not an MXNet .params file")
    assert "Traceback" not in err
