"""`gluon-tricks eval` and the teacher's accuracy under a table whose rows distill."""
import json

import mxnet as mx
import numpy as np
import pytest

from gluon_tricks.cli import main
from gluon_tricks.recipe import recipe_from_dict, to_toml
from gluon_tricks.scoring import score
from test_teacher import saved_resnet20

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def data_recipe(tmp_path, test_limit=100, **distill):
    d = {"name": "tiny", "epochs": 1,
         "data": {"dataset": "cifar10-mini", "batch_size": 32, "train_limit": 64, "test_limit": test_limit,
                  "augment": "none"},
         "model": {"name": "cifar_resnet20_v1"}, "schedule": {"kind": "constant"}, "system": {"ctx": "cpu"}}
    if distill:
        d["distill"] = distill
    path = tmp_path / "tiny.toml"
    path.write_text(to_toml(recipe_from_dict(d)))
    return path


def count_correct(params, images, labels, mean, std):
    """Top-1 and top-5 counted image by image in numpy from the network's logits."""
    from gluon_tricks.models import _get

    net = _get("cifar_resnet20_v1", classes=10)
    net.load_parameters(str(params))
    x = (images.astype(np.float32) / 255 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    logits = net(mx.nd.array(x.transpose(0, 3, 1, 2))).asnumpy()
    ranks = [(row > row[y]).sum() for row, y in zip(logits, labels)]  # classes scored above the label
    return 100 * np.mean([r == 0 for r in ranks]), 100 * np.mean([r < 5 for r in ranks])


def test_a_params_file_scores_what_counting_its_predictions_gives(tmp_path):
    from gluon_tricks.data.cifar import load_cifar

    params = saved_resnet20(tmp_path / "t.params", seed=4)
    data = data_recipe(tmp_path, test_limit=100)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
    got = score(str(params), model="cifar_resnet20_v1", data=str(data), ctx="cpu",
                overrides=[f"data.mean={mean}", f"data.std={std}"])
    test = load_cifar("cifar10-mini", train=False).head(100)
    top1, top5 = count_correct(params, test.images, test.labels, mean, std)
    assert got["images"] == 100
    assert got["top1"] == pytest.approx(top1) and got["top5"] == pytest.approx(top5)


def test_a_run_directory_scores_its_last_epochs_test_accuracy(tmp_path, capsys):
    from gluon_tricks.engine import train
    from gluon_tricks.recipe import load_recipe

    run = tmp_path / "run"
    result = train(load_recipe(data_recipe(tmp_path, test_limit=64)), run, progress=False)
    assert main(["eval", str(run), "--json", "--ctx", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["images"] == 64 and got["model"] == "cifar_resnet20_v1"
    assert got["top1"] == pytest.approx(result["final_top1"]) and got["top5"] == pytest.approx(result["final_top5"])


@pytest.mark.parametrize("argv, needle", [
    (["eval", "{params}", "--data", "{data}"], "give its architecture with --model"),
    (["eval", "{params}", "--model", "cifar_resnet20_v1"], "name the test set with --data RECIPE"),
    (["eval", "{tmp}", "--data", "{data}"], "not a gluon-tricks run"),
])
def test_eval_without_what_it_needs_is_one_line(tmp_path, capsys, argv, needle):
    params = saved_resnet20(tmp_path / "t.params", seed=1)
    data = data_recipe(tmp_path)
    argv = [a.format(params=params, data=data, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_a_table_that_distills_prints_its_teachers_accuracy(tmp_path, monkeypatch):
    """Measured by the student's run on its test set, as the teacher sees it: the same number
    `eval` gives for the teacher file with the student's data recipe."""
    from gluon_tricks.report import render
    from gluon_tricks.tables import Row, Table, run_table

    monkeypatch.setenv("GLUON_TRICKS_RESULTS", "")
    params = saved_resnet20(tmp_path / "teacher.params", seed=5)
    data = data_recipe(tmp_path, test_limit=64, teacher=str(params), teacher_model="cifar_resnet20_v1")
    table = Table("t", "t", [Row("+ distillation", data)])
    run_table(table, runs_root=tmp_path / "runs", progress=False, in_process=True)
    text = render(table, runs_root=tmp_path / "runs")
    expected = score(str(params), model="cifar_resnet20_v1", data=str(data), ctx="cpu")
    assert f"teacher {params}: top-1 {expected['top1']:.2f}, top-5 {expected['top5']:.2f} on the 64 test images" in text
