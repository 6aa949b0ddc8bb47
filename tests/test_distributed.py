"""Data parallelism on this CPU: two contexts, and a real parameter-server job on 127.0.0.1."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mxnet as mx
from mxnet import autograd, gluon
import numpy as np
import pytest

from gluon_tricks.data.loader import CifarTrainStream
from gluon_tricks.data.streams import epoch_order
from gluon_tricks.engine import train
from gluon_tricks.launch import plan, read_hostfile, training_command
from gluon_tricks.recipe import recipe_from_dict, to_toml

ROOT = Path(__file__).resolve().parent.parent


def trainable(params: dict) -> dict:
    return {k: v for k, v in params.items() if not k.endswith(("running_mean", "running_var"))}


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(mx.nd.abs(a[k] - b[k]).max().asscalar()) for k in a)


@pytest.mark.parametrize("kvstore", ["device", "local"])
def test_two_contexts_equal_one_context_on_the_full_batch(tmp_path, monkeypatch, kvstore):
    """engine.train on two devices computes what one device computes on the whole batch, for a
    BatchNorm-free net (BN statistics are per device by design): same split, same reduction,
    same normalization, same optimizer and schedule."""
    import seams

    seams.linear_zoo(monkeypatch)
    d = seams.tiny(epochs=2, batch=16, images=64, schedule={"kind": "cosine", "warmup_epochs": 1})
    finals = []
    for ctx in ("cpu", "cpu:0,cpu:1"):
        run = tmp_path / ctx.replace(":", "").replace(",", "_")
        train(recipe_from_dict(dict(d, system={"ctx": ctx, "kvstore": kvstore, "log_interval": 1})), run,
              progress=False)
        finals.append(final(run))
    one, two = finals
    assert len(one) == 2 and max_diff(one, two) < 1e-6
    assert max_diff(one, {k: v * 0 for k, v in one.items()}) > 1e-3  # it trained


def tiny_recipe(tmp_path, **extra):
    d = {"name": "dist", "epochs": 1, "seed": 3,
         "data": {"dataset": "cifar10-mini", "batch_size": 32, "train_limit": 96, "test_limit": 32},
         "model": {"name": "cifar_resnet20_v1"}, "system": {"log_interval": 1}}
    d.update(extra)
    r = recipe_from_dict(d)
    path = tmp_path / "dist.toml"
    path.write_text(to_toml(r))
    return r, path


def final(run: Path):
    from gluon_tricks.results import RunDir

    return mx.nd.load(str(RunDir(run).latest_checkpoint(quiet=True).params))


def test_engine_device_and_local_kvstores_agree(tmp_path):
    r, _ = tiny_recipe(tmp_path, system={"ctx": "cpu:0,cpu:1", "kvstore": "device"})
    train(r, tmp_path / "device", progress=False)
    r2, _ = tiny_recipe(tmp_path, system={"ctx": "cpu:0,cpu:1", "kvstore": "local"})
    train(r2, tmp_path / "local", progress=False)
    assert max_diff(final(tmp_path / "device"), final(tmp_path / "local")) < 1e-5


def test_worker_shards_are_disjoint_and_cover_each_global_batch():
    images, labels = np.zeros((100, 32, 32, 3), np.uint8), np.zeros(100, np.int64)
    from gluon_tricks.data.augment import CifarAugment
    aug = CifarAugment([0.5] * 3, [0.2] * 3, train=False)
    for workers in (1, 2, 4):
        streams = [CifarTrainStream(images, labels, 24, aug, 0, part=p, parts=workers) for p in range(workers)]
        order = epoch_order(100, 0, 5)
        steps = streams[0].steps_per_epoch()
        assert steps == 4
        taken = [np.concatenate([s.indices(order, k) for s in streams]) for k in range(steps)]
        for k in range(steps):
            np.testing.assert_array_equal(taken[k], order[24 * k:24 * (k + 1)])  # the same global batch
        flat = np.concatenate(taken)
        assert len(set(flat.tolist())) == len(flat) == 96


def launch(args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "gluon_tricks", "launch", *map(str, args)], cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_two_workers_match_one_process_with_two_devices(tmp_path):
    # No bias decay with a large wd: the parameter servers must apply each parameter's wd_mult
    # (0 for biases and BatchNorm), which MXNet's pickled optimizer drops (Optimizer.__getstate__).
    r, path = tiny_recipe(tmp_path, optim={"no_bias_decay": True, "wd": 0.01})
    run, dump = tmp_path / "run", tmp_path / "workers"
    proc = launch(["-n", 2, "-s", 1, "--timeout", 150, "--", "train", path, "--out", run, "--quiet",
                   "--save-params", dump])
    out, err = proc.communicate(timeout=170)
    assert proc.returncode == 0, err
    w0 = mx.nd.load(str(dump / "worker0.params"))
    w1 = mx.nd.load(str(dump / "worker1.params"))
    # weights come from the servers: identical on both workers; BN running statistics are per worker
    assert max_diff(trainable(w0), trainable(w1)) == 0.0
    # One process, two devices, the same global batches, and the same thread count as the
    # workers: MXNet's CPU kernels round differently with another OMP_NUM_THREADS (one step
    # with 1 vs 2 threads moves the first conv by ~2.5e-4).
    single = subprocess.run([sys.executable, "-m", "gluon_tricks", "train", str(path), "--out", str(tmp_path / "single"),
                             "--ctx", "cpu:0,cpu:1", "--quiet", "--save-params", str(tmp_path / "s")], cwd=ROOT,
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert single.returncode == 0, single.stderr
    single = mx.nd.load(str(tmp_path / "s" / "worker0.params"))
    # gradients are summed in another order (servers vs the local kvstore): float32 rounding only
    assert max_diff(trainable(w0), trainable(single)) < 1e-5
    assert max_diff(trainable(final(run)), trainable(w0)) < 1e-4  # rank 0's checkpoint is the result
    # train_loss is a mean per image, not rank 0's loss sum over both workers' images
    import json

    loss_dist = json.loads((run / "metrics.jsonl").read_text())["train_loss"]
    loss_single = json.loads((tmp_path / "single" / "metrics.jsonl").read_text())["train_loss"]
    assert abs(loss_dist - loss_single) < 0.1 * loss_single, (loss_dist, loss_single)
    # only rank 0 wrote: one metrics line, one result
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir() if p.name != ".lock") == ["checkpoints", "metrics.jsonl", "recipe.toml", "result.json", "run.json"]


def test_a_killed_worker_ends_the_job_with_its_name(tmp_path):
    _, path = tiny_recipe(tmp_path, epochs=50)
    proc = launch(["-n", 2, "-s", 1, "--", "train", path, "--out", tmp_path / "run", "--quiet"])
    pid = None
    t0 = time.time()
    lines = []
    while pid is None and time.time() - t0 < 60:
        line = proc.stderr.readline()
        lines.append(line)
        m = re.search(r"started worker 1 \(pid (\d+)\)", line)
        if m:
            pid = int(m.group(1))
    assert pid, lines
    time.sleep(3)
    os.kill(pid, 9)
    t_kill = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"worker 1 (pid {pid}) was killed by signal 9; stopping the job" in err
    assert time.time() - t_kill < 30


def test_job_layout_and_ssh_commands(tmp_path):
    (tmp_path / "hosts").write_text("# workers\nnode-a\nnode-b slots=8\n")
    hosts = read_hostfile(tmp_path / "hosts")
    assert hosts == ["node-a", "node-b"]
    cmd = training_command(["train", "r.toml"])
    assert cmd[-2:] == ["--kvstore", "dist_sync"] and cmd[:3] == [sys.executable, "-m", "gluon_tricks"]
    assert training_command(["train", "r.toml", "--kvstore", "dist_async"])[-1] == "dist_async"
    # GPU contexts: MXNet's dist_sync would reduce each worker's GPUs on the CPU (CommCPU);
    # dist_device_sync reduces them on a GPU (CommDevice) before the push (review finding 14)
    for gpus in (["--ctx", "gpu:0-7"], ["--ctx=gpu:0,gpu:1"], ["--set", 'system.ctx="gpu:0-3"'],
                 ["--set=system.ctx=gpu:0"]):
        assert training_command(["train", "r.toml"] + gpus)[-2:] == ["--kvstore", "dist_device_sync"]
    for not_gpus in (["--ctx", "cpu:0,cpu:1"], ["--ctx", "auto"], ["--set", 'model.name="gpu_net"']):
        assert training_command(["train", "r.toml"] + not_gpus)[-2:] == ["--kvstore", "dist_sync"]
    assert training_command(["train", "r.toml", "--ctx", "gpu:0", "--kvstore=dist_async"])[-1] == "--kvstore=dist_async"
    roles = plan(3, 2, cmd, hosts, port=9100, root_uri="10.0.0.1", workdir="/srv/gt")
    assert [n for n, _, _ in roles] == ["scheduler", "server 0", "server 1", "worker 0 on node-a",
                                        "worker 1 on node-b", "worker 2 on node-a"]
    name, argv, env = roles[4]
    assert argv[0] == "ssh" and argv[-2] == "node-b"
    assert "DMLC_ROLE=worker" in argv[-1] and "DMLC_PS_ROOT_URI=10.0.0.1" in argv[-1] and "cd /srv/gt" in argv[-1]
    assert env["DMLC_NUM_WORKER"] == "3" and env["DMLC_NUM_SERVER"] == "2" and env["DMLC_PS_ROOT_PORT"] == "9100"
    local = plan(2, 1, cmd, port=9200)
    assert all(e["DMLC_PS_ROOT_URI"] == "127.0.0.1" and e["DMLC_INTERFACE"] == "lo" for _, _, e in local)


# Gradient accumulation, loss scaling on the reduced gradient, automatic devices, memory.

def _bn_free_net(recipe, classes, ctx):
    """A small convolutional net without BatchNorm (whose per-pass statistics would differ)."""
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 3, strides=2, activation="relu"), gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(classes))
    net.initialize(mx.init.Xavier(), ctx=ctx)
    return net


def test_accumulated_micro_batches_equal_the_whole_batch(tmp_path, monkeypatch):
    import json

    import gluon_tricks.engine as engine

    monkeypatch.setattr(engine, "build_model", _bn_free_net)
    runs = {}
    # warm-up then cosine: the learning rate changes at every optimizer step, so a schedule
    # that counted micro-batches instead would move the weights elsewhere
    for name, system in (("whole", {"ctx": "cpu"}), ("accumulated", {"ctx": "cpu", "device_batch": 64}),
                         ("two-devices", {"ctx": "cpu:0,cpu:1", "kvstore": "local"})):
        r = recipe_from_dict({"epochs": 2, "seed": 1, "data": {"dataset": "cifar10-mini", "batch_size": 128,
                                                               "train_limit": 256, "test_limit": 32},
                              "schedule": {"kind": "cosine", "warmup_epochs": 1}, "system": system})
        train(r, tmp_path / name, progress=False)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = (final(tmp_path / name), rows)
    whole, acc, two = (runs[n][0] for n in ("whole", "accumulated", "two-devices"))
    # 2 x 64 accumulated adds the same two partial gradients as two devices of 64 do: bit for bit
    assert max_diff(acc, two) == 0.0
    # and equals one pass over 128 images up to float32 summation order
    assert max_diff(acc, whole) < 1e-6
    assert [r["lr"] for r in runs["accumulated"][1]] == [r["lr"] for r in runs["whole"][1]]
    assert abs(runs["accumulated"][1][-1]["train_loss"] - runs["whole"][1][-1]["train_loss"]) < 1e-5


def test_device_batch_must_divide_each_devices_share():
    from seams import micro_batches
    from gluon_tricks.errors import UserError

    assert micro_batches(256, 1, 8, 32) == 1 and micro_batches(256, 1, 1, 32) == 8 and micro_batches(1024, 2, 4, 0) == 1
    with pytest.raises(UserError, match="system.device_batch 48 does not divide the 128 images .* such as 32"):
        micro_batches(256, 1, 2, 48)


def _two_device_step(inject):
    """One dynamic-loss-scaled step of a Dense layer on cpu(0) and cpu(1) after `inject`
    (device index -> value written into one gradient entry)."""
    from seams import optimizer_step
    from gluon_tricks.tricks.precision import LossScaler

    ctxs = [mx.cpu(0), mx.cpu(1)]
    net = gluon.nn.Dense(3, in_units=4)
    net.initialize(mx.init.One(), ctx=ctxs)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1}, kvstore="device",
                            update_on_kvstore=False)
    x = mx.nd.ones((4, 4))
    with autograd.record():
        losses = [net(xd).sum() for xd in gluon.utils.split_and_load(x, ctxs)]
    autograd.backward(losses)
    for i, value in inject.items():
        net.weight.grad(ctxs[i])[0, 0] = value
    scaler = LossScaler("dynamic", init_scale=8.0)
    applied = optimizer_step(trainer, scaler, ctxs, 4, check_reduced=True)
    return applied, scaler, [net.weight.data(c).asnumpy() for c in ctxs]


def test_dynamic_loss_scaling_decides_on_the_reduced_gradient():
    applied, scaler, weights = _two_device_step({1: float("inf")})  # one device overflowed
    assert not applied and scaler.scale == 4.0 and scaler.skipped == 1
    for w in weights:  # no device moved
        np.testing.assert_array_equal(w, np.ones((3, 4), np.float32))
    # finite on each device, infinite once summed: the case a per-device check misses
    applied, scaler, weights = _two_device_step({0: 3e38, 1: 3e38})
    assert not applied and scaler.scale == 4.0
    applied, scaler, weights = _two_device_step({})
    assert applied and scaler.skipped == 0
    # the hand computation: d(sum of outputs)/dW = 4 images of ones = 4; rescaled by 1/(4*8)
    for w in weights:
        np.testing.assert_allclose(w, np.ones((3, 4)) - 0.1 * 4 / (4 * 8.0), rtol=1e-6)


def test_dynamic_loss_scaling_is_refused_with_a_distributed_kvstore(tmp_path):
    from gluon_tricks.errors import UserError

    r, _ = tiny_recipe(tmp_path, optim={"loss_scale": "dynamic"}, system={"kvstore": "dist_sync"})
    with pytest.raises(UserError, match="dynamic.*distributed kvstore.*static"):
        train(r, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_ctx_auto_is_every_gpu_or_the_cpu(monkeypatch, tmp_path, capsys):
    from seams import parse_ctx

    assert recipe_from_dict({}).system.ctx == "auto"
    assert parse_ctx("auto") == ([mx.gpu(i) for i in range(mx.context.num_gpus())] or [mx.cpu()])
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 3)
    assert parse_ctx("auto") == [mx.gpu(0), mx.gpu(1), mx.gpu(2)]
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 0)
    r, _ = tiny_recipe(tmp_path)
    train(r, tmp_path / "run")
    assert "devices: cpu(0) (--ctx auto" in capsys.readouterr().err


def test_a_finished_run_frees_its_network(tmp_path, monkeypatch):
    """Parameters and the Trainer reference each other; train() collects them before it returns."""
    import gc
    import weakref

    import gluon_tricks.engine as engine

    made = []

    def tracked(recipe, classes, ctx):
        net = _bn_free_net(recipe, classes, ctx)
        made.append(weakref.ref(net))
        return net

    monkeypatch.setattr(engine, "build_model", tracked)
    gc.disable()  # only train()'s own collection may free it
    try:
        r, _ = tiny_recipe(tmp_path)
        train(r, tmp_path / "run", progress=False)
        assert made and made[0]() is None
    finally:
        gc.enable()
