"""Images/s of a full training step: our engine vs GluonCV's CIFAR loop, same model and init.

Reference: DataLoader with per-image transforms (one worker per core), split_and_load,
autograd.record, backward, trainer.step, and the per-step loss/metric reads the GluonCV
scripts do. Ours: gluon_tricks.engine.train (batch-wise augmentation on a prefetch
thread, losses read once per window). Both on the same cifar10-mini images, batch 128,
timed on their second epoch. "Network only" is the same net stepping on one batch
already on the device: the gap to it is the time spent outside the network.

The reference runs in its own process and creates its DataLoader (whose worker
processes are forked at creation and kept) before MXNet has computed anything. Its
process workers are forked after MXNet's engine threads exist, and on a loaded 2-core
machine one of them can segfault (seen in `make bench`, and again while fixing it); the
DataLoader then waits for the lost batch until its timeout. So a crashed reference is
run again with thread workers, and its row says so: thread workers avoid the fork but
measured 3-5x fewer images/s here (GIL-bound per-image transforms), so the ratio of
that row flatters ours.
"""
from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

from common import cores, in_subprocess, mini_cifar, print_table, record, reference_loader, seconds_per_call, tmpdir

BATCH, IMAGES = 128, 1536


def recipe_for(model: str, **extra):
    from gluon_tricks.recipe import recipe_from_dict

    d = {"name": f"bench-{model}", "epochs": 2, "seed": 0,
         "data": {"dataset": "cifar10-mini", "batch_size": BATCH, "train_limit": IMAGES, "test_limit": 256},
         "model": {"name": model}, "schedule": {"kind": "cosine"}, "system": {"log_interval": 50}}
    for k, v in extra.items():
        d.setdefault(k, {}).update(v) if isinstance(v, dict) else d.__setitem__(k, v)
    return recipe_from_dict(d)


def ours(model: str, **extra) -> dict:
    from gluon_tricks.engine import train

    out = tmpdir() / "run"
    train(recipe_for(model, **extra), out, progress=False)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]


def network_only(model: str, steps: int = 8) -> float:
    import mxnet as mx
    from mxnet import autograd, gluon

    from gluon_tricks.models import build_model

    net = build_model(recipe_for(model), 10, [mx.cpu()])
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "nag", {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-4})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    x = mx.nd.random.normal(shape=(BATCH, 3, 32, 32))
    y = mx.nd.array(np.arange(BATCH) % 10)

    def step():
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(BATCH)

    return BATCH / seconds_per_call(step, repeats=steps)


def reference(model: str, threads: bool = False) -> tuple[float, int]:
    """GluonCV-style loop; returns (img/s on the second pass, host reads per epoch)."""
    import mxnet as mx
    from gluoncv.model_zoo import get_model
    from mxnet import autograd, gluon

    data = mini_cifar().head(IMAGES)
    loader = reference_loader(data.images, data.labels, BATCH, cores(), threads=threads)  # before any compute
    mx.random.seed(0)
    ctx = [mx.cpu()]
    net = get_model(model, classes=10)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "nag", {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-4})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    metric = mx.metric.Accuracy()
    reads = 0
    rate = 0.0
    for epoch in range(2):
        t0, n, reads = time.perf_counter(), 0, 0
        train_loss = 0.0
        for x, y in loader:
            xs = gluon.utils.split_and_load(x, ctx)
            ys = gluon.utils.split_and_load(y, ctx)
            with autograd.record():
                outs = [net(xd) for xd in xs]
                losses = [loss_fn(o, yd) for o, yd in zip(outs, ys)]
            for l in losses:
                l.backward()
            trainer.step(BATCH)
            train_loss += sum(l.sum().asscalar() for l in losses)  # as the GluonCV scripts do
            metric.update(ys, outs)
            reads += len(losses) + 2 * len(outs)  # loss scalar, and metric's asnumpy of label and output
            n += x.shape[0]
        mx.nd.waitall()
        rate = n / (time.perf_counter() - t0)
    del loader  # stop its worker processes before the next benchmark
    gc.collect()
    return rate, reads


def main(models=("cifar_resnet20_v1", "cifar_resnet56_v1")):
    rows = []
    for model in models:
        ref = in_subprocess(Path(__file__).name, "--reference", model)
        how = ""
        if ref is None:
            ref = in_subprocess(Path(__file__).name, "--reference", model, "--threads")
            how = "reference with thread workers (its process workers crashed): ratio flatters ours"
        ref_rate, ref_reads = ref if ref else (None, None)
        row = ours(model)
        net_rate = network_only(model)
        outside = max(0.0, 1 - row["images_per_sec"] / net_rate)
        rows += [
            {"benchmark": f"train step {model} (img/s)", "ours": row["images_per_sec"], "reference": ref_rate,
             "ratio": row["images_per_sec"] / ref_rate if ref_rate else None, "unit": "img/s", "goal": ">= 1.0x",
             "met": bool(ref_rate) and row["images_per_sec"] / ref_rate >= 1.0,
             "detail": how if ref_rate else "the reference loop crashed (see stderr)"},
            {"benchmark": f"time outside the network, {model}", "ours": 100 * outside, "reference": None,
             "ratio": None, "unit": "%", "goal": "< 5%", "met": outside < 0.05,
             "detail": f"network alone {net_rate:.0f} img/s"},
            {"benchmark": f"host syncs per epoch, {model}", "ours": row["host_syncs"], "reference": ref_reads,
             "ratio": ref_reads / max(1, row["host_syncs"]) if ref_reads else None, "unit": "reads",
             "goal": "no per-step sync",
             "met": row["host_syncs"] < IMAGES // BATCH},
        ]
    print_table("Training step (batch 128, cifar10-mini, second epoch)", rows)
    record("train_step", rows)
    r = [x for x in rows if x["benchmark"].startswith("train step")]
    print("ratio: " + ", ".join(f"{x['benchmark'].split()[2]} " + (f"{x['ratio']:.2f}x" if x["ratio"] else "n/a")
                                for x in r))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--reference"]:
        print(json.dumps(reference(sys.argv[2], threads="--threads" in sys.argv)))
    else:
        main(tuple(sys.argv[1:]) or ("cifar_resnet20_v1", "cifar_resnet56_v1"))
