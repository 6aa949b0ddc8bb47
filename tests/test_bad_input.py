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
    err = capsys.readouterr().err.strip()
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
    one_line_error(capsys, ["train", recipe_file(tmp_path), "--ctx", "gpu:0"], "GPU", "docs/gpu.md")


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
