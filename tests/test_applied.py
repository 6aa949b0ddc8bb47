"""What a training run APPLIES, observed on MXNet's side of the engine.

Every other test of a trick checks its mathematics; these check that `engine.train`
hands that trick to MXNet as the recipe says: the optimizer class, the learning
rate of each update (measured from the weight change of plain SGD), the batch size
an update normalizes by, the loss scale, the targets, the teacher's input and the
initial gammas. The oracles are MXNet's classes, the papers' formulas typed here,
and a one-device run of a BatchNorm-free net.
"""
import json
import math

import mxnet as mx
import numpy as np
import pytest

import seams
from gluon_tricks.engine import train
from gluon_tricks.recipe import recipe_from_dict

OPTIMIZER_CLASSES = {"nag": mx.optimizer.NAG, "sgd": mx.optimizer.SGD, "adam": mx.optimizer.Adam,
                     "nadam": mx.optimizer.Nadam, "adadelta": mx.optimizer.AdaDelta,
                     "rmsprop": mx.optimizer.RMSProp}


def run(tmp_path, recipe_dict, **kwargs):
    return train(recipe_from_dict(recipe_dict), tmp_path / "run", progress=False, **kwargs)


@pytest.mark.parametrize("name", sorted(OPTIMIZER_CLASSES))
def test_the_update_is_made_by_the_recipes_optimizer(tmp_path, monkeypatch, name):
    seams.linear_zoo(monkeypatch)
    spy = seams.TrainerSpy(monkeypatch, stop_at_init=True)
    with pytest.raises(seams.StopRun):
        run(tmp_path, seams.tiny(optim={"name": name, "momentum": 0.8, "wd": 3e-4}))
    opt = spy.optimizer
    assert type(opt) is OPTIMIZER_CLASSES[name]
    assert opt.wd == pytest.approx(3e-4) and opt.multi_precision is False
    if name in ("nag", "sgd"):
        assert opt.momentum == pytest.approx(0.8)


def paper_lr(t, kind, base, iters, epochs, warm_epochs=0, warm_start=0.0, final=0.0, decay=(), factor=0.1,
             power=2.0):
    """Bag of Tricks Sec. 3.1 (linear warm-up) and 5.1 (cosine: eta_t = 1/2 (1 + cos(t pi / T)) eta), with
    the decay counted after warm-up and running from base to `final`; poly (1 - t/T)^p; step decay."""
    warm = warm_epochs * iters
    if t < warm:
        return warm_start + (base - warm_start) * t / warm
    total = epochs * iters - warm
    if kind == "cosine":
        return final + (base - final) * (1 + math.cos(math.pi * (t - warm) / total)) / 2
    if kind == "poly":
        return final + (base - final) * (1 - (t - warm) / total) ** power
    if kind == "step":
        return base * factor ** sum(t >= e * iters for e in decay)
    return base


SCHEDULES = {
    "cosine": dict(kind="cosine", warmup_epochs=1, warmup_start_lr=0.01, final_lr=0.02),
    "poly": dict(kind="poly", power=2.0, final_lr=0.01),
    "step": dict(kind="step", decay_epochs=[1], decay_factor=0.2),
    "constant": dict(kind="constant"),
}


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_each_update_applies_the_schedules_learning_rate(tmp_path, monkeypatch, kind):
    """Plain SGD without momentum or weight decay: w' = w - lr * grad / batch, so the lr each
    update used is read off the weights themselves, whatever the engine logs."""
    seams.linear_zoo(monkeypatch)
    spy = seams.TrainerSpy(monkeypatch, keep_grads=True)
    s = SCHEDULES[kind]
    run(tmp_path, seams.tiny(epochs=2, batch=16, images=64, optim={"name": "sgd", "momentum": 0.0, "wd": 0.0,
                                                                   "lr": 0.1},
                             schedule=s))
    assert len(spy.steps) == 8
    for t, rec in enumerate(spy.steps):
        expected = paper_lr(t, s["kind"], 0.1, 4, 2, s.get("warmup_epochs", 0), s.get("warmup_start_lr", 0.0),
                            s.get("final_lr", 0.0), s.get("decay_epochs", ()), s.get("decay_factor", 0.1),
                            s.get("power", 2.0))
        g = rec["grad"] / rec["batch_size"]
        big = np.abs(g) > 1e-3 * np.abs(g).max()
        applied = np.median((rec["weight"] - rec["weight_after"])[big] / g[big])
        assert applied == pytest.approx(expected, rel=1e-3, abs=1e-6), (t, applied, expected)
        assert rec["lr"] == pytest.approx(expected, rel=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([spy.steps[3]["lr"], spy.steps[7]["lr"]])  # each epoch's last


def test_two_devices_normalize_by_the_global_batch(tmp_path, monkeypatch):
    """Two devices each hold half of the batch; the summed gradient is over the whole batch,
    so the update must divide by data.batch_size, not by one device's share."""
    seams.linear_zoo(monkeypatch)
    spy = seams.TrainerSpy(monkeypatch)
    run(tmp_path, seams.tiny(batch=16, images=32, system={"ctx": "cpu:0,cpu:1"}))
    assert [s["batch_size"] for s in spy.steps] == [16, 16]


def test_static_loss_scale_scales_the_gradients_and_not_the_update(tmp_path, monkeypatch):
    """Loss scaling (precision.py; Micikevicius et al.): the loss is multiplied by S before
    backward and the update divides by S, so gradients are S times larger and weights are
    unchanged. float16 cannot run on this CPU; the arithmetic is the same in float32."""
    seams.linear_zoo(monkeypatch)
    seen = {}
    for scale in ("none", "128"):
        spy = seams.TrainerSpy(monkeypatch, keep_grads=True)
        out = tmp_path / scale
        out.mkdir()
        run(out, seams.tiny(images=16, optim={"loss_scale": scale}))
        (seen[scale],) = spy.steps
    plain, scaled = seen["none"], seen["128"]
    assert scaled["batch_size"] == 128 * plain["batch_size"] == 128 * 16
    np.testing.assert_allclose(scaled["grad"], 128 * plain["grad"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scaled["weight_after"], plain["weight_after"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("form,on,off", [("paper", 1 - 0.1, 0.1 / 9), ("gluoncv", 1 - 0.1 + 0.1 / 10, 0.1 / 10)])
def test_the_recipes_smoothing_form_reaches_the_loss(tmp_path, monkeypatch, form, on, off):
    """Bag of Tricks eq. 4 (on 1-eps, off eps/(K-1)) or GluonCV's (on 1-eps+eps/K, off eps/K), K = 10:
    the targets the engine hands to the devices."""
    seams.linear_zoo(monkeypatch)
    targets = seams.split_spy(monkeypatch)["y"]
    run(tmp_path, seams.tiny(images=32, smoothing={"eps": 0.1, "form": form}))
    assert len(targets) == 2
    for y in targets:
        assert y.shape == (16, 10)
        np.testing.assert_allclose(np.sort(y, axis=1)[:, -1], on, rtol=1e-6)
        np.testing.assert_allclose(np.sort(y, axis=1)[:, :-1], off, rtol=1e-5)


def test_the_teacher_predicts_on_the_mixed_batch(tmp_path, monkeypatch):
    """Bag of Tricks 5.4: with mixup and distillation together, the teacher's soft labels are
    for the mixed image the student sees."""
    log = seams.linear_zoo(monkeypatch)
    raw = seams.split_spy(monkeypatch)["x"]
    run(tmp_path, seams.tiny(images=64, mixup={"kind": "interpolation", "alpha": 1.0},
                             distill={"teacher": saved_teacher(tmp_path / "teacher.params"),
                                      "teacher_model": "cifar_resnet20_v1"}))
    student = {id(e["net"]) for e in log if e["training"]}
    assert len(student) == 1
    students = [e["x"] for e in log if e["training"]]
    teachers = [e["x"] for e in during_training(log) if id(e["net"]) not in student]
    train_raw = raw[:4]  # the 4 training batches come before the evaluation's
    assert len(students) == len(teachers) == 4
    for s, t in zip(students, teachers):
        np.testing.assert_array_equal(t, s)
    assert any(not np.allclose(s, r, atol=1e-3) for s, r in zip(students, train_raw))


def during_training(log):
    """The forwards up to the student's last training step (at the end the run also measures
    the teacher's accuracy on the test set)."""
    last = max(i for i, e in enumerate(log) if e["training"])
    return log[:last + 1]


def saved_teacher(path):
    teacher = seams.Recording(10, [])
    teacher.initialize()
    teacher(mx.nd.zeros((1, 3, 32, 32)))
    teacher.save_parameters(str(path))
    return str(path)


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_distillation_loss_is_the_papers_with_the_recipes_t_and_w(tmp_path, monkeypatch):
    """Bag of Tricks 5.3 (Hinton et al.): loss = (1-w) CE(y, z) + w T^2 KL(softmax(r/T) || softmax(z/T)),
    z the student's logits, r the teacher's, with the recipe's T = 4 and w = 0.7. One step of
    16 images: the epoch's train_loss is that loss's mean over them."""
    log = seams.linear_zoo(monkeypatch)
    targets = seams.split_spy(monkeypatch)["y"]
    t, w = 4.0, 0.7
    run(tmp_path, seams.tiny(images=16, distill={"teacher": saved_teacher(tmp_path / "teacher.params"),
                                                 "teacher_model": "cifar_resnet20_v1",
                                                 "temperature": t, "soft_weight": w}))
    student = [e for e in log if e["training"]]
    teacher = [e for e in during_training(log) if e["net"] is not student[0]["net"] and not e["training"]]
    (z,), (r,), (y,) = [e["out"] for e in student], [e["out"] for e in teacher], targets[:1]
    p_teacher = np.exp(log_softmax(r / t))
    kl = (p_teacher * (log_softmax(r / t) - log_softmax(z / t))).sum(axis=1)
    expected = (1 - w) * -(y * log_softmax(z)).sum(axis=1) + w * t * t * kl
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["train_loss"] == pytest.approx(expected.mean(), rel=1e-4)


def test_random_mixing_draws_every_choice():
    """mixup.kind = "random" picks one of `choices` per batch, uniformly (the follow-up's code)."""
    spec = recipe_from_dict({"mixup": {"kind": "random", "choices": ["interpolation", "stitch_height",
                                                                     "stitch_width", "tile"]}}).mixup
    mixer = seams.Mixer(spec, epochs=10)
    rng = np.random.default_rng(0)
    kinds = [mixer.plan(8, 4, 4, 0, rng).kind for _ in range(400)]
    counts = {k: kinds.count(k) for k in spec.choices}
    assert set(kinds) == set(spec.choices)
    assert all(60 <= c <= 140 for c in counts.values()), counts  # 100 expected each; 4 sigma ~ 35


def test_zero_gamma_zeroes_the_bn_that_feeds_the_residual_sum(tmp_path, monkeypatch):
    """Bag of Tricks 3.1: gamma = 0 in the BN at the END of each residual branch, so the block
    starts as its shortcut; the other BNs keep gamma = 1. In GluonCV's CIFARBasicBlockV1 the
    branch is conv-BN-relu-conv-BN: body[4] feeds the sum, body[1] does not."""
    from gluoncv.model_zoo.cifarresnet import CIFARBasicBlockV1

    built = seams.zoo_spy(monkeypatch)
    seams.TrainerSpy(monkeypatch, stop_at_init=True)
    with pytest.raises(seams.StopRun):
        run(tmp_path, seams.tiny(model={"name": "cifar_resnet20_v1", "zero_gamma": True}))
    blocks = []

    def walk(block):
        for child in block._children.values():
            if isinstance(child, CIFARBasicBlockV1):
                blocks.append(child)
            walk(child)

    net = built[0]
    net(mx.nd.zeros((1, 3, 32, 32)))  # completes the deferred initialization the recipe set up
    walk(net)
    assert len(blocks) == 9
    for b in blocks:
        assert np.all(b.body[4].gamma.data().asnumpy() == 0)
        assert np.all(b.body[1].gamma.data().asnumpy() == 1)
        if b.downsample is not None:
            assert np.all(b.downsample[1].gamma.data().asnumpy() == 1)


def test_cifar100_python_files_train_on_their_fine_labels(tmp_path, monkeypatch):
    """The official CIFAR-100 python format keeps b'fine_labels' (100 classes) beside
    b'coarse_labels' (20): data.fine_labels = true trains on the fine ones."""
    from conftest import cifar_records, python_cifar_file

    seams.linear_zoo(monkeypatch)
    targets = seams.split_spy(monkeypatch)["y"]
    images, coarse, fine, _ = cifar_records(32, 100, fine=True)
    for name in ("train", "test"):
        python_cifar_file(tmp_path / name, images, {"fine_labels": fine, "coarse_labels": coarse})
    d = seams.tiny(images=32)
    d["data"] = dict(d["data"], dataset="cifar100", root=str(tmp_path), fine_labels=True)
    run(tmp_path, d)
    labels = np.concatenate([y.argmax(axis=1) for y in targets[:2]])
    assert targets[0].shape == (16, 100)
    assert sorted(labels) == sorted(fine)  # every training image once, with its fine label
