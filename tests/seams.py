"""The few project names the behaviour tests import, and spies on MXNet/GluonCV.

Project internals move between files; every test that needs one imports it from
here, so a move is fixed on one line. Everything else is observed through stable
seams: `engine.train`, the CLI, and MXNet/GluonCV classes the engine must use
(gluon.Trainer, gluoncv.model_zoo.get_model, mx.io.ImageRecordIter).
"""
from __future__ import annotations

import mxnet as mx
from mxnet import autograd, gluon

from gluon_tricks.data.augment import CifarAugment  # noqa: F401
from gluon_tricks.devices import micro_batches, parse_ctx  # noqa: F401
from gluon_tricks.paths import recipes_root  # noqa: F401
from gluon_tricks.tricks.optim import make_optimizer  # noqa: F401
from gluon_tricks.tricks.mixing import Mixer  # noqa: F401
from gluon_tricks.tricks.precision import optimizer_step  # noqa: F401


class StopRun(Exception):
    """Raised by a spy to end a run as soon as what it looks at is known."""


class TrainerSpy:
    """Records every gluon.Trainer the run builds and, for each update, the batch size it
    normalizes by, the learning rate the optimizer applies, and (optionally) the first
    trainable parameter's weight and gradient just before the update."""

    def __init__(self, monkeypatch, stop_at_init=False, keep_grads=False):
        self.trainers, self.steps = [], []
        real_init, real_step = mx.gluon.Trainer.__init__, mx.gluon.Trainer.step
        spy = self

        def init(trainer, params, optimizer, optimizer_params=None, *args, **kwargs):
            real_init(trainer, params, optimizer, optimizer_params, *args, **kwargs)
            spy.trainers.append(trainer)
            if stop_at_init:
                raise StopRun

        def step(trainer, batch_size, ignore_stale_grad=False):
            record = {"batch_size": batch_size}
            if keep_grads:
                p = next(q for q in trainer._params if q.grad_req != "null")
                ctx = p.list_ctx()[0]
                record["weight"] = p.data(ctx).asnumpy().copy()
                record["grad"] = p.grad(ctx).asnumpy().copy()
                record["param"] = p
            real_step(trainer, batch_size, ignore_stale_grad)
            record["lr"] = trainer.learning_rate
            if keep_grads:
                record["weight_after"] = record["param"].data(record["param"].list_ctx()[0]).asnumpy().copy()
            spy.steps.append(record)

        monkeypatch.setattr(mx.gluon.Trainer, "__init__", init)
        monkeypatch.setattr(mx.gluon.Trainer, "step", step)

    @property
    def optimizer(self):
        assert len(self.trainers) == 1, f"{len(self.trainers)} trainers built"
        return self.trainers[0].optimizer


class Recording(gluon.Block):
    """A linear classifier (no BatchNorm) that records every input it is called with, and
    whether autograd was recording (training) or not (inference: a teacher, evaluation)."""

    def __init__(self, classes, log, **kwargs):
        super().__init__(**kwargs)
        self.log = log
        with self.name_scope():
            self.output = gluon.nn.Dense(classes)

    def forward(self, x):
        out = self.output(x)
        self.log.append({"net": self, "x": x.asnumpy().copy(), "out": out.asnumpy().copy(),
                         "training": autograd.is_recording()})
        return out


def split_spy(monkeypatch):
    """What the engine hands to the devices, per call of gluon.utils.split_and_load:
    {"x": [4-d image batches], "y": [2-d target batches]} as numpy arrays."""
    seen = {"x": [], "y": []}
    real = mx.gluon.utils.split_and_load

    def split(data, ctx_list, *args, **kwargs):
        value = data.asnumpy() if hasattr(data, "asnumpy") else data
        ndim = getattr(value, "ndim", 0)
        if ndim in (2, 4):
            seen["y" if ndim == 2 else "x"].append(value.copy())
        return real(data, ctx_list, *args, **kwargs)

    monkeypatch.setattr(mx.gluon.utils, "split_and_load", split)
    return seen


def linear_zoo(monkeypatch, log=None):
    """Every zoo model the run asks GluonCV for becomes a `Recording` linear classifier
    (the name must still be a zoo name): a tiny, BatchNorm-free, fully observable net."""
    import gluoncv.model_zoo

    log = [] if log is None else log

    def get_model(name, classes=1000, pretrained=False, **kwargs):
        return Recording(classes, log)

    monkeypatch.setattr(gluoncv.model_zoo, "get_model", get_model)
    return log


def zoo_spy(monkeypatch):
    """The real zoo models, each one also appended to the returned list."""
    import gluoncv.model_zoo

    built, real = [], gluoncv.model_zoo.get_model

    def get_model(name, **kwargs):
        net = real(name, **kwargs)
        built.append(net)
        return net

    monkeypatch.setattr(gluoncv.model_zoo, "get_model", get_model)
    return built


def tiny(name="tiny", epochs=1, batch=16, images=64, **sections):
    """A recipe dict for a run of a few steps on cifar10-mini without augmentation."""
    d = {"name": name, "epochs": epochs,
         "data": {"dataset": "cifar10-mini", "batch_size": batch, "train_limit": images, "test_limit": 16,
                  "augment": "none"},
         "model": {"name": "cifar_resnet20_v1"}, "schedule": {"kind": "constant"},
         "system": {"log_interval": 1}}
    for key, value in sections.items():
        d[key] = dict(d.get(key, {}), **value) if isinstance(value, dict) else value
    return d
