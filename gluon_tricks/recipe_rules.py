"""What a valid recipe is, beyond its types: the mixing kinds, the numeric ranges, the values
that are well-typed but meaningless, and the names a run directory can take. recipe.py calls
these when it builds a Recipe; they read its fields and import nothing of the package.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Literal

from gluon_tricks.errors import UserError, shown

# The kinds of mixing one batch can get (mixup.kind, mixup.choices, mixup.min_lambda_kinds).
MixKind = Literal["interpolation", "stitch_height", "stitch_width", "tile"]
MIX_KINDS = set(typing.get_args(MixKind))

# Allowed ranges of the numeric settings not checked one by one in `value_problems`:
# key -> (low, high, low included, high included). Each of these, outside its range, trained
# something else with exit 0 (reliability-redteam-2 probes 4.14-4.29): a negative decay_factor
# or final_lr is gradient ascent, power < 0 raises the rate x36, momentum >= 1 diverges,
# min_lambda >= 1 never mixes (while metrics say it does), lr_reference_batch 0 divides by 0.
RANGES = {
    "epochs_scale": (0, math.inf, False, False),
    "data.train_limit": (0, math.inf, True, False),  # 0: all images
    "data.test_limit": (0, math.inf, True, False),
    "data.image_size": (1, math.inf, True, False),
    "data.val_resize": (0, math.inf, True, False),  # 0: image_size * 256/224
    "data.min_area": (0, 1, False, True),
    "data.color_jitter": (0, 1, True, True),  # factors from [1 - j, 1 + j] must stay >= 0
    "data.lighting_std": (0, math.inf, True, False),
    "optim.momentum": (0, 1, True, False),
    "optim.lr_reference_batch": (1, math.inf, True, False),
    "schedule.decay_factor": (0, 1, False, True),
    "schedule.power": (0, math.inf, False, False),
    "schedule.warmup_epochs": (0, math.inf, True, False),
    "schedule.warmup_start_lr": (0, math.inf, True, False),
    "schedule.final_lr": (0, math.inf, True, False),
    "mixup.min_lambda": (0, 1, True, False),
    "mixup.off_first_epochs": (0, math.inf, True, False),
    "mixup.off_last_epochs": (0, math.inf, True, False),
    "system.log_interval": (1, math.inf, True, False),
    "system.eval_every": (1, math.inf, True, False),
}


def _range_text(low, high, low_in, high_in) -> str:
    if high == math.inf:
        return f"{'>=' if low_in else '>'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def _out_of_range(r) -> list[str]:
    """One 'key = value: must be <range>' per numeric setting outside RANGES."""
    d = r.to_dict()
    bad = []
    for key, (low, high, low_in, high_in) in RANGES.items():
        node = d
        for part in key.split("."):
            node = node[part]
        above = node > low if not low_in else node >= low
        below = node < high if not high_in else node <= high
        if not (above and below):
            bad.append(f"{key} = {node!r}: must be {_range_text(low, high, low_in, high_in)}")
    decays = r.schedule.decay_epochs
    if any(e < 1 for e in decays) or any(b <= a for a, b in zip(decays, decays[1:])):
        # a decay at epoch <= 0 decays before the first step; a repeated one decays twice
        bad.append(f"schedule.decay_epochs = {decays!r}: must be strictly increasing epochs >= 1")
    return bad


def value_problems(r) -> list[str]:
    """Values of the Recipe `r` that are well-typed but meaningless, one line each."""
    problems = _non_finite_floats(r)
    if not problems:  # nan passes no range test: one message per bad key is enough
        problems += _out_of_range(r)
    if not 0 <= r.seed < 2 ** 32:  # numpy's and MXNet's seed range
        problems.append(f"seed must be in 0..{2 ** 32 - 1}")
    if r.system.keep_checkpoints < 1:  # 0 or less would delete every checkpoint it writes
        problems.append("system.keep_checkpoints must be at least 1")
    if r.model.classes < 0:
        problems.append("model.classes must be >= 0 (0: the dataset's number of classes)")
    if r.epochs < 1:
        problems.append("epochs must be at least 1")
    if r.data.batch_size < 1:
        problems.append("data.batch_size must be at least 1")
    if not 0 <= r.smoothing.eps < 1:
        problems.append("smoothing.eps must be in [0, 1)")
    if r.mixup.alpha <= 0:
        problems.append("mixup.alpha must be > 0")
    if not 0 <= r.distill.soft_weight <= 1:
        problems.append("distill.soft_weight must be in [0, 1]")
    if r.distill.temperature <= 0:
        problems.append("distill.temperature must be > 0")
    bad_choices = set(r.mixup.choices) - MIX_KINDS
    if bad_choices or not r.mixup.choices:
        problems.append("mixup.choices must be a non-empty list of interpolation, stitch_height, stitch_width, tile")
    if set(r.mixup.min_lambda_kinds) - {"interpolation", "stitch_height", "stitch_width"}:
        problems.append("mixup.min_lambda_kinds may list only interpolation, stitch_height, stitch_width "
                        "(tile never skips a mix)")
    if r.optim.epsilon < 0:
        problems.append("optim.epsilon must be >= 0 (0 = MXNet's default for the optimizer)")
    elif r.optim.epsilon and r.optim.name in ("nag", "sgd"):
        problems.append(f"optim.epsilon is for adam, nadam, rmsprop, adadelta; {r.optim.name} takes none (remove it)")
    if len(r.data.mean) != 3 or len(r.data.std) != 3 or min(r.data.std) <= 0:
        problems.append("data.mean and data.std need 3 values each, std > 0")
    if len(r.distill.teacher_mean) not in (0, 3) or len(r.distill.teacher_std) not in (0, 3) \
            or min(r.distill.teacher_std, default=1) <= 0 \
            or bool(r.distill.teacher_mean) != bool(r.distill.teacher_std):
        problems.append("distill.teacher_mean and distill.teacher_std need 3 values each (std > 0), or both [] "
                        "for the student's data.mean / data.std")
    if r.optim.loss_scale not in ("none", "dynamic"):
        try:
            if float(r.optim.loss_scale) <= 0:
                raise ValueError
        except ValueError:
            problems.append("optim.loss_scale must be none, dynamic or a positive number such as \"128\"")
    if r.source.devices < 1:
        problems.append("source.devices must be at least 1 (the GPUs the paper's code split the batch over)")
    if r.system.device_batch < 0:
        problems.append("system.device_batch must be >= 0 (0: no cap)")
    if r.optim.lr < 0 or r.optim.wd < 0:
        problems.append("optim.lr and optim.wd must be >= 0")
    return problems


def _non_finite_floats(r) -> list[str]:
    """Every float field (and float list) must be a number: nan and inf pass every `<` test."""
    bad = []
    for sec_name, value in [("", r)] + [(f.name, getattr(r, f.name)) for f in dataclasses.fields(r)
                                        if dataclasses.is_dataclass(getattr(r, f.name))]:
        hints = typing.get_type_hints(type(value))
        for f in dataclasses.fields(value):
            v, key = getattr(value, f.name), f"{sec_name}.{f.name}".lstrip(".")
            if hints[f.name] is float and not math.isfinite(v) or \
                    hints[f.name] == list[float] and not all(math.isfinite(x) for x in v):
                bad.append(f"{key} must be a finite number, got {v!r}")
    return bad


# A run directory is <runs root>/<name>-<hash>, so a name is one path component. 200 bytes
# leave room for "-<16 hex>" and temporary prefixes under the usual 255-byte file-name limit.
NAME_MAX_BYTES = 200


def check_name(name: str, source: str) -> None:
    """A name that would put the run directory outside the runs root (probes 9.1, 9.2:
    "../../x", "/abs/x") or make an unprintable or too long file name is refused at load."""
    problem = ("is empty" if not name.strip() else
               "contains a path separator" if "/" in name or "\\" in name else
               "contains a control character" if not name.isprintable() else
               f"is longer than {NAME_MAX_BYTES} bytes" if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES
               else "")
    if problem:
        raise UserError(f"{source}: name '{shown(name)[:80]}' {problem}; the name becomes the run directory "
                        "<runs>/<name>-<hash>: use letters, digits, '-', '_' or '.'")
