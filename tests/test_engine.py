"""End-to-end runs on a few hundred real CIFAR-10 images with a ResNet-20."""
import json

import mxnet as mx
import numpy as np
import pytest

from gluon_tricks.engine import parse_ctx, train
from gluon_tricks.errors import Interrupted, UserError
from gluon_tricks.recipe import recipe_from_dict


def params_of(run_dir):
    ckpts = sorted((run_dir / "checkpoints").iterdir())
    return mx.nd.load(str(ckpts[-1] / "net.params"))


def test_one_epoch_writes_every_run_file(tmp_path, tiny_recipe_dict):
    r = recipe_from_dict(dict(tiny_recipe_dict, epochs=1))
    out = tmp_path / "run"
    result = train(r, out, progress=False)
    for name in ("recipe.toml", "run.json", "metrics.jsonl", "result.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0]
    assert set(rows[0]) >= {"lr", "train_loss", "top1", "top5", "seconds", "images_per_sec"}
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    assert {p.name for p in ckpt.iterdir()} == {"net.params", "trainer.states", "state.json"}
    saved = json.loads((out / "result.json").read_text())
    assert saved == result and saved["epochs"] == 1 and saved["test_images"] == 128
    assert 0 <= saved["final_top1"] <= saved["final_top5"] <= 100
    assert saved["versions"]["mxnet"] == "1.9.1"
    assert np.isfinite(rows[0]["train_loss"]) and rows[0]["train_loss"] > 0


def test_resume_equals_uninterrupted(tmp_path, tiny_recipe_dict):
    r = recipe_from_dict(tiny_recipe_dict)  # 2 epochs x 4 steps
    full = tmp_path / "full"
    train(r, full, progress=False)
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted, match="stopped at epoch 2, step 2"):
        train(r, cut, progress=False, max_steps=6)  # mid-epoch 2
    with pytest.raises(UserError, match="unfinished run .* --resume"):
        train(r, cut, progress=False)
    train(r, cut, resume=True, progress=False)
    a, b = params_of(full), params_of(cut)
    assert a.keys() == b.keys()
    # MXNet's CPU kernels are not bitwise reproducible run to run (OpenMP reductions);
    # the bound below is far below any real divergence (a different batch order moves weights ~1e-2).
    worst = max(float(mx.nd.abs(a[k] - b[k]).max().asscalar()) for k in a)
    assert worst < 1e-4
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [0, 1]


def test_ctx_parsing_and_missing_gpu():
    assert parse_ctx("cpu:0,cpu:1") == [mx.cpu(0), mx.cpu(1)]
    assert parse_ctx("cpu") == [mx.cpu(0)]
    with pytest.raises(UserError, match="GPU"):
        parse_ctx("gpu:0")
    with pytest.raises(UserError, match="--ctx"):
        parse_ctx("tpu:0")
