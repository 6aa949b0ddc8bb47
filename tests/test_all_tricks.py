"""Every trick on at once (but float16, which this CPU cannot run), end to end."""
import json
import math

import pytest

import mxnet as mx

from gluon_tricks.engine import train
from gluon_tricks.models import build_model
from gluon_tricks.recipe import recipe_from_dict


def test_every_trick_together(tmp_path):
    teacher = build_model(recipe_from_dict({"model": {"name": "cifar_resnet20_v1"}}), 10, [mx.cpu()])
    teacher(mx.nd.zeros((1, 3, 32, 32)))
    teacher_file = tmp_path / "teacher.params"
    teacher.save_parameters(str(teacher_file))
    r = recipe_from_dict({
        "name": "everything", "epochs": 2,
        "data": {"dataset": "cifar10-mini", "batch_size": 32, "train_limit": 128, "test_limit": 64},
        "model": {"name": "cifar_resnet20_v1", "zero_gamma": True},
        "optim": {"no_bias_decay": True, "linear_scaling": True},
        "schedule": {"kind": "cosine", "warmup_epochs": 1},
        "smoothing": {"eps": 0.1},
        "mixup": {"kind": "random", "choices": ["interpolation", "stitch_height", "stitch_width", "tile"],
                  "min_lambda": 0.1, "off_last_epochs": 0},
        "distill": {"teacher": str(teacher_file), "teacher_model": "cifar_resnet20_v1"},
    })
    result = train(r, tmp_path / "run", progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["mixing"] for row in rows)
    assert all(0 < row["train_loss"] < 50 for row in rows)
    # linear scaling: batch 32 -> base lr 0.1 * 32 / 256; the row's lr is its last step's:
    # step 3 of a 4-step linear warm-up from 0, then the last of 4 cosine steps
    base = 0.1 * 32 / 256
    assert rows[0]["lr"] == pytest.approx(base * 3 / 4)
    assert rows[1]["lr"] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert result["final_top1"] >= 0 and (tmp_path / "run" / "result.json").is_file()
