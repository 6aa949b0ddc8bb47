"""Learning-rate schedules, per iteration, with optional linear warm-up.

`lr_at` is the definition (the papers' formulas). `Schedule` is a recipe's schedule,
built once per run: it answers `lr(t)` (the metrics row, plots) and is the MXNet
scheduler that rides inside the optimizer (and so inside the KVStore when updates
run there, where `Trainer.set_learning_rate` is ignored).

Why not GluonCV's `LRScheduler`/`LRSequential`: they divide by `niters - 1`
instead of the number of iterations, so their cosine and poly curves run one
iteration fast and their warm-up reaches the base rate one iteration late;
`tests/test_schedules.py` measures the gap. Step decay does match exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields


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


@dataclass(frozen=True)
class Schedule:
    """`lr_at` with one recipe's settings (the fields are `lr_at`'s arguments, the base lr
    already linearly scaled). Calling it with MXNet's update count makes it the optimizer's
    lr_scheduler: MXNet counts updates from 1, `lr` iterations from 0. Deliberately not a
    subclass of mxnet's LRScheduler: a parameter server unpickles the optimizer while
    `import mxnet` is still running, and checkpoints pickle it in the trainer's states."""
    kind: str
    base_lr: float
    iters_per_epoch: int
    epochs: int
    warmup_epochs: int = 0
    warmup_start_lr: float = 0.0
    decay_epochs: tuple[int, ...] = (30, 60, 90)
    decay_factor: float = 0.1
    power: float = 2.0
    final_lr: float = 0.0
    decay_from: str = "start"
    warmup_every: str = "iteration"
    decay_every: str = "iteration"

    @classmethod
    def from_recipe(cls, recipe, iters_per_epoch: int) -> "Schedule":
        s = recipe.schedule
        return cls(kind=s.kind, base_lr=scaled_lr(recipe), iters_per_epoch=iters_per_epoch, epochs=recipe.epochs,
                   warmup_epochs=s.warmup_epochs, warmup_start_lr=s.warmup_start_lr,
                   decay_epochs=tuple(s.decay_epochs), decay_factor=s.decay_factor, power=s.power,
                   final_lr=s.final_lr, decay_from=s.decay_from, warmup_every=s.warmup_every,
                   decay_every=s.decay_every)

    def lr(self, t: int) -> float:
        """The learning rate of iteration t (0-based)."""
        return lr_at(t, **vars(self))

    def curve(self) -> list[float]:
        """Every iteration's learning rate over the whole run."""
        return [self.lr(t) for t in range(self.epochs * self.iters_per_epoch)]

    def __call__(self, num_update: int) -> float:
        return self.lr(max(0, num_update - 1))

    def __setstate__(self, state: dict) -> None:
        # the trainer.states of checkpoints written before Schedule existed hold a PaperLR
        # (see below) whose state is {"base_lr", "iters_per_epoch", "kwargs": lr_at's arguments};
        # a setting newer than the checkpoint takes its default (lr_at's, which the run used)
        if "kwargs" in state:
            state = dict(state["kwargs"], base_lr=state["base_lr"], iters_per_epoch=state["iters_per_epoch"])
        for f in fields(self):
            object.__setattr__(self, f.name, state.get(f.name, f.default))


# The name this scheduler had before Schedule (its `kwargs` were Schedule's fields): users'
# checkpoints pickled it in their trainer states, and resuming such a run must keep working.
PaperLR = Schedule


def scaled_lr(recipe) -> float:
    """Linear scaling rule (Goyal et al.; Bag of Tricks 3.1): lr * batch / 256."""
    o = recipe.optim
    if not o.linear_scaling:
        return o.lr
    return o.lr * recipe.data.batch_size / o.lr_reference_batch


def lr_curve(recipe, iters_per_epoch: int) -> list[float]:
    """Every iteration's learning rate over a whole run (for plots)."""
    return Schedule.from_recipe(recipe, iters_per_epoch).curve()
