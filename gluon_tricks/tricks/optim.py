"""The optimizer a recipe names, and no bias decay (Bag of Tricks Sec. 3.1).

No bias decay: weight decay only on conv and dense weights; biases and BatchNorm
gamma/beta get wd_mult = 0 (the paper; GluonCV's `--no-wd`).
"""
from __future__ import annotations

import re

from gluon_tricks.tricks.schedules import Schedule

MOMENTUM_OPTIMIZERS = {"nag", "sgd"}

# Parameters that are not conv/dense weights: BN gamma/beta and every bias.
NO_DECAY_PATTERN = re.compile(r".*(_gamma|_beta|_bias)$")


def make_optimizer(recipe, net, iters_per_epoch: int) -> tuple[str, dict]:
    """The optimizer's name and parameters for gluon.Trainer, with the recipe's Schedule as its
    lr_scheduler; applies no bias decay to `net`'s parameters when the recipe asks for it."""
    o = recipe.optim
    if o.no_bias_decay:
        no_bias_decay(net)
    schedule = Schedule.from_recipe(recipe, iters_per_epoch)
    params = {
        "learning_rate": schedule.base_lr,
        "wd": o.wd,
        "lr_scheduler": schedule,
        "multi_precision": recipe.model.dtype == "float16",
    }
    if o.name in MOMENTUM_OPTIMIZERS:
        params["momentum"] = o.momentum
    if o.epsilon:  # 0 keeps MXNet's per-optimizer default (1e-8 Adam/Nadam/RMSProp, 1e-5 AdaDelta)
        params["epsilon"] = o.epsilon
    return o.name, params


def no_bias_decay(net) -> list[str]:
    """wd_mult = 0 for biases and BN gamma/beta: weight decay only on conv and dense
    weights. Returns the names of the parameters it exempted."""
    names = []
    for name, p in net.collect_params().items():
        if NO_DECAY_PATTERN.match(name):
            p.wd_mult = 0.0
            names.append(name)
    return names
