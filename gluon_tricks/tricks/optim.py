"""The optimizer a recipe names, and no bias decay (Bag of Tricks Sec. 3.1).

No bias decay: weight decay only on conv and dense weights; biases and BatchNorm
gamma/beta get wd_mult = 0 (the paper; GluonCV's `--no-wd`).
"""
from __future__ import annotations

import re

from gluon_tricks.tricks.schedules import PaperLR, schedule_args

MOMENTUM_OPTIMIZERS = {"nag", "sgd"}

# Parameters that are not conv/dense weights: BN gamma/beta and every bias.
NO_DECAY_PATTERN = re.compile(r".*(_gamma|_beta|_bias)$")


def make_optimizer(recipe, iters_per_epoch: int) -> tuple[str, dict]:
    o = recipe.optim
    params = {
        "learning_rate": schedule_args(recipe)["base_lr"],
        "wd": o.wd,
        "lr_scheduler": PaperLR(iters_per_epoch, **schedule_args(recipe)),
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
