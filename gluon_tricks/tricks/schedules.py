"""Learning-rate schedules, per iteration, with optional linear warm-up.

`lr_at` is the definition (the papers' formulas); `PaperLR` wraps it as an
MXNet `LRScheduler` so it rides inside the optimizer (and so inside the
KVStore when updates run there, where `Trainer.set_learning_rate` is ignored).

Why not GluonCV's `LRScheduler`/`LRSequential`: they divide by `niters - 1`
instead of the number of iterations, so their cosine and poly curves run one
iteration fast and their warm-up reaches the base rate one iteration late;
`tests/test_schedules.py` measures the gap. Step decay does match exactly.
"""
from __future__ import annotations

import math


def lr_at(t: int, kind: str, base_lr: float, iters_per_epoch: int, epochs: int, *, warmup_epochs: int = 0,
          warmup_start_lr: float = 0.0, decay_epochs=(30, 60, 90), decay_factor: float = 0.1,
          power: float = 2.0, final_lr: float = 0.0, decay_from: str = "start",
          warmup_every: str = "iteration", decay_every: str = "iteration") -> float:
    """The learning rate of iteration t (0-based).

    - warm-up: linear from warmup_start_lr at t=0 towards base_lr over warmup_epochs, per
      iteration; or, warmup_every "epoch", base_lr * (i + 1) / warmup_epochs in epoch i (the
      Food-101 tutorial);
    - step: base_lr * decay_factor**(number of decay epochs passed), counted from the
      start of training (decay_from "start": Bag of Tricks, GluonCV's ImageNet script) or
      from the end of the warm-up (decay_from "warmup_end": GluonCV's LRSequential of a
      warm-up and a step LRScheduler, as the follow-up's code built it);
    - cosine (Bag of Tricks eq. in Sec. 5.1): final + (base - final) * (1 + cos(pi t'/T)) / 2
      with t' and T the iteration and the total count after warm-up;
    - poly: final + (base - final) * (1 - t'/T)**power;
    - decay_every "epoch" (cosine and poly): t' and T counted in whole epochs after the
      warm-up, so the rate changes once per epoch (the Food-101 tutorial's cosine).
    """
    warm = warmup_epochs * iters_per_epoch
    if t < warm:
        if warmup_every == "epoch":
            return base_lr * (t // iters_per_epoch + 1) / warmup_epochs
        return warmup_start_lr + (base_lr - warmup_start_lr) * t / warm
    if kind == "constant":
        return base_lr
    if kind == "step":
        if decay_from not in ("start", "warmup_end"):
            raise ValueError(f"unknown decay_from {decay_from!r}")
        offset = warm if decay_from == "warmup_end" else 0
        passed = sum(1 for e in decay_epochs if t >= offset + e * iters_per_epoch)
        return base_lr * decay_factor ** passed
    if decay_every == "epoch":
        frac = min(1.0, ((t - warm) // iters_per_epoch) / max(1, epochs - warmup_epochs))
    else:
        frac = min(1.0, (t - warm) / max(1, epochs * iters_per_epoch - warm))
    if kind == "cosine":
        return final_lr + (base_lr - final_lr) * 0.5 * (1 + math.cos(math.pi * frac))
    if kind == "poly":
        return final_lr + (base_lr - final_lr) * (1 - frac) ** power
    raise ValueError(f"unknown schedule kind {kind!r}")


def schedule_args(recipe) -> dict:
    """Keyword arguments of `lr_at` from a recipe (base lr already linearly scaled)."""
    s = recipe.schedule
    return dict(kind=s.kind, base_lr=scaled_lr(recipe), epochs=recipe.epochs, warmup_epochs=s.warmup_epochs,
                warmup_start_lr=s.warmup_start_lr, decay_epochs=tuple(s.decay_epochs),
                decay_factor=s.decay_factor, power=s.power, final_lr=s.final_lr, decay_from=s.decay_from,
                warmup_every=s.warmup_every, decay_every=s.decay_every)


def scaled_lr(recipe) -> float:
    """Linear scaling rule (Goyal et al.; Bag of Tricks 3.1): lr * batch / 256."""
    o = recipe.optim
    if not o.linear_scaling:
        return o.lr
    return o.lr * recipe.data.batch_size / o.lr_reference_batch


class PaperLR:
    """`lr_at` as an MXNet scheduler (MXNet needs a callable with `base_lr`). MXNet counts
    updates from 1, lr_at from 0. Deliberately not a subclass of mxnet's LRScheduler: a
    parameter server unpickles the optimizer while `import mxnet` is still running."""

    def __init__(self, iters_per_epoch: int, **kwargs):
        self.base_lr = kwargs["base_lr"]
        self.iters_per_epoch = iters_per_epoch
        self.kwargs = kwargs

    def __call__(self, num_update: int) -> float:
        return lr_at(max(0, num_update - 1), iters_per_epoch=self.iters_per_epoch, **self.kwargs)


def lr_curve(recipe, iters_per_epoch: int) -> list[float]:
    """Every iteration's learning rate over a whole run (for plots)."""
    args = schedule_args(recipe)
    return [lr_at(t, iters_per_epoch=iters_per_epoch, **args) for t in range(recipe.epochs * iters_per_epoch)]
