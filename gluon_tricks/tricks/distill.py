"""Knowledge distillation (Hinton et al.; Bag of Tricks Sec. 5.3), weight w, temperature T:

    loss = (1 - w) * CE(y, softmax(z)) + w * T^2 * KL(softmax(r/T) || softmax(z/T))

z the student's logits, r the teacher's, y the (smoothed, mixed) target. GluonCV's
`DistillationSoftmaxCrossEntropyLoss(temperature=T, hard_weight=1-w)` uses the
cross-entropy CE(softmax(r/T), softmax(z/T)) instead of the KL divergence; the two
differ by w * T^2 * H(softmax(r/T)), the teacher's entropy, which does not depend
on the student: same gradients, different printed loss (tests/test_tricks.py).

The teacher sees the student's (mixed) batch re-normalized to its own mean/std
(`distill.teacher_mean/std`; `renormalization`): GluonCV's CIFAR zoo models were trained with
CIFAR's statistics, and seeing the student's ImageNet ones costs the real cifar_resnet20_v1
0.6 points (93.26% instead of 93.85% on cifar10-mini; ../shared/data/pretrained/README.md).

The training step calls one step-loss object, built once per run: `DistillStep` (which
holds the teacher) or `losses.StudentLoss` (no teacher), so the step never asks whether
there is a teacher. `distill.soft_weight` w is 1 - GluonCV's `--hard-weight`.
"""
from __future__ import annotations

import numpy as np
from mxnet import autograd, nd
from mxnet.gluon import HybridBlock

from gluon_tricks.tricks.losses import soft_cross_entropy_numpy


def distillation_numpy(student, target, teacher, temperature: float, soft_weight: float) -> np.ndarray:
    t = temperature
    p_t = np.exp(teacher / t - (teacher / t).max(1, keepdims=True))
    p_t /= p_t.sum(1, keepdims=True)
    kl = soft_cross_entropy_numpy(student / t, p_t) - soft_cross_entropy_numpy(np.log(p_t), p_t)
    return (1 - soft_weight) * soft_cross_entropy_numpy(student, target) + soft_weight * t * t * kl


class DistillationLoss(HybridBlock):
    """Per-sample (1-w) CE(y, z) + w T^2 KL(softmax(r/T) || softmax(z/T))."""

    def __init__(self, temperature: float = 20.0, soft_weight: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.t, self.w = float(temperature), float(soft_weight)

    def hybrid_forward(self, F, logits, target, teacher_logits):
        logits = F.cast(logits, "float32")
        teacher_logits = F.cast(teacher_logits, "float32")
        hard = -F.sum(target * F.log_softmax(logits, axis=-1), axis=-1)
        log_p_teacher = F.log_softmax(teacher_logits / self.t, axis=-1)
        log_p_student = F.log_softmax(logits / self.t, axis=-1)
        kl = F.sum(F.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
        return (1 - self.w) * hard + self.w * self.t * self.t * kl


def renormalization(mean, std, teacher_mean, teacher_std) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per channel such that x * scale + shift turns an image normalized by
    (mean, std) into the same image normalized by (teacher_mean, teacher_std):
    ((x std + mean) - t_mean) / t_std. None when the teacher uses the student's (or [])."""
    if not teacher_mean or (list(teacher_mean), list(teacher_std)) == (list(mean), list(std)):
        return None
    mean, std, t_mean, t_std = (np.asarray(v, dtype=np.float64) for v in (mean, std, teacher_mean, teacher_std))
    return (std / t_std).astype(np.float32), ((mean - t_mean) / t_std).astype(np.float32)


class DistillStep:
    """The step's loss with a teacher: the teacher predicts on exactly the images the
    student sees (mixed, if mixing is on), re-normalized to its own statistics on the device,
    in inference mode and outside the recorded graph, so no gradient or BatchNorm update
    reaches it."""

    def __init__(self, teacher, temperature: float, soft_weight: float, teacher_dtype: str | None = None,
                 renorm=None):
        self.teacher, self.teacher_dtype = teacher, teacher_dtype  # None: the student's images as they are
        self.loss = DistillationLoss(temperature, soft_weight)
        self.loss.hybridize(static_alloc=True, static_shape=True)
        self.renorm = renorm  # (scale, shift) of `renormalization`, or None
        self._on_device: dict = {}  # (context, dtype) -> (scale, shift) as (1, 3, 1, 1) NDArrays

    def teacher_input(self, x):
        """The student's (mixed) images as the teacher is fed them: in its normalization, and
        in its dtype (a float16 teacher of a float32 student gets float16 images; its logits
        are cast back to float32 in the loss)."""
        if self.renorm is not None:
            key = (x.context, x.dtype)
            if key not in self._on_device:
                self._on_device[key] = tuple(nd.array(v.reshape(1, 3, 1, 1), ctx=x.context, dtype=x.dtype)
                                             for v in self.renorm)
            scale, shift = self._on_device[key]
            x = nd.broadcast_add(nd.broadcast_mul(x, scale), shift)
        dtype = self.teacher_dtype
        return x if dtype is None or np.dtype(x.dtype) == np.dtype(dtype) else x.astype(dtype)

    def teacher_logits(self, xs) -> list:
        return [self.teacher(self.teacher_input(x)) for x in xs]

    def __call__(self, net, xs, ys) -> list:
        teacher_logits = self.teacher_logits(xs)
        with autograd.record():
            outs = [net(x) for x in xs]
            return [self.loss(o, y, t) for o, y, t in zip(outs, ys, teacher_logits)]
