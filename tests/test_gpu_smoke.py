"""GPU smoke suite: what a p3 user runs first (`pytest -m gpu`, a minute or two).

Each test runs a real piece of the GPU path on tiny inputs: a float16 step with
multi-precision NAG and loss scaling, a 2-GPU kvstore step (device and nccl), a zoo
teacher on the GPU, a RecordIO batch on the GPU. Nothing downloads.

Every test is written once and runs twice: on the GPUs (marked `gpu`, skipped where MXNet
sees none) and on CPU contexts, so that CI, which has no GPU, runs the same logic (float32
where the GPU run uses float16: the CPU wheel has no float16 matrix multiply).
"""
import hashlib
import json
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from gluon_tricks.engine import train
from gluon_tricks.models import load_teacher
from gluon_tricks.recipe import DistillSpec, recipe_from_dict
from gluon_tricks.tricks.precision import LossScaler

GPUS = mx.context.num_gpus()
GPU_ONLY = [pytest.mark.gpu, pytest.mark.skipif(GPUS == 0, reason="MXNet sees no GPU (CPU wheel or no device)")]
ON_GPU_AND_CPU = pytest.mark.parametrize("device", [pytest.param("gpu", marks=GPU_ONLY), "cpu"])


def contexts(device: str, n: int) -> list:
    if device == "gpu" and GPUS < n:
        pytest.skip(f"needs {n} GPUs")
    return [mx.Context(device, i) for i in range(n)]


def ctx_text(ctxs) -> str:
    return ",".join(f"{c.device_type}:{c.device_id}" for c in ctxs)


def tiny(ctx, **sections):
    d = {"name": "gpu-smoke", "epochs": 1,
         "data": {"dataset": "cifar10-mini", "batch_size": 32, "train_limit": 64, "test_limit": 32},
         "model": {"name": "cifar_resnet20_v1"}, "schedule": {"kind": "constant"},
         "system": {"ctx": ctx, "log_interval": 1}}
    for k, v in sections.items():
        d[k] = dict(d.get(k, {}), **v)
    return recipe_from_dict(d)


def saved_dtypes(run_dir) -> dict:
    """Parameter kind (what follows the last '.' of Gluon's keys, e.g. features.1.gamma) -> dtypes."""
    params = mx.nd.load(str(sorted(run_dir.rglob("net.params"))[-1]))
    out = {}
    for key, value in params.items():
        out.setdefault(key.rsplit(".", 1)[-1], set()).add(np.dtype(value.dtype))
    return out


@ON_GPU_AND_CPU
def test_float16_step_with_multi_precision_nag_and_loss_scaling(device, tmp_path):
    ctx = ctx_text(contexts(device, 1))
    dtype = np.dtype("float16" if device == "gpu" else "float32")
    r = tiny(ctx, model={"dtype": dtype.name}, optim={"name": "nag", "loss_scale": "128"})
    result = train(r, tmp_path / "static", progress=False)
    assert np.isfinite(result["final_top1"]) and result["skipped_steps"] == 0, result
    dtypes = saved_dtypes(tmp_path / "static")
    assert dtypes["weight"] == {dtype} and dtypes["gamma"] == {np.dtype("float32")}  # BatchNorm stays fp32
    # Dynamic scaling starts high and halves on every overflowing step, down to its floor (the
    # summed loss overflows float16 for the first few steps: ~5 for this net). So after at most
    # log2(start / floor) skipped steps one is applied; run one more than that.
    scaler = LossScaler("dynamic")
    steps = int(math.log2(scaler.scale / scaler.min_scale)) + 1
    r = tiny(ctx, model={"dtype": dtype.name}, optim={"name": "nag", "loss_scale": "dynamic"},
             data={"batch_size": 8, "train_limit": 8 * steps})
    result = train(r, tmp_path / "dynamic", progress=False)
    assert np.isfinite(result["final_top1"]) and result["skipped_steps"] < steps, result  # >= 1 step applied
    assert saved_dtypes(tmp_path / "dynamic")["weight"] == {dtype}


@pytest.mark.parametrize("device,kvstore", [pytest.param("gpu", "device", marks=GPU_ONLY),
                                            pytest.param("gpu", "nccl", marks=GPU_ONLY), ("cpu", "device")])
def test_two_device_kvstore_step_equals_the_summed_gradient(device, kvstore):
    """One SGD step on two devices through the kvstore = the step one CPU takes on the whole batch."""
    x = mx.nd.array(np.random.default_rng(0).normal(size=(8, 5)))
    y = mx.nd.array(np.arange(8) % 3)

    def step(ctxs, kv):
        net = gluon.nn.Dense(3, in_units=5)
        net.initialize(mx.init.Constant(0.1), ctx=ctxs)
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5}, kvstore=kv)
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        with mx.autograd.record():
            losses = [loss_fn(net(xd), yd) for xd, yd in zip(gluon.utils.split_and_load(x, ctxs),
                                                              gluon.utils.split_and_load(y, ctxs))]
        mx.autograd.backward(losses)
        trainer.step(8)
        return [net.weight.data(c).asnumpy() for c in ctxs]

    (cpu,) = step([mx.cpu()], "local")
    for w in step(contexts(device, 2), kvstore):
        np.testing.assert_allclose(w, cpu, rtol=1e-5, atol=1e-6)


def staged_zoo_teacher(tmp_path, monkeypatch):
    """(network, tag): cifar_resnet20_v1 weights in a generated GluonCV cache, no download."""
    import gluoncv.model_zoo.model_store as store
    from gluoncv.model_zoo import get_model

    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    monkeypatch.setattr(store, "download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    (tmp_path / "models").mkdir()
    src = get_model("cifar_resnet20_v1", classes=10)
    src.initialize(mx.init.Xavier())
    src(mx.nd.zeros((1, 3, 32, 32)))  # finish deferred initialization
    staged = tmp_path / "staged.params"
    src.save_parameters(str(staged))
    tag = hashlib.sha1(staged.read_bytes()).hexdigest()[:8]
    staged.rename(tmp_path / "models" / f"cifar_resnet20_v1-{tag}.params")
    return src, tag


@ON_GPU_AND_CPU
def test_zoo_teacher_on_gpu(device, tmp_path, monkeypatch):
    """A zoo teacher given by name:tag loads from GluonCV's cache onto the devices and distils."""
    src, tag = staged_zoo_teacher(tmp_path, monkeypatch)
    ctxs = contexts(device, min(GPUS, 2) if device == "gpu" else 2)
    teacher = load_teacher(DistillSpec(teacher=f"cifar_resnet20_v1:{tag}"), 10, ctxs)
    x = mx.nd.random.uniform(shape=(2, 3, 32, 32))
    with mx.autograd.predict_mode():
        want = src(x).asnumpy()
    for c in ctxs:
        np.testing.assert_allclose(teacher(x.as_in_context(c)).asnumpy(), want, rtol=1e-4, atol=1e-4)
    r = tiny(ctx_text(ctxs), distill={"teacher": f"cifar_resnet20_v1:{tag}"})
    result = train(r, tmp_path / "distill", progress=False)
    assert np.isfinite(result["final_top1"])


@pytest.mark.gpu
@pytest.mark.skipif(GPUS == 0, reason="MXNet sees no GPU (CPU wheel or no device)")
def test_float16_teacher_of_a_float32_student(tmp_path, monkeypatch):
    """distill.teacher_dtype = "float16" (GPU only; on the CPU it is refused, test_teacher_dtype.py)."""
    _, tag = staged_zoo_teacher(tmp_path, monkeypatch)
    r = tiny("gpu:0", distill={"teacher": f"cifar_resnet20_v1:{tag}", "teacher_dtype": "float16"})
    result = train(r, tmp_path / "distill", progress=False)
    assert np.isfinite(result["final_top1"]) and saved_dtypes(tmp_path / "distill")["weight"] == {np.dtype("float32")}


@ON_GPU_AND_CPU
def test_recordio_batch_on_gpu(device, tmp_path):
    from test_imagenet import make_folder

    from gluon_tricks.data.prepare import prepare

    make_folder(tmp_path / "train", corrupt=False)
    make_folder(tmp_path / "val", per_class=4, corrupt=False)
    prepare(tmp_path / "train", tmp_path / "rec" / "train", resize=48, workers=1, progress=False)
    prepare(tmp_path / "val", tmp_path / "rec" / "val", resize=48, workers=1, progress=False)
    r = recipe_from_dict({"epochs": 1, "name": "gpu-smoke-rec",
                          "data": {"dataset": "recordio", "root": str(tmp_path / "rec"), "augment": "bot",
                                   "image_size": 32, "batch_size": 8},
                          "model": {"name": "resnet18_v1b"},
                          "system": {"ctx": ctx_text(contexts(device, 1)), "log_interval": 1}})
    result = train(r, tmp_path / "run", progress=False)
    assert result["train_images"] == 24 and np.isfinite(result["final_top1"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and np.isfinite(rows[-1]["train_loss"])
