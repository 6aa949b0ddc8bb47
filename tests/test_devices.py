"""Any batch on any number of devices; the BatchNorm group as part of a run's identity.

CPU contexts stand in for GPUs: `cpu:0-7` is eight devices to MXNet's splitting and
kvstore code, which is where a p3.16xlarge's layout bugs live.
"""
from __future__ import annotations

from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from gluon_tricks.devices import HostReads
from gluon_tricks.engine import evaluate, train
from gluon_tricks.identity import content_hash
from gluon_tricks.recipe import recipe_from_dict


class ArrayStream:
    """A test stream over fixed arrays, in batches of `batch` (the last one shorter)."""

    def __init__(self, x, y, batch):
        self.x, self.y, self.batch = x, y, batch

    def batches(self):
        for i in range(0, len(self.y), self.batch):
            yield self.x[i:i + self.batch], self.y[i:i + self.batch]

    def __len__(self):
        return len(self.y)


def tiny_net():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3, in_channels=3), gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(21, in_units=4))
    return net


@pytest.mark.parametrize("devices", [4, 8])
def test_a_last_test_batch_smaller_than_the_device_count_scores_as_on_one_device(devices):
    # Food-101's 21-class test set: 5,250 images at batch 32 leave a last batch of 2. Here 66
    # images at batch 32: batches of 32, 32 and 2; 32 over 8 devices is even, 32 over 4 too,
    # and 2 is fewer images than devices (MXNet's split_and_load made empty slices of it).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(66, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 21, 66)
    net = tiny_net()
    net.initialize(mx.init.Xavier(), ctx=[mx.cpu(i) for i in range(devices)])
    net.hybridize(static_alloc=True)
    # the oracle: every image's top class on one device, counted in numpy
    scores = net(mx.nd.array(x, ctx=mx.cpu(0))).asnumpy()
    oracle1 = 100.0 * np.mean(scores.argmax(axis=1) == y)
    oracle5 = 100.0 * np.mean([label in np.argsort(-s)[:5] for s, label in zip(scores, y)])
    assert 0 < oracle1 < 100  # a test that can tell right from wrong

    for batch in (32, 10):  # 10 does not divide over 4 or 8 devices either: 10, 10, ..., 6
        top1, top5 = evaluate(net, ArrayStream(x, y, batch), [mx.cpu(i) for i in range(devices)], "float32",
                              HostReads())
        one1, one5 = evaluate(net, ArrayStream(x, y, batch), [mx.cpu(0)], "float32", HostReads())
        assert top1 == pytest.approx(one1) == pytest.approx(oracle1)
        assert top5 == pytest.approx(one5) == pytest.approx(oracle5)


def test_a_batch_is_cut_as_mxnet_cuts_it_and_an_even_split_exactly_as_before():
    from gluon_tricks.devices import device_shares, device_split, micro_slices, plan_layout

    assert device_shares(64, 3) == [22, 21, 21] and device_shares(2, 3) == [1, 1] and device_shares(96, 8) == [12] * 8
    ctxs = [mx.cpu(i) for i in range(8)]
    x = np.arange(96 * 2, dtype=np.float32).reshape(96, 2)
    # an even split: the slices split_and_load has always handed the devices, bit for bit
    for got, old in zip(device_split(x, ctxs), gluon.utils.split_and_load(x, ctxs)):
        assert got.context == old.context
        np.testing.assert_array_equal(got.asnumpy(), old.asnumpy())
    # uneven: consecutive slices 22, 21, 21 that together are the batch, each on its device
    parts = device_split(x[:64], ctxs[:3])
    assert [p.shape[0] for p in parts] == [22, 21, 21] and [p.context for p in parts] == ctxs[:3]
    np.testing.assert_array_equal(np.concatenate([p.asnumpy() for p in parts]), x[:64])
    # micro-batches: equal passes when they divide (the old equal cut), no empty pass otherwise
    share = mx.nd.array(x[:32])
    for got, old in zip(micro_slices(share, 4), np.split(x[:32], 4)):
        np.testing.assert_array_equal(got.asnumpy(), old)
    assert [p.shape[0] for p in micro_slices(share[:21], 22)] == [1] * 21
    assert [p.shape[0] for p in micro_slices(share[:21], 2)] == [11, 10]
    # a batch smaller than the device count keeps as many devices as it has images
    assert plan_layout(2, 1, 3, 0).devices == 2 and plan_layout(64, 1, 3, 0).shares == [22, 21, 21]
    assert plan_layout(64, 1, 3, 11).accumulation == 2 and plan_layout(96, 1, 8, 0).as_dict() == {
        "workers": 1, "devices": 8, "device_batch": 12, "accumulation": 1, "bn_group": 12}


def test_workers_still_need_equal_shares_and_device_batch_divides_the_first_share():
    from gluon_tricks.devices import plan_layout
    from gluon_tricks.errors import UserError

    with pytest.raises(UserError, match=r"data.batch_size 100 does not split evenly over 3 workers"):
        plan_layout(100, 3, 1, 0)  # each worker's stream reads batch / workers images
    with pytest.raises(UserError, match=r"system.device_batch 8 does not divide the 22 images the first device "
                                        r"gets per step .* such as 2"):
        plan_layout(64, 1, 3, 8)


def _bn_free_net(recipe, classes, ctx):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3, strides=2, activation="relu"), gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(classes))
    net.initialize(mx.init.Xavier(), ctx=ctx)
    return net


def _final_params(run):
    from gluon_tricks.results import RunDir

    return mx.nd.load(str(RunDir(run).latest_checkpoint(quiet=True).params))


@pytest.mark.parametrize("batch, system, optim", [
    (64, {"ctx": "cpu:0-2"}, {}),  # 22, 21, 21: the old refusal
    (64, {"ctx": "cpu:0-2", "device_batch": 11}, {}),  # passes of 11+11, 11+10, 11+10
    (64, {"ctx": "cpu:0-2", "device_batch": 1}, {}),  # 22 passes on the first device, 21 on the others
    (64, {"ctx": "cpu:0-2"}, {"loss_scale": "dynamic"}),  # the overflow check on the reduced gradient
    (2, {"ctx": "cpu:0-2"}, {}),  # fewer images than devices: two devices of one image
])
def test_an_uneven_split_trains_as_one_device_does(tmp_path, monkeypatch, batch, system, optim):
    """Without BatchNorm, any cut of the batch over devices and passes is the one-device update
    up to float32 summation order: every device's gradient is a sum over its images, and the
    update divides the reduced sum by the global batch."""
    import gluon_tricks.engine as engine

    monkeypatch.setattr(engine, "build_model", _bn_free_net)

    def run(name, system, optim):
        r = recipe_from_dict({"epochs": 1, "seed": 3, "data": {"dataset": "cifar10-mini", "batch_size": batch,
                                                               "train_limit": 2 * batch, "test_limit": 32},
                              "optim": dict({"lr": 0.4}, **optim), "system": dict(system, kvstore="device")})
        result = train(r, tmp_path / name, progress=False)
        return result, _final_params(tmp_path / name)

    result, many = run("many", system, optim)
    _, one = run("one", {"ctx": "cpu"}, {})
    assert set(many) == set(one)
    for k in many:
        np.testing.assert_allclose(many[k].asnumpy(), one[k].asnumpy(), rtol=1e-4, atol=1e-5)
    assert result["layout"]["devices"] == min(3, batch)
    assert result["hardware"]["ctx"] == [f"cpu({i})" for i in range(min(3, batch))]
    assert result["skipped_steps"] == 0


def _slices(seed, sizes, k=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(sum(sizes), 3, 8, 8)).astype(np.float32)
    y = np.eye(k, dtype=np.float32)[rng.integers(0, k, sum(sizes))]
    bounds = np.cumsum([0] + list(sizes))
    return [(x[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.mark.parametrize("partner", ["reversed", "random"])
def test_mixing_an_even_split_draws_one_plan_as_before_and_an_uneven_one_a_plan_per_size(partner):
    from gluon_tricks.recipe import MixupSpec
    from gluon_tricks.tricks.mixing import Mixer, mix_numpy

    mixer = Mixer(MixupSpec(kind="random", partner=partner, alpha=1.0,
                            choices=["tile", "stitch_width", "interpolation"]), epochs=4)
    ctxs = [mx.cpu(i) for i in range(3)]
    for seed in range(12):
        # even: the one plan a batch slice of 8 always got, applied to every device's slice
        even = _slices(seed, [8, 8, 8])
        plan = mixer.plan(8, 8, 8, 1, np.random.default_rng(seed))
        xs, ys = mixer.mix([mx.nd.array(x, ctx=c) for (x, _), c in zip(even, ctxs)],
                           [mx.nd.array(y, ctx=c) for (_, y), c in zip(even, ctxs)], 1, np.random.default_rng(seed))
        for (x, y), xm, ym in zip(even, xs, ys):
            want_x, want_y = mix_numpy(x, y, plan)
            np.testing.assert_allclose(xm.asnumpy(), want_x, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(ym.asnumpy(), want_y, rtol=1e-6, atol=1e-6)
        # uneven (22, 21, 21): one kind and lambda for the batch, partners within each slice
        rng = np.random.default_rng(seed)
        uneven = _slices(seed, [22, 21, 21])
        mix = mixer.draw(1, rng)
        plans = {22: mixer.plan_for(mix, 22, 8, 8, rng), 21: mixer.plan_for(mix, 21, 8, 8, rng)}
        xs, ys = mixer.mix([mx.nd.array(x, ctx=c) for (x, _), c in zip(uneven, ctxs)],
                           [mx.nd.array(y, ctx=c) for (_, y), c in zip(uneven, ctxs)], 1, np.random.default_rng(seed))
        for (x, y), xm, ym in zip(uneven, xs, ys):
            plan = plans[len(x)]
            assert plan.kind == mix[0] and plan.orders.shape[1] == len(x)
            for order in plan.orders:  # every partner ordering is a permutation of the slice
                assert sorted(order) == list(range(len(x)))
            want_x, want_y = mix_numpy(x, y, plan)
            np.testing.assert_allclose(xm.asnumpy(), want_x, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(ym.asnumpy(), want_y, rtol=1e-6, atol=1e-6)
        assert plans[22].lam == plans[21].lam


def test_a_batchnorm_net_trains_on_an_uneven_split_with_mixing_and_micro_batches(tmp_path, tiny_recipe_dict):
    recipe = recipe_from_dict(dict(tiny_recipe_dict, epochs=1,
                                   data=dict(tiny_recipe_dict["data"], train_limit=128, test_limit=32),
                                   mixup={"kind": "stitch_height", "alpha": 1.0},
                                   system={"ctx": "cpu:0-2", "device_batch": 11, "log_interval": 1}))
    result = train(recipe, tmp_path / "run", progress=False)
    assert result["layout"] == {"workers": 1, "devices": 3, "device_batch": 22, "accumulation": 2, "bn_group": 11,
                                "device_batches": [22, 21, 21], "source_bn_group": 64.0}
    assert result["hash"] == content_hash(recipe, 11) != content_hash(recipe)
    assert np.isfinite(result["final_top1"])


# --- the BatchNorm group is part of what a row is ------------------------------------------

ROOT = Path(__file__).resolve().parent.parent / "recipes"


def test_a_faithful_layout_keeps_the_recipe_hash_and_another_group_changes_it():
    from gluon_tricks.recipe import load_recipe

    bot = load_recipe(ROOT / "bot" / "baseline.toml")  # 8 V100s x 32 images
    followup = load_recipe(ROOT / "followup" / "baseline.toml")  # one V100, 256 images
    assert content_hash(bot, 32) == content_hash(bot)
    assert content_hash(followup, 256) == content_hash(followup)
    assert len({content_hash(bot), content_hash(bot, 256), content_hash(bot, 64)}) == 3
    assert len({content_hash(followup), content_hash(followup, 32), content_hash(followup, 128)}) == 3


def fake_gpus(monkeypatch, count):
    """A machine with `count` GPUs, each of which is really a CPU context (so it trains here)."""
    monkeypatch.setattr(mx.context, "num_gpus", lambda: count)
    monkeypatch.setattr(mx, "gpu", lambda device_id=0: mx.cpu(device_id))


def test_auto_on_an_eight_gpu_machine_trains_a_one_gpu_recipe_on_one_device(tmp_path, monkeypatch,
                                                                             tiny_recipe_dict):
    from gluon_tricks.devices import parse_ctx

    fake_gpus(monkeypatch, 8)
    assert len(parse_ctx("auto", auto_limit=8)) == 8  # a Bag of Tricks row takes all eight
    recipe = recipe_from_dict(dict(tiny_recipe_dict, epochs=1))  # the follow-up's source: one GPU
    assert recipe.system.ctx == "auto" and recipe.source.devices == 1
    result = train(recipe, tmp_path / "run", progress=False)
    assert result["hardware"]["ctx"] == ["cpu(0)"]
    assert result["layout"] == {"workers": 1, "devices": 1, "device_batch": 64, "accumulation": 1, "bn_group": 64,
                                "source_bn_group": 64.0}
    assert result["hash"] == content_hash(recipe)  # the faithful run: the recipe's own hash


def test_a_two_device_run_of_a_one_device_recipe_is_another_row_and_the_table_says_so(tmp_path, monkeypatch):
    from test_table_runs import finished, two_row_table

    from gluon_tricks.report import render
    from gluon_tricks.tables import row_recipes, run_table

    table = two_row_table(tmp_path / "recipes")  # batch 32, one device in its source
    two = ['system.ctx="cpu:0,cpu:1"']
    run_table(table, runs_root=tmp_path / "runs", progress=False, overrides=two)
    runs = finished(tmp_path / "runs")
    result = runs["row-a"][0]
    assert result["layout"]["devices"] == 2 and result["layout"]["bn_group"] == 16
    faithful = row_recipes(table.rows[0], 1, 1.0)[0]
    assert result["hash"] != content_hash(faithful)
    assert result["hash"] == content_hash(faithful, 16)
    on_two = render(table, runs_root=tmp_path / "runs", overrides=two)
    assert "| A (BN group 16, paper 32) " in on_two and "not run" not in on_two
    as_the_paper_ran = render(table, runs_root=tmp_path / "runs")  # auto here: one device, no result yet
    assert "BN group" not in as_the_paper_ran and as_the_paper_ran.count("not run") == 4
    # --parallel gives each row one of the two devices: the paper's group, the paper's hash
    assert "BN group" not in render(table, runs_root=tmp_path / "runs", overrides=two, parallel=0)


# --- out of memory is one line ------------------------------------------------------------

# The texts MXNet 1.9.1 raises when an allocation fails (src/storage/pooled_storage_manager.h:
# "Memory allocation failed " + cudaGetErrorString(cudaErrorMemoryAllocation); the 1.5-1.7
# pool's "cudaMalloc retry failed: "), in the form its Python layer raises them (base.py).
MXNET_OOM = [
    "Traceback (most recent call last):\n  File \"../src/storage/./pooled_storage_manager.h\", line 197\n"
    "MXNetError: Memory allocation failed out of memory",
    "[23:54:01] ../src/storage/./pooled_storage_manager.h:161: cudaMalloc retry failed: out of memory",
]


@pytest.mark.parametrize("text", MXNET_OOM)
def test_out_of_memory_in_a_step_is_one_line_with_a_device_batch_that_fits(tmp_path, monkeypatch, tiny_recipe_dict,
                                                                           text):
    from gluon_tricks.errors import OutOfMemory
    from gluon_tricks.results import RunDir

    real_step, calls = gluon.Trainer.step, []

    def step(trainer, batch_size, ignore_stale_grad=False):
        calls.append(batch_size)
        if len(calls) == 6:  # epoch 2 (4 steps an epoch): epoch 1's checkpoint is on disk
            raise mx.base.MXNetError(text)
        return real_step(trainer, batch_size, ignore_stale_grad)

    monkeypatch.setattr(gluon.Trainer, "step", step)
    recipe = recipe_from_dict(dict(tiny_recipe_dict, system={"ctx": "cpu:0,cpu:1", "log_interval": 1}))
    with pytest.raises(OutOfMemory) as e:
        train(recipe, tmp_path / "run", progress=False)
    message = str(e.value)
    assert "\n" not in message
    # 64 images over two devices: 32 each, in one pass; half of it is 16 (64 is the paper's group:
    # more than the 32 that did not fit, so it is no help)
    assert message.startswith("out of memory on one of cpu(0), cpu(1) at 32 images per pass")
    assert "--set system.device_batch=16" in message and "estimate" in message
    assert RunDir(tmp_path / "run").latest_checkpoint(quiet=True) is not None


def test_the_out_of_memory_hint_prefers_the_papers_group_and_halves_otherwise():
    from gluon_tricks.devices import Layout, smaller_device_batch

    assert smaller_device_batch(Layout(256, 1, 1), 32.0) == 32  # Bag of Tricks on one GPU: its 8 x 32
    assert smaller_device_batch(Layout(256, 1, 1), 256.0) == 128
    assert smaller_device_batch(Layout(96, 1, 1), 96.0) == 48
    assert smaller_device_batch(Layout(96, 1, 1, accumulation=2), 96.0) == 24  # 48 per pass did not fit
    assert smaller_device_batch(Layout(30, 1, 1), 30.0) == 15
    assert smaller_device_batch(Layout(14, 1, 1), 14.0) == 7
    assert smaller_device_batch(Layout(7, 1, 1), 7.0) == 1  # 7 is prime: one image per pass
    assert smaller_device_batch(Layout(1, 1, 1), 1.0) is None


def test_doctor_prints_each_rows_devices_and_per_device_batch_on_this_machine(monkeypatch, capsys):
    from gluon_tricks.cli import main

    assert main(["doctor", "--table", "bot/table4"]) == 0  # this CPU: one device for 8 V100s' batch
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("WARN bot/table4 'batch 256: Linear scaling': 1 device(s) x 256 images (paper 8 x 32): "
                        "BN group 256, another result than the paper's  -> --set system.device_batch=32 keeps the "
                        "paper's BatchNorm group")
    assert main(["doctor", "--table", "bot/table4", "--set", "system.device_batch=32"]) == 0
    assert "1 device(s) x 256 images in 8 passes of 32 (paper 8 x 32)" in capsys.readouterr().out
    fake_gpus(monkeypatch, 8)
    main(["doctor", "--table", "bot/table4"])
    assert capsys.readouterr().out.splitlines()[-1] == \
        "OK   bot/table4 'batch 1024: + FP16': 8 device(s) x 128 images (paper 8 x 128)"
    main(["doctor", "--table", "followup/table3"])  # auto: one of the eight GPUs per follow-up row
    assert capsys.readouterr().out.splitlines()[0] == \
        "OK   followup/table3 'Baseline': 1 device(s) x 256 images (paper 1 x 256)"


# --- one GPU per row process, and its share of the cores -----------------------------------

def test_parallel_rows_each_see_only_their_gpus_as_gpu_0_on_a_faked_eight_gpu_machine(monkeypatch):
    import os

    from gluon_tricks.runner import row_executor
    from gluon_tricks.tables import load_table, parallel_slots

    monkeypatch.setattr(mx.context, "num_gpus", lambda: 8)  # gpu contexts are only named here, never used
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    followup = parallel_slots(load_table(ROOT, "followup/table3"), 0)  # one V100 per row, as its paper
    assert [s.devices for s in followup] == [(f"gpu:{i}",) for i in range(8)]
    assert {s.ctx() for s in followup} == {"gpu:0"}
    assert followup[5].environment(2) == {"CUDA_VISIBLE_DEVICES": "5", "OMP_NUM_THREADS": "2"}
    bot = parallel_slots(load_table(ROOT, "bot/table4"), 0)  # 8 V100s per row: one row at a time
    assert [s.devices for s in bot] == [tuple(f"gpu:{i}" for i in range(8))]
    halves = parallel_slots(load_table(ROOT, "bot/table4"), 2)
    assert halves[1].ctx() == "gpu:0,gpu:1,gpu:2,gpu:3"
    assert halves[1].environment(8)["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    # the row's process starts with that environment, before it imports MXNet
    with row_executor(followup[5].environment(2)) as child:
        assert child.submit(os.getenv, "CUDA_VISIBLE_DEVICES").result() == "5"
        assert child.submit(os.getenv, "OMP_NUM_THREADS").result() == "2"


def test_rows_at_once_share_the_threads_and_a_shared_gpu_is_warned_about(monkeypatch):
    from gluon_tricks.runner import row_slots, row_threads, shared_devices_warning

    assert row_threads(2, budget=2) == 1  # `table demo --run --parallel 2` on 2 cores: one each
    assert row_threads(3, budget=8) == 2 and row_threads(1, budget=8) == 8 and row_threads(4, budget=2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "6")  # the CLI's default (every core) or the user's
    assert row_threads(2) == 3
    four_on_two = row_slots(["gpu:0", "gpu:1"], 1, 4)
    assert [s.devices for s in four_on_two] == [("gpu:0",), ("gpu:1",), ("gpu:0",), ("gpu:1",)]
    assert "share GPU memory" in shared_devices_warning(four_on_two)
    assert shared_devices_warning(row_slots(["gpu:0", "gpu:1"], 1, 2)) is None
    # a table started with CUDA_VISIBLE_DEVICES=2,3 calls those GPUs gpu:0 and gpu:1: its second row gets GPU 3
    assert row_slots(["gpu:0", "gpu:1"], 1, 2)[1].environment(1, visible="2,3")["CUDA_VISIBLE_DEVICES"] == "3"
    assert [s.ctx() for s in row_slots(["cpu:0", "cpu:1"], 1, 0)] == ["cpu:0", "cpu:1"]
    assert row_slots(["cpu:0", "cpu:1"], 1, 0)[0].environment(1) == {"OMP_NUM_THREADS": "1"}
