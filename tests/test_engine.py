"""End-to-end runs on a few hundred real CIFAR-10 images with a ResNet-20."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

from gluon_tricks.engine import train
from seams import parse_ctx
from gluon_tricks.errors import UserError
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


RESUME_SCRIPT = """
import json, sys, mxnet as mx
from gluon_tricks.engine import train
from gluon_tricks.errors import Interrupted, UserError
from gluon_tricks.recipe import recipe_from_dict
from gluon_tricks.results import RunDir
r = recipe_from_dict(json.loads(sys.argv[1])); out = sys.argv[2]
params = lambda d: mx.nd.load(str(RunDir(d).latest_checkpoint(quiet=True).params))
train(r, out + "/full", progress=False)
try:
    train(r, out + "/cut", progress=False, max_steps=int(sys.argv[3]))
except Interrupted as e:
    print("INTERRUPTED", e)
try:
    train(r, out + "/cut", progress=False)
except UserError as e:
    print("REFUSED", e)
train(r, out + "/cut", resume=True, progress=False)
a, b = params(out + "/full"), params(out + "/cut")
print("DIFF", max(float(mx.nd.abs(a[k] - b[k]).max().asscalar()) for k in a))
"""


@pytest.mark.parametrize("max_steps,where", [(6, "epoch 2, step 2"), (4, "epoch 1, step 4")])
def test_resume_equals_uninterrupted_exactly(tmp_path, tiny_recipe_dict, max_steps, where):
    """Interrupted mid-epoch or at an epoch boundary, then resumed: the same weights, bit for bit.

    With oneDNN on (MXNet's CPU default) kernels depend on what ran before in the process, so a
    resumed run matches only to run-to-run noise; with MXNET_MKLDNN_ENABLED=0 the CPU kernels are
    reproducible and the resume must be exact (docs/reliability.md)."""
    import subprocess
    import sys

    # one OpenMP thread, as tests/test_reliability.py's cli(): 2 threads on a loaded machine are pathologically slow
    env = dict(os.environ, MXNET_MKLDNN_ENABLED="0", MXNET_STORAGE_FALLBACK_LOG_VERBOSE="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, json.dumps(tiny_recipe_dict), str(tmp_path),
                           str(max_steps)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert f"INTERRUPTED stopped at {where}" in out
    assert "REFUSED" in out and "unfinished run" in out
    assert "DIFF 0.0\n" in out, out
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [0, 1]


def test_ctx_parsing_and_missing_gpu():
    assert parse_ctx("cpu:0,cpu:1") == [mx.cpu(0), mx.cpu(1)]
    assert parse_ctx("cpu") == [mx.cpu(0)]
    with pytest.raises(UserError, match="GPU"):
        parse_ctx(f"gpu:{mx.context.num_gpus()}")  # one past the last GPU MXNet sees (gpu:0 on CPU)
    with pytest.raises(UserError, match="--ctx"):
        parse_ctx("tpu:0")


def test_dynamic_loss_scalings_overflow_check_is_a_counted_host_sync(tmp_path, monkeypatch):
    """Dynamic loss scaling must read an overflow verdict before every update (the engine's one
    per-step sync): the metrics' host_syncs counts it, one more read per step than without."""
    import seams

    seams.linear_zoo(monkeypatch)
    syncs = {}
    for scale in ("none", "dynamic"):
        recipe = recipe_from_dict(seams.tiny(name=scale, optim={"loss_scale": scale}))  # 64 images, batch 16
        train(recipe, tmp_path / scale, progress=False)
        (row,) = [json.loads(l) for l in (tmp_path / scale / "metrics.jsonl").read_text().splitlines()]
        syncs[scale] = row["host_syncs"]
    assert syncs["dynamic"] - syncs["none"] == 4


def test_eval_every_tests_every_nth_epoch_and_always_the_last(tmp_path, monkeypatch):
    """system.eval_every = 2 over 5 epochs: test passes after epochs 2, 4 and 5 (the last, whose
    row is the result), null top1/top5 in the others; the rows are read back as epoch rows, the
    run keeps its identity, and the training itself is the one of eval_every = 1 (a test pass
    changes no weight: same per-epoch train losses)."""
    import seams
    from gluon_tricks.identity import content_hash
    from gluon_tricks.results import RunDir

    seams.linear_zoo(monkeypatch)
    rows, results = {}, {}
    for every in (1, 2):
        recipe = recipe_from_dict(seams.tiny(name=f"every{every}", epochs=5, system={"eval_every": every}))
        results[every] = train(recipe, tmp_path / str(every), progress=False)
        rows[every] = RunDir(tmp_path / str(every)).read_metrics()
        assert [r["epoch"] for r in rows[every]] == [0, 1, 2, 3, 4]
    tested = [r["top1"] is not None for r in rows[2]]
    assert tested == [False, True, False, True, True]
    assert all((r["top5"] is None) == (r["top1"] is None) for r in rows[2])
    assert results[2]["final_top1"] == rows[2][-1]["top1"]
    assert results[2]["best_epoch"] in (1, 3, 4)
    assert content_hash(recipe_from_dict(seams.tiny(system={"eval_every": 2}))) == \
        content_hash(recipe_from_dict(seams.tiny()))
    np.testing.assert_allclose([r["train_loss"] for r in rows[2]], [r["train_loss"] for r in rows[1]], rtol=1e-6)
    assert results[2]["final_top1"] == pytest.approx(results[1]["final_top1"])


def test_eval_every_below_one_is_refused():
    import seams

    with pytest.raises(UserError, match="system.eval_every = 0: must be >= 1"):
        recipe_from_dict(seams.tiny(system={"eval_every": 0}))
