"""The loss on soft targets: cross-entropy, and the step-loss object without a teacher.

Targets are always distributions (one-hot, smoothed and/or mixed), and logits
are cast to float32 first so a float16 network still computes its loss in fp32.
Distillation (the step loss with a teacher) is in distill.py.
"""
from __future__ import annotations

import numpy as np
from mxnet import autograd
from mxnet.gluon import HybridBlock


def soft_cross_entropy_numpy(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(target * log_p).sum(axis=1)


class SoftCrossEntropy(HybridBlock):
    """Per-sample -sum(y * log_softmax(z))."""

    def hybrid_forward(self, F, logits, target):
        logits = F.cast(logits, "float32")
        return -F.sum(target * F.log_softmax(logits, axis=-1), axis=-1)


class StudentLoss:
    """The step's loss without a teacher: per device, the soft-target cross-entropy of
    the student's logits, recorded for back-propagation."""

    def __init__(self):
        self.loss = SoftCrossEntropy()
        self.loss.hybridize(static_alloc=True, static_shape=True)

    def __call__(self, net, xs, ys) -> list:
        with autograd.record():
            outs = [net(x) for x in xs]
            return [self.loss(o, y) for o, y in zip(outs, ys)]
