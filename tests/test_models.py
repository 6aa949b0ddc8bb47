"""Model tweaks, zero-gamma, no bias decay, optimizers and teachers, against their definitions."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon
from mxnet.gluon import nn

from gluon_tricks.errors import UserError
from gluon_tricks.models import build_model, count_flops, count_params, load_teacher, output_classes
from gluon_tricks.recipe import DistillSpec, recipe_from_dict
from gluon_tricks.tricks.optim import make_optimizer
from gluon_tricks.tricks.zero_gamma import last_batchnorm, residual_blocks


def model(name, classes=10, **model_fields):
    r = recipe_from_dict({"model": dict(name=name, **model_fields)})
    return build_model(r, classes, [mx.cpu()])


@pytest.mark.parametrize("name,blocks", [("cifar_resnet56_v1", 27), ("resnet50_v1d", 16)])
def test_zero_gamma_makes_every_block_its_shortcut(name, blocks):
    net = model(name, zero_gamma=True)
    size = 32
    net(mx.nd.zeros((1, 3, size, size)))  # finish deferred initialization
    found = residual_blocks(net)
    assert len(found) == blocks
    for b in found:
        assert float(mx.nd.abs(last_batchnorm(b).gamma.data()).max().asscalar()) == 0.0
    # every block returns relu(shortcut(x)) at initialization
    x = mx.nd.random.uniform(shape=(2, 3, size, size))
    feats = []

    def grab(block, inputs, output):
        feats.append((block, inputs[0], output))

    hooks = [b.register_forward_hook(grab) for b in found]
    net(x)
    for h in hooks:
        h.detach()
    for block, inp, out in feats:
        shortcut = block.downsample(inp) if block.downsample is not None else inp
        np.testing.assert_allclose(out.asnumpy(), mx.nd.relu(shortcut).asnumpy(), rtol=1e-5, atol=1e-5)
    # without the trick the blocks are not identities
    plain = model(name)
    plain(mx.nd.zeros((1, 3, size, size)))
    assert float(mx.nd.abs(last_batchnorm(residual_blocks(plain)[0]).gamma.data()).min().asscalar()) == 1.0


def test_no_bias_decay_exempts_exactly_biases_and_bn():
    r = recipe_from_dict({"model": {"name": "cifar_resnet20_v1"}, "optim": {"no_bias_decay": True}})
    net = build_model(r, 10, [mx.cpu()])
    net(mx.nd.zeros((1, 3, 32, 32)))
    assert all(p.wd_mult == 1 for p in net.collect_params().values())  # an optimizer setting, not the model's
    make_optimizer(r, net, iters_per_epoch=5)
    exempt = {n for n, p in net.collect_params().items() if p.wd_mult == 0}
    expected = {n for n in net.collect_params() if n.endswith(("_gamma", "_beta", "_bias"))}
    assert exempt == expected and exempt
    decayed = {n for n, p in net.collect_params().items() if p.wd_mult == 1 and p.grad_req != "null"}
    assert decayed and all(n.endswith("_weight") for n in decayed)
    # one SGD step with zero gradient: weights shrink by lr*wd*w, biases/gammas stay
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "wd": 0.01})
    before = {n: p.data().copy() for n, p in net.collect_params().items()}
    with mx.autograd.record():
        loss = net(mx.nd.zeros((1, 3, 32, 32))).sum() * 0
    loss.backward()
    trainer.step(1)
    for n, p in net.collect_params().items():
        if p.grad_req == "null":
            continue
        after = p.data().asnumpy()
        if n in exempt:
            np.testing.assert_array_equal(after, before[n].asnumpy())
        else:
            np.testing.assert_allclose(after, before[n].asnumpy() * (1 - 0.1 * 0.01), rtol=1e-5, atol=1e-7)


def _first_bottleneck_with_downsample(net):
    return next(b for b in residual_blocks(net) if b.downsample is not None)


def _convs(block):
    out = []

    def walk(b):
        for c in b._children.values():
            if isinstance(c, nn.Conv2D):
                out.append(c)
            walk(c)

    walk(block)
    return out


def test_resnet_tweaks_structure_params_and_flops():
    """Bag of Tricks Fig. 2 and Table 5: 25 M params; 3.8 / 4.1 / 4.3 / 4.3 G FLOPs."""
    # Measured multiply-adds round (one decimal) to Table 5's 4.1/4.3/4.3 and to Table 1's 3.9
    # for ResNet-50; Table 5's 3.8 for the same network is the paper's own inconsistency.
    paper_gflops = {"resnet50_v1": 3.9, "resnet50_v1b": 4.1, "resnet50_v1c": 4.3, "resnet50_v1d": 4.3}
    nets = {name: model(name, classes=1000) for name in paper_gflops}
    for name, net in nets.items():
        gflops = count_flops(net, 224) / 1e9
        assert int(count_params(net) / 1e6) == 25, name  # "25 M" in the paper
        assert round(gflops, 1) == paper_gflops[name], (name, gflops)
    assert abs(count_flops(nets["resnet50_v1"]) / 1e9 - 3.8) < 0.1
    # ResNet-50 v1: stride 2 on the first 1x1 of the downsampling block's path A
    down = [b for b in residual_blocks(nets["resnet50_v1"]) if b.downsample is not None][1]
    a = _convs(down.body)
    assert a[0]._kwargs["kernel"] == (1, 1) and a[0]._kwargs["stride"] == (2, 2)
    # B: the stride moves to the 3x3
    down_b = [b for b in residual_blocks(nets["resnet50_v1b"]) if b.downsample is not None][1]
    b = [c for c in _convs(down_b) if c not in _convs(down_b.downsample)]
    assert b[0]._kwargs["stride"] == (1, 1) and b[1]._kwargs["kernel"] == (3, 3) and b[1]._kwargs["stride"] == (2, 2)
    # C: a deep stem of three 3x3 convs (32, 32, 64 channels) instead of one 7x7
    stem_c = [c for c in _convs(nets["resnet50_v1c"].conv1)]
    assert [c._kwargs["kernel"] for c in stem_c] == [(3, 3)] * 3 and [c._channels for c in stem_c] == [32, 32, 64]
    assert _convs(nets["resnet50_v1"])[0]._kwargs["kernel"] == (7, 7)
    # D: a 2x2 average pool before a stride-1 1x1 conv in the shortcut
    down_d = [b for b in residual_blocks(nets["resnet50_v1d"]) if b.downsample is not None][1]
    layers = list(down_d.downsample._children.values())
    assert isinstance(layers[0], nn.AvgPool2D) and layers[0]._kwargs["kernel"] == (2, 2)
    assert layers[1]._kwargs["stride"] == (1, 1) and layers[1]._kwargs["kernel"] == (1, 1)
    down_v1 = [b for b in residual_blocks(nets["resnet50_v1b"]) if b.downsample is not None][1]
    assert _convs(down_v1.downsample)[0]._kwargs["stride"] == (2, 2)


@pytest.mark.parametrize("name", ["nag", "sgd", "adam", "nadam", "adadelta", "rmsprop"])
def test_every_optimizer_steps(name):
    r = recipe_from_dict({"optim": {"name": name, "lr": 0.01}, "epochs": 2})
    net = nn.Dense(3, in_units=4)
    net.initialize()
    opt_name, params = make_optimizer(r, net, iters_per_epoch=5)
    assert ("momentum" in params) == (name in ("nag", "sgd"))
    trainer = gluon.Trainer(net.collect_params(), opt_name, params)
    before = net.weight.data().copy()
    with mx.autograd.record():
        loss = (net(mx.nd.ones((2, 4))) ** 2).sum()
    loss.backward()
    trainer.step(2)
    assert float(mx.nd.abs(net.weight.data() - before).max().asscalar()) > 0


def tiny_params(tmp_path, name="cifar_resnet20_v1", classes=10):
    net = model(name, classes=classes)
    net(mx.nd.zeros((1, 3, 32, 32)))
    path = tmp_path / f"{name}-{classes}.params"
    net.save_parameters(str(path))
    return net, path


def test_teacher_from_params_file_predicts_like_the_saved_net(tmp_path):
    net, path = tiny_params(tmp_path)
    teacher = load_teacher(DistillSpec(teacher=str(path), teacher_model="cifar_resnet20_v1"), 10, [mx.cpu()])
    x = mx.nd.random.uniform(shape=(2, 3, 32, 32))
    with mx.autograd.predict_mode():
        np.testing.assert_allclose(teacher(x).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-5)


def test_teacher_mismatches_are_one_line_errors(tmp_path):
    _, path = tiny_params(tmp_path)
    with pytest.raises(UserError, match=r"does not match cifar_resnet56_v1 with 10 classes") as e:
        load_teacher(DistillSpec(teacher=str(path), teacher_model="cifar_resnet56_v1"), 10, [mx.cpu()])
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"does not match cifar_resnet20_v1 with 100 classes"):
        load_teacher(DistillSpec(teacher=str(path), teacher_model="cifar_resnet20_v1"), 100, [mx.cpu()])
    with pytest.raises(UserError, match="set distill.teacher_model"):
        load_teacher(DistillSpec(teacher=str(path)), 10, [mx.cpu()])
    with pytest.raises(UserError, match="not found"):
        load_teacher(DistillSpec(teacher=str(tmp_path / "no.params"), teacher_model="cifar_resnet20_v1"), 10, [mx.cpu()])


def test_zoo_teacher_offline_is_a_clear_error(tmp_path, monkeypatch):
    import gluoncv.model_zoo.model_store as store

    monkeypatch.setenv("MXNET_HOME", str(tmp_path))

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(store, "download", offline)
    with pytest.raises(UserError, match=r"pretrained weights of 'resnet152_v1d' could not be loaded.*models"):
        load_teacher(DistillSpec(teacher="resnet152_v1d"), 1000, [mx.cpu()])


def test_zoo_teacher_with_other_class_count(monkeypatch, tmp_path):
    """A 10-class zoo teacher for a 100-class student is refused."""
    import gluon_tricks.models as models

    monkeypatch.setattr(models, "_pretrained", lambda name, ctx, **k: models._get("cifar_resnet20_v1", classes=10))
    with pytest.raises(UserError, match="predicts 10 classes but the dataset has 100"):
        load_teacher(DistillSpec(teacher="cifar_resnet20_v1"), 100, [mx.cpu()])


def test_unknown_model_name():
    with pytest.raises(UserError, match="unknown model 'cifar_resnet57_v1'"):
        model("cifar_resnet57_v1")


def test_export_copies_the_newest_valid_checkpoint(tmp_path, tiny_recipe_dict):
    """Two checkpoints on disk (after epochs 1 and 2): export copies the newest one's
    parameters byte for byte, and skips it for the previous one when it is corrupt."""
    import json

    from gluon_tricks.cli import main
    from gluon_tricks.engine import train

    data = dict(tiny_recipe_dict["data"], batch_size=32, train_limit=64, test_limit=32, augment="none")
    train(recipe_from_dict(dict(tiny_recipe_dict, epochs=2, data=data)), tmp_path / "run", progress=False)
    ckpts = {json.loads((d / "state.json").read_text())["next_epoch"]: d
             for d in (tmp_path / "run" / "checkpoints").iterdir()}
    assert sorted(ckpts) == [1, 2]
    newest, older = (ckpts[2] / "net.params").read_bytes(), (ckpts[1] / "net.params").read_bytes()
    assert newest != older
    out = tmp_path / "t.params"
    assert main(["export", str(tmp_path / "run"), str(out)]) == 0
    assert out.read_bytes() == newest
    (ckpts[2] / "net.params").write_bytes(newest[: len(newest) // 2])
    assert main(["export", str(tmp_path / "run"), str(out), "--overwrite"]) == 0
    assert out.read_bytes() == older
    teacher = load_teacher(DistillSpec(teacher=str(out), teacher_model="cifar_resnet20_v1"), 10, [mx.cpu()])
    assert output_classes(teacher) == 10
    assert main(["export", str(tmp_path / "nothing"), str(out)]) == 2


def test_teacher_recipes_parse():
    from pathlib import Path

    from gluon_tricks.recipe import load_recipe

    root = Path(__file__).resolve().parent.parent / "teacher"
    coarse = load_recipe(root / "resnext29_teacher.toml")
    fine = load_recipe(root / "resnext29_teacher_fine.toml")
    assert coarse.model.name == "cifar_resnext29_16x64d" and not coarse.data.fine_labels and fine.data.fine_labels
    assert (coarse.data.batch_size, coarse.schedule.kind, coarse.schedule.warmup_epochs, coarse.smoothing.eps) == \
        (64, "cosine", 20, 0.1)


# Pretrained networks on the run's contexts. Two CPU contexts stand in for two GPUs: GluonCV
# loads zoo weights onto cpu(0) unless told otherwise, so cpu(1) sees what gpu:k would.
TWO = [mx.cpu(0), mx.cpu(1)]


def _sha1(path):
    import hashlib

    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.fixture
def offline_zoo(tmp_path, monkeypatch):
    """A GluonCV model cache under a fresh $MXNET_HOME holding cifar_resnet20_v1 weights under
    GluonCV's file name, registered as the zoo's current version; any download attempt fails."""
    import gluoncv.model_zoo.model_store as store

    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(store, "download", offline)

    def publish(seed, current=False):
        mx.random.seed(seed)
        net = model("cifar_resnet20_v1", classes=10)
        net(mx.nd.zeros((1, 3, 32, 32)))
        staged = tmp_path / f"staged-{seed}.params"
        net.save_parameters(str(staged))
        sha1 = _sha1(staged)
        staged.rename(tmp_path / "models" / f"cifar_resnet20_v1-{sha1[:8]}.params")  # GluonCV's naming
        if current:
            monkeypatch.setitem(store._model_sha1, "cifar_resnet20_v1", sha1)
        return net, sha1[:8]

    return publish


def _train_one_step(net, contexts):
    x = mx.nd.random.uniform(shape=(4, 3, 32, 32))
    y = mx.nd.array([0, 1, 2, 3])
    trainer = gluon.Trainer(net.collect_params(), "nag", {"learning_rate": 0.1, "momentum": 0.9},
                            kvstore="device")
    before = {n: p.data(contexts[-1]).copy() for n, p in net.collect_params().items() if p.grad_req != "null"}
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    with mx.autograd.record():
        losses = [loss_fn(net(xd), yd) for xd, yd in zip(gluon.utils.split_and_load(x, contexts),
                                                          gluon.utils.split_and_load(y, contexts))]
    mx.autograd.backward(losses)
    trainer.step(4)
    moved = 0
    for n, p in net.collect_params().items():
        if p.grad_req == "null":
            continue
        copies = [p.data(c).asnumpy() for c in contexts]
        np.testing.assert_array_equal(copies[0], copies[1])  # one update, the same on every device
        moved += not np.array_equal(copies[-1], before[n].asnumpy())
    assert moved > 0


def test_pretrained_student_lands_on_every_context(offline_zoo):
    published, _ = offline_zoo(seed=1, current=True)
    r = recipe_from_dict({"model": {"name": "cifar_resnet20_v1", "pretrained": True}})
    x = mx.nd.random.uniform(shape=(2, 3, 32, 32))
    with mx.autograd.predict_mode():
        expected = published(x).asnumpy()
    for classes in (10, 7):  # the zoo's own output layer, and a fresh one for fine-tuning
        net = build_model(r, classes, TWO)
        for name, p in net.collect_params().items():
            assert set(p.list_ctx()) == set(TWO), name
        with mx.autograd.predict_mode():
            outs = [net(x.as_in_context(c)).asnumpy() for c in TWO]
        np.testing.assert_array_equal(outs[0], outs[1])
        if classes == 10:
            np.testing.assert_allclose(outs[1], expected, rtol=1e-5, atol=1e-6)
        else:
            assert outs[1].shape == (2, 7)
        _train_one_step(net, TWO)


def test_zoo_teacher_by_tag_loads_that_version_offline_on_every_context(offline_zoo):
    current, _ = offline_zoo(seed=1, current=True)
    older, tag = offline_zoo(seed=2)
    x = mx.nd.random.uniform(shape=(2, 3, 32, 32))
    with mx.autograd.predict_mode():
        want_current, want_older = current(x).asnumpy(), older(x).asnumpy()
    assert not np.allclose(want_current, want_older)
    for source, want in ((f"cifar_resnet20_v1:{tag}", want_older), ("cifar_resnet20_v1", want_current)):
        teacher = load_teacher(DistillSpec(teacher=source), 10, TWO)
        for c in TWO:
            np.testing.assert_allclose(teacher(x.as_in_context(c)).asnumpy(), want, rtol=1e-5, atol=1e-6)


def test_missing_zoo_weights_name_the_exact_file(tmp_path, monkeypatch):
    import gluoncv.model_zoo.model_store as store

    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    monkeypatch.setattr(store, "download", lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    with pytest.raises(UserError) as e:
        load_teacher(DistillSpec(teacher="resnet152_v1d:cfe0220d"), 1000, TWO)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{tmp_path}/models/resnet152_v1d-cfe0220d.params is missing" in msg
    assert "get_model('resnet152_v1d', pretrained='cfe0220d')" in msg
    # without a tag: the zoo's current version, named by GluonCV 0.10.5's published short hash
    with pytest.raises(UserError, match=r"models/resnet152_v1d-cddbc86f\.params is missing"):
        load_teacher(DistillSpec(teacher="resnet152_v1d"), 1000, TWO)
    # a file that is there but is not the tagged version
    (tmp_path / "models" / "resnet152_v1d-cfe0220d.params").write_bytes(b"not these weights")
    with pytest.raises(UserError, match="has another SHA1"):
        load_teacher(DistillSpec(teacher="resnet152_v1d:cfe0220d"), 1000, TWO)


@pytest.mark.parametrize("source", ["resnet152_v1d:", "resnet152_v1d:latest", "resnet152_v1d:cfe0220z"])
def test_malformed_zoo_tag(source):
    with pytest.raises(UserError, match="hexadecimal short hash"):
        load_teacher(DistillSpec(teacher=source), 1000, TWO)
