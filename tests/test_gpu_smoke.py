"""GPU smoke suite: what a p3 user runs first (`pytest -m gpu`, a minute or two).

Each test runs a real piece of the GPU path on tiny inputs: a float16 step with
multi-precision NAG and loss scaling, a 2-GPU kvstore step (device and nccl), a zoo
teacher on the GPU, a RecordIO batch on the GPU. Everything is skipped where MXNet sees
no GPU (the CPU wheel, this project's CI); nothing downloads.
"""
import hashlib
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from gluon_tricks.engine import train
from gluon_tricks.models import load_teacher
from gluon_tricks.recipe import DistillSpec, recipe_from_dict

GPUS = mx.context.num_gpus()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPUS == 0, reason="MXNet sees no GPU (CPU wheel or no device)")]
two_gpus = pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")


def tiny(ctx="gpu:0", **sections):
    d = {"name": "gpu-smoke", "epochs": 1,
         "data": {"dataset": "cifar10-mini", "batch_size": 64, "train_limit": 256, "test_limit": 128},
         "model": {"name": "cifar_resnet20_v1"}, "schedule": {"kind": "constant"},
         "system": {"ctx": ctx, "log_interval": 1}}
    for k, v in sections.items():
        d[k] = dict(d.get(k, {}), **v)
    return recipe_from_dict(d)


def test_float16_step_with_multi_precision_nag_and_loss_scaling(tmp_path):
    for scale in ("128", "dynamic"):
        r = tiny(model={"dtype": "float16"}, optim={"name": "nag", "loss_scale": scale})
        result = train(r, tmp_path / scale, progress=False)
        assert np.isfinite(result["final_top1"]) and result["skipped_steps"] < 4, result
        params = mx.nd.load(str(next((tmp_path / scale).rglob("*.params"))))
        dtypes = {k.rsplit("_", 1)[-1]: v.dtype for k, v in params.items()}
        assert dtypes["weight"] == np.float16 and dtypes["gamma"] == np.float32  # BatchNorm stays fp32


@two_gpus
@pytest.mark.parametrize("kvstore", ["device", "nccl"])
def test_two_gpu_kvstore_step_equals_the_summed_gradient(kvstore):
    """One SGD step on two GPUs through the kvstore = the step a CPU takes on the whole batch."""
    x = mx.nd.array(np.random.default_rng(0).normal(size=(8, 5)))
    y = mx.nd.array(np.arange(8) % 3)

    def step(contexts, kv):
        net = gluon.nn.Dense(3, in_units=5)
        net.initialize(mx.init.Constant(0.1), ctx=contexts)
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5}, kvstore=kv)
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        with mx.autograd.record():
            losses = [loss_fn(net(xd), yd) for xd, yd in zip(gluon.utils.split_and_load(x, contexts),
                                                              gluon.utils.split_and_load(y, contexts))]
        mx.autograd.backward(losses)
        trainer.step(8)
        return [net.weight.data(c).asnumpy() for c in contexts]

    (cpu,) = step([mx.cpu()], "local")
    on_gpus = step([mx.gpu(0), mx.gpu(1)], kvstore)
    for w in on_gpus:
        np.testing.assert_allclose(w, cpu, rtol=1e-5, atol=1e-6)


def test_zoo_teacher_on_gpu(tmp_path, monkeypatch):
    """A zoo teacher given by name:tag loads from GluonCV's cache onto the GPUs and distils."""
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

    contexts = [mx.gpu(i) for i in range(min(GPUS, 2))]
    teacher = load_teacher(DistillSpec(teacher=f"cifar_resnet20_v1:{tag}"), 10, contexts)
    x = mx.nd.random.uniform(shape=(2, 3, 32, 32))
    with mx.autograd.predict_mode():
        want = src(x).asnumpy()
    for c in contexts:
        np.testing.assert_allclose(teacher(x.as_in_context(c)).asnumpy(), want, rtol=1e-4, atol=1e-4)
    r = tiny(ctx=",".join(f"gpu:{c.device_id}" for c in contexts), distill={"teacher": f"cifar_resnet20_v1:{tag}"})
    result = train(r, tmp_path / "distill", progress=False)
    assert np.isfinite(result["final_top1"])


def test_recordio_batch_on_gpu(tmp_path):
    from test_imagenet import make_folder

    from gluon_tricks.data.prepare import prepare

    make_folder(tmp_path / "train", corrupt=False)
    make_folder(tmp_path / "val", per_class=4, corrupt=False)
    prepare(tmp_path / "train", tmp_path / "rec" / "train", resize=48, workers=1, progress=False)
    prepare(tmp_path / "val", tmp_path / "rec" / "val", resize=48, workers=1, progress=False)
    r = recipe_from_dict({"epochs": 1, "name": "gpu-smoke-rec",
                          "data": {"dataset": "recordio", "root": str(tmp_path / "rec"), "augment": "bot",
                                   "image_size": 32, "batch_size": 8},
                          "model": {"name": "resnet18_v1b"}, "system": {"ctx": "gpu:0", "log_interval": 1}})
    result = train(r, tmp_path / "run", progress=False)
    assert result["train_images"] == 24 and np.isfinite(result["final_top1"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and np.isfinite(rows[-1]["train_loss"])
