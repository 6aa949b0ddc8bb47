"""Recipes are data: one TOML file per row of a published table.

A recipe file may `extends = "other.toml"` (a path relative to itself) and
override any field. Loading merges the chain, checks every key and type against
the dataclasses below, and returns a frozen `Recipe`. Nothing in a recipe is
ever executed: TOML is parsed as data by the standard library.

The defaults are the follow-up paper's CIFAR-100 baseline (its Table I): CIFAR
ResNet-56 v1, NAG lr 0.1 momentum 0.9 wd 1e-4, /10 at epochs 30/60/90, 120
epochs, batch 256, flip + colour + lighting + pad-crop augmentation.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gluon_tricks._compat import tomllib
from gluon_tricks.errors import UserError, shown

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# The kinds of mixing one batch can get (mixup.kind, mixup.choices, mixup.min_lambda_kinds).
MixKind = Literal["interpolation", "stitch_height", "stitch_width", "tile"]


@dataclass(frozen=True)
class DataSpec:
    dataset: Literal["cifar10", "cifar100", "cifar10-mini", "cifar100-mini", "imagefolder", "recordio"] = "cifar100"
    root: str = ""  # "" means $MXNET_HOME/datasets/<dataset> (for the -mini sets: README "Data")
    fine_labels: bool = True  # CIFAR-100 only: 100 fine classes, or the 20 coarse superclasses
    augment: Literal["followup", "gluoncv", "none", "bot"] = "followup"  # bot: the ImageNet-style path
    batch_size: int = 256  # global batch: split over every device and worker
    train_limit: int = 0  # keep only the first N training images (0 = all); for tests and demos
    test_limit: int = 0
    image_size: int = 32
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    # ImageNet-style path: validation resize of the shorter side; 0 = image_size * 256/224.
    val_resize: int = 0
    min_area: float = 0.08
    color_jitter: float = 0.4  # brightness/saturation/hue factors drawn from [1-j, 1+j]
    lighting_std: float = 0.1  # PCA lighting noise coefficient ~ N(0, lighting_std)


@dataclass(frozen=True)
class ModelSpec:
    name: str = "cifar_resnet56_v1"  # any GluonCV model-zoo classifier
    pretrained: bool = False  # start from the zoo's ImageNet weights (fine-tuning)
    init: Literal["xavier", "msra"] = "xavier"  # xavier: the papers' baseline
    zero_gamma: bool = False
    dtype: Literal["float32", "float16"] = "float32"  # float16: GPU only
    classes: int = 0  # 0: the dataset's number of classes


@dataclass(frozen=True)
class OptimSpec:
    name: Literal["nag", "sgd", "adam", "nadam", "adadelta", "rmsprop"] = "nag"
    lr: float = 0.1
    momentum: float = 0.9  # nag and sgd only
    wd: float = 1e-4
    no_bias_decay: bool = False
    linear_scaling: bool = False  # lr * batch_size / lr_reference_batch
    lr_reference_batch: int = 256
    loss_scale: str = "none"  # none | dynamic | a number such as "128" (float16 only)
    epsilon: float = 0.0  # adam, nadam, rmsprop, adadelta: 0 = MXNet's own default for that optimizer


@dataclass(frozen=True)
class ScheduleSpec:
    kind: Literal["step", "cosine", "poly", "constant"] = "step"
    decay_epochs: list[int] = field(default_factory=lambda: [30, 60, 90])  # step only
    decay_factor: float = 0.1  # step only
    power: float = 2.0  # poly only
    warmup_epochs: int = 0
    warmup_start_lr: float = 0.0
    final_lr: float = 0.0  # cosine and poly decay towards this
    # step only: where decay_epochs are counted from. "start": epochs of the whole run (Bag of
    # Tricks; GluonCV's ImageNet script subtracts the warm-up for this). "warmup_end": after the
    # warm-up, as GluonCV's LRSequential runs a step LRScheduler that the follow-up's code built.
    decay_from: Literal["start", "warmup_end"] = "start"
    # "iteration": a linear ramp from warmup_start_lr at every step (Bag of Tricks, GluonCV).
    # "epoch": lr * (i + 1) / warmup_epochs through epoch i, from lr / warmup_epochs (the
    # Food-101 tutorial's optimizer_step).
    warmup_every: Literal["iteration", "epoch"] = "iteration"
    # cosine and poly only: "iteration", the curve moves at every step (Bag of Tricks' "the
    # total number of batches is T"); "epoch", it moves once per epoch, as the Food-101
    # tutorial's "at epoch t, l_t = 1/2 (1 + cos(t pi / T)) l" with T epochs after the warm-up.
    decay_every: Literal["iteration", "epoch"] = "iteration"


@dataclass(frozen=True)
class SmoothingSpec:
    eps: float = 0.0  # 0 = hard one-hot targets
    # gluoncv: on 1-eps+eps/K, off eps/K; paper: on 1-eps, off eps/(K-1)
    form: Literal["gluoncv", "paper"] = "gluoncv"


@dataclass(frozen=True)
class MixupSpec:
    kind: Literal["none", MixKind, "random"] = "none"  # random: one of `choices` per batch
    alpha: float = 0.2  # lambda ~ Beta(alpha, alpha)
    # reversed: the follow-up's and GluonCV's code; random: Liang et al.
    partner: Literal["reversed", "random"] = "reversed"
    min_lambda: float = 0.0  # lambda below this means no mixing (the follow-up's stitch code used 0.1)
    # The kinds min_lambda applies to. The follow-up's code tested `lam < 0.1` in its stitch
    # branch only; its interpolation branch (and GluonCV's mixup) never did. So a recipe that
    # inherits min_lambda cannot silently unmix about a third of its interpolation batches
    # (P(lambda < 0.1) = 0.34 at alpha 0.2): it must list "interpolation" here to ask for it.
    min_lambda_kinds: list[str] = field(default_factory=lambda: ["stitch_height", "stitch_width"])
    label_weight: Literal["lambda", "area"] = "lambda"  # stitch labels mixed by lambda (the papers) or by the area cut
    choices: list[str] = field(default_factory=lambda: ["interpolation", "stitch_height", "stitch_width"])
    off_first_epochs: int = 0
    off_last_epochs: int = 0


@dataclass(frozen=True)
class DistillSpec:
    # "" = off; a zoo name (its default pretrained weights), a zoo name with a weights tag,
    # "<zoo name>:<first 8 hex digits of the weights' sha1>" (GluonCV's `pretrained='<tag>'`,
    # e.g. "resnet152_v1d:cfe0220d"), or a path to a .params file
    teacher: str = ""
    teacher_model: str = ""  # the teacher's zoo architecture when `teacher` is a .params file
    # The recipe whose trained run the .params `teacher` is exported from (teacher/train_teacher.sh,
    # recipes/proxy/regenerate.py), e.g. "teacher/resnext29_teacher.toml". Such a teacher is
    # identified by the path it is exported to, not by its bytes (see `teacher_identity`).
    teacher_recipe: str = ""
    temperature: float = 20.0
    soft_weight: float = 0.5  # w in (1-w)*CE(student, y) + w*T^2*KL(teacher_T || student_T)
    # The mean/std the teacher was trained with, applied to the (mixed) batch before the
    # teacher's forward; [] = the student's data.mean / data.std. GluonCV's CIFAR zoo models
    # were trained with CIFAR's own statistics (gluoncv.data.transforms.presets: 0.4914,
    # 0.4822, 0.4465 / 0.2023, 0.1994, 0.2010).
    teacher_mean: list[float] = field(default_factory=list)
    teacher_std: list[float] = field(default_factory=list)
    # "" = the student's dtype, as in the papers; "float16": the teacher's forward in float16
    # on GPUs (V100 tensor cores) for a float32 student, a deviation (docs/tricks.md)
    teacher_dtype: Literal["", "float16"] = ""


@dataclass(frozen=True)
class SourceSpec:
    """How the recipe's source (the paper's code) ran it: a fact to compare a run against, not
    a knob. Its devices split data.batch_size evenly, so each device's BatchNorm normalized over
    batch_size / devices images: the follow-up, the Food-101 tutorial and the teachers ran on one
    GPU (the whole batch), Bag of Tricks on 8 V100s (256 -> 32, 1024 -> 128 per GPU)."""
    devices: int = 1  # GPUs x machines


@dataclass(frozen=True)
class SystemSpec:
    """How and where to run: never part of a result's identity (see `content_hash`)."""
    ctx: str = "auto"  # auto (every GPU MXNet sees, else the CPU) | cpu | cpu:0,cpu:1 | gpu:0,...,gpu:7
    device_batch: int = 0  # most images one device holds per pass; more are accumulated (0: no cap)
    kvstore: Literal["device", "local", "nccl", "dist_sync", "dist_device_sync", "dist_async"] = "device"
    log_interval: int = 50  # progress refresh, in steps
    # A test-set pass after every N-th epoch and always after the last (the result is the last
    # epoch's row); the epochs between get top1/top5 null in metrics.jsonl. How often the test
    # set is read changes no weight, so it is not part of a result's identity.
    eval_every: int = 1
    keep_checkpoints: int = 2


@dataclass(frozen=True)
class Recipe:
    name: str = "baseline"
    description: str = ""
    seed: int = 0
    epochs: int = 120
    epochs_scale: float = 1.0  # set by `table --epochs-scale`; marks shortened runs
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    smoothing: SmoothingSpec = field(default_factory=SmoothingSpec)
    mixup: MixupSpec = field(default_factory=MixupSpec)
    distill: DistillSpec = field(default_factory=DistillSpec)
    source: SourceSpec = field(default_factory=SourceSpec)
    system: SystemSpec = field(default_factory=SystemSpec)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Allowed ranges of the numeric settings not checked one by one in `_check_semantics`:
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


def _out_of_range(r: "Recipe") -> list[str]:
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


ZOO_TAG = re.compile(r"[A-Za-z0-9_.\-]+:[0-9a-f]{8}")  # a GluonCV zoo name and a weights hashtag
MIX_KINDS = set(typing.get_args(MixKind))
# Sections that say how to run, not what to compute; `source` enters a run's identity only
# through the BatchNorm group it implies (see `content_hash`).
NOT_IDENTITY = {"name", "description", "system", "source"}


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Recipe)
    return {f.name: hints[f.name] for f in dataclasses.fields(Recipe) if dataclasses.is_dataclass(hints[f.name])}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value, tp, where: str):
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is Literal:  # one of a fixed set of words: the annotation is the list's only home
        allowed = typing.get_args(tp)
        if not isinstance(value, str):
            raise UserError(f"{where}: expected str, got {type(value).__name__} {value!r}")
        if value not in allowed:
            words = ", ".join(a or '""' for a in sorted(allowed))
            raise UserError(f"{where} = {value!r} is not one of: {words}")
        return value
    if origin is list:
        (elem,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list of {_type_name(elem)}, got {value!r}")
        return [_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise UserError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(raw: dict, source: str) -> Recipe:
    sections = _sections()
    hints = typing.get_type_hints(Recipe)
    top_keys = [f.name for f in dataclasses.fields(Recipe)]
    kwargs = {}
    for key, value in raw.items():
        if key == "extends":
            continue
        if key not in top_keys:
            raise UserError(f"{source}: unknown key '{key}'; valid keys: {', '.join(top_keys)}")
        if key in sections:
            cls = sections[key]
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{key}' must be a table like [{key}], got {value!r}")
            sub_hints = typing.get_type_hints(cls)
            names = [f.name for f in dataclasses.fields(cls)]
            sub = {}
            for k, v in value.items():
                if k not in names:
                    raise UserError(f"{source}: unknown key '{key}.{k}'; valid keys in [{key}]: {', '.join(names)}")
                sub[k] = _coerce(v, sub_hints[k], f"{source}: {key}.{k}")
            kwargs[key] = cls(**sub)
        else:
            kwargs[key] = _coerce(value, hints[key], f"{source}: {key}")
    recipe = Recipe(**kwargs)
    _check_semantics(recipe, source)
    _check_name(recipe.name, source)
    return recipe


def _check_semantics(r: Recipe, source: str) -> None:
    """Values that are well-typed but meaningless."""
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
    teacher = r.distill.teacher
    if ":" in teacher and not teacher.endswith(".params") and "/" not in teacher \
            and not ZOO_TAG.fullmatch(teacher):
        problems.append(f"distill.teacher = {teacher!r}: a zoo teacher with a weights tag is written "
                        "<zoo name>:<8 hex digits>, e.g. resnet152_v1d:cfe0220d")
    if r.distill.teacher_recipe and teacher_path(teacher) is None:
        problems.append(f"distill.teacher_recipe names the recipe a .params teacher file is exported from, but "
                        f"distill.teacher = {teacher!r} is not a .params file; remove teacher_recipe")
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
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))


def _non_finite_floats(r: Recipe) -> list[str]:
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


def _check_name(name: str, source: str) -> None:
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


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"recipe file not found: {shown(path)}; `gluon-tricks recipes` lists the shipped ones") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{shown(path)}: not valid TOML ({e})") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise UserError(f"{shown(path)}: cannot read recipe ({e.__class__.__name__})") from None
    except OSError as e:  # e.g. a name too long for the filesystem
        raise UserError(f"cannot read recipe {shown(path)[:200]}: {e.strerror}") from None


def _load_raw(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in chain + (path,))
        raise UserError(f"cyclic extends in recipes: {cycle}; remove one of the `extends` lines")
    raw = _read_toml(path)
    parent = raw.get("extends")
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise UserError(f"{shown(path)}: extends must be a file name string, got {parent!r}")
    if "\0" in parent:
        raise UserError(f"{shown(path)}: extends contains a NUL character: {shown(parent)[:200]}")
    try:
        base = _load_raw(path.parent / parent, chain + (path,))
    except UserError as e:
        if "cannot read recipe" in str(e) and "extends" not in str(e):  # say which recipe named it
            raise UserError(f"{e} (named by extends in {shown(path)})") from None
        raise
    return _merge(base, raw)


def parse_override(text: str) -> tuple[list[str], object]:
    """`optim.lr=0.2` -> (['optim', 'lr'], 0.2). Values are TOML; bare words are strings."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected key=value, e.g. --set optim.lr=0.2")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = dict(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {text!r}: '{k}' is not a section")
        node[keys[-1]] = value
    return raw


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    raw = _load_raw(path)
    raw = apply_overrides(raw, list(overrides))
    raw.setdefault("name", path.stem)
    return _build(raw, str(path))


def recipe_from_dict(raw: dict, source: str = "<dict>") -> Recipe:
    return _build(raw, source)


def with_changes(recipe: Recipe, overrides: list[str]) -> Recipe:
    return _build(apply_overrides(recipe.to_dict(), overrides), recipe.name)


def scaled_count(n: int, factor: float, keep: int = 0) -> int:
    """An epoch count times `factor`, rounded half up (`round` rounds half to even: 0.5 -> 0),
    and at least `keep`."""
    return max(keep, math.floor(n * factor + 0.5))


def scale_epochs(recipe: Recipe, factor: float) -> Recipe:
    """Shorten (or lengthen) every epoch count of a recipe by `factor`, keeping the
    schedule's shape: decay points, warm-up and mixup on/off windows scale together.

    What was there stays there (reliability-redteam-2 probe 1.11): a warm-up or a mixup-off
    window of at least one epoch survives, and every decay stays at epoch >= 1 and after the
    one before (scaled [2, 3] at 0.25 is [1, 2], never [0, 1]: a decay at epoch 0 would train
    the whole run at the decayed rate)."""
    if factor == 1.0:
        return recipe
    if not math.isfinite(factor) or factor <= 0:
        raise UserError(f"--epochs-scale must be > 0, got {factor}")
    d = recipe.to_dict()

    def kept(n):  # a window that existed keeps at least one epoch
        return scaled_count(n, factor, keep=1 if n > 0 else 0)

    decays = []
    for e in recipe.schedule.decay_epochs:
        decays.append(scaled_count(e, factor, keep=max(1, decays[-1] + 1 if decays else 1)))
    d["epochs"] = scaled_count(recipe.epochs, factor, keep=1)
    d["epochs_scale"] = recipe.epochs_scale * factor
    d["schedule"]["decay_epochs"] = decays
    d["schedule"]["warmup_epochs"] = kept(recipe.schedule.warmup_epochs)
    d["mixup"]["off_first_epochs"] = kept(recipe.mixup.off_first_epochs)
    d["mixup"]["off_last_epochs"] = kept(recipe.mixup.off_last_epochs)
    return _build(d, recipe.name)


# Identity design. A result is found by the hash of `identity(recipe)`, which keeps only the
# settings that (1) the recipe's own choices make the training use and (2) differ from the
# field's declared default:
# - (1) makes recipes that train the same thing share one result: a cosine or poly row ignores
#   `decay_epochs`, so the follow-up's "30/60/90" and "40/80" cosine rows are one training
#   (the paper's two numbers for it are two runs); mixup settings with mixup off, and so on.
# - (2) lets a key be added later without touching any existing result: give it the default
#   that reproduces the behaviour from before it existed, and every recipe that does not set it
#   keeps its hash. The price is that changing a default would now change the training of
#   every recipe relying on it under an unchanged hash, so tests/test_fidelity.py pins every
#   default against hand-written values: a default never changes without a test failing.
def _mix_kinds(m: dict) -> set[str]:
    if m["kind"] == "none":
        return set()
    return set(m["choices"]) if m["kind"] == "random" else {m["kind"]}


def unused_settings(recipe: Recipe) -> list[str]:
    """Keys (`section.key`) the recipe's other settings make irrelevant to its training."""
    return list(unused_with_reasons(recipe))


def unused_with_reasons(recipe: Recipe) -> dict[str, str]:
    """`unused_settings`, each with the setting that makes it irrelevant (for warnings)."""
    d = recipe.to_dict()
    s, m = d["schedule"], d["mixup"]
    out = {}

    def add(keys, why):
        for k in keys:
            out.setdefault(k, why)

    if s["kind"] != "step" or s["warmup_epochs"] == 0:
        # without a warm-up both counts start at epoch 0
        add(["schedule.decay_from"], "it matters only for a step schedule with a warm-up")
    if s["kind"] != "step":
        add(["schedule.decay_epochs", "schedule.decay_factor"], f'schedule.kind is "{s["kind"]}", not "step"')
    if s["kind"] != "poly":
        add(["schedule.power"], f'schedule.kind is "{s["kind"]}", not "poly"')
    if s["kind"] not in ("cosine", "poly"):
        add(["schedule.final_lr", "schedule.decay_every"], f'schedule.kind is "{s["kind"]}", not "cosine" or "poly"')
    if s["warmup_epochs"] == 0:
        add(["schedule.warmup_start_lr", "schedule.warmup_every"], "schedule.warmup_epochs is 0")
    elif s["warmup_every"] == "epoch":
        add(["schedule.warmup_start_lr"], 'schedule.warmup_every = "epoch" starts at lr / warmup_epochs')
    if d["smoothing"]["eps"] == 0:
        add(["smoothing.form"], "smoothing.eps is 0")  # both forms give the one-hot target at eps 0
    kinds = _mix_kinds(m)
    if not kinds:
        add([f"mixup.{k}" for k in m], 'mixup.kind is "none"')
    else:
        if m["kind"] != "random":
            add(["mixup.choices"], f'mixup.kind is "{m["kind"]}", not "random"')
        if not kinds & {"stitch_height", "stitch_width"}:
            add(["mixup.label_weight"], "no stitch kind is mixed")
        if m["min_lambda"] == 0 or not kinds & set(m["min_lambda_kinds"]):
            add(["mixup.min_lambda", "mixup.min_lambda_kinds"],
                "mixup.min_lambda is 0 or mixup.min_lambda_kinds lists none of the kinds mixed")
    if d["distill"]["teacher"] == "":
        add([f"distill.{k}" for k in d["distill"]], 'distill.teacher is ""')
    elif (d["distill"]["teacher_mean"], d["distill"]["teacher_std"]) == (d["data"]["mean"], d["data"]["std"]):
        add(["distill.teacher_mean", "distill.teacher_std"], "they equal data.mean / data.std (the default)")
    return out


def explicit_keys(path: str | Path, overrides: list[str] = ()) -> set[str]:
    """The `section.key`s a recipe file sets itself (not through `extends`) or --set sets."""
    raw = apply_overrides(_read_toml(Path(path)), list(overrides))
    return {f"{k}.{kk}" if isinstance(v, dict) else k for k, v in raw.items()
            for kk in (v if isinstance(v, dict) else [None])}


def run_warnings(recipe: Recipe, explicit: set[str] | None = None) -> list[str]:
    """What a recipe asks for but its training will not do: settings changed from their default
    (and set by the file itself or --set, when `explicit` is given) that its other settings
    make irrelevant (a resolved recipe.toml sets every key, mostly to defaults), a
    warm-up or a mixup window that does not fit the run, decays at or after its end.
    Warnings, not errors: `--epochs` shortens a run on purpose (reliability-redteam-2
    probes 4.10-4.13, 4.25)."""
    values, defaults = recipe.to_dict(), Recipe().to_dict()
    out = []
    for key, why in unused_with_reasons(recipe).items():
        section, name = key.split(".")
        if values[section][name] != defaults[section][name] and (explicit is None or key in explicit):
            out.append(f"{key} = {values[section][name]!r} has no effect: {why}")
    s, epochs = recipe.schedule, recipe.epochs
    if s.warmup_epochs >= epochs:
        out.append(f"schedule.warmup_epochs = {s.warmup_epochs} covers the whole {epochs}-epoch run: "
                   "the rate never leaves the warm-up")
    if s.kind == "step":
        start = s.warmup_epochs if s.decay_from == "warmup_end" else 0
        late = [e for e in s.decay_epochs if e + start >= epochs]
        if late:
            out.append(f"schedule.decay_epochs {late} fall at or after the end of the {epochs}-epoch run "
                       "(never reached)")
    m = recipe.mixup
    if _mix_kinds(values["mixup"]) and m.off_first_epochs + m.off_last_epochs >= epochs:
        out.append(f"mixup.off_first_epochs = {m.off_first_epochs} and off_last_epochs = {m.off_last_epochs} "
                   f"leave no epoch of the {epochs}-epoch run to mix in")
    return out


def teacher_path(source: str) -> Path | None:
    """The .params file a `distill.teacher` names (as given, or relative to the project,
    where recipes name teacher/... files), or None when it names zoo weights."""
    if not (source.endswith(".params") or os.sep in source or Path(source).exists()):
        return None
    path = Path(source)
    project_path = Path(__file__).resolve().parent.parent / source
    if not path.is_absolute() and not path.exists() and project_path.exists():
        path = project_path
    return path


_FILE_DIGESTS: dict = {}


def _file_sha256(path: Path) -> str:
    """SHA-256 of a file, computed once per file version and process (teachers are large)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        from gluon_tricks.atomic import sha256_file

        _FILE_DIGESTS[key] = sha256_file(path)
    return _FILE_DIGESTS[key]


def teacher_identity(distill: dict) -> str:
    """What a student's result depends on in `distill.teacher`: the weights themselves.

    - a zoo name with a tag: the tag is a digest of GluonCV's published file already;
    - a zoo name alone: the tag of the zoo's current weights (so a GluonCV release that
      publishes new weights gives a new identity);
    - a .params file: "sha256:<its digest>", so replacing the file gives a new identity and an
      old result is never reused (a moved or renamed copy keeps its results); "missing:<path>"
      while the file does not exist;
    - a .params file exported from a recipe's run (`teacher_recipe`): the path, as given.
      Its bytes cannot be part of the identity: they do not exist before that recipe trains
      (a fresh clone has none, yet a table must find its committed rows), and the committed
      proxy results (recipes/proxy/distill.toml) were trained under this identity from teacher
      files whose bytes were never recorded (runs/ is not committed), so they cannot be
      re-keyed by content without retraining. Retraining such a teacher into the same path
      does not retrain its students: pass --overwrite, or export to a new path.
    """
    source = distill["teacher"]
    path = teacher_path(source)
    if path is None:
        if ZOO_TAG.fullmatch(source):
            return source
        from gluoncv.model_zoo import model_store  # deferred: only zoo-name teachers need GluonCV

        try:
            return f"{source}:{model_store.short_hash(source)}"
        except ValueError:
            return source  # no published weights: loading it says so
    if distill["teacher_recipe"]:
        return source
    if not path.is_file():
        # No result can have been trained from a file that is not there (loading it is refused),
        # so this names none: its rows show "not run", and training one says the file is missing.
        return f"missing:{source}"
    return f"sha256:{_file_sha256(path)}"


def _dataset_classes(data: dict) -> int | None:
    """Classes a dataset's labels take, where the recipe alone says so."""
    if data["dataset"] in ("cifar100", "cifar100-mini"):
        return 100 if data["fine_labels"] else 20
    return {"cifar10": 10, "cifar10-mini": 10}.get(data["dataset"])


def identity(recipe: Recipe) -> dict:
    """What a result depends on: the used, non-default settings, but not names or how/where it
    ran (see the design note above)."""
    values, defaults = recipe.to_dict(), Recipe().to_dict()
    for key in unused_settings(recipe):
        section, name = key.split(".")
        values[section][name] = defaults[section][name]
    if values["model"]["classes"] == _dataset_classes(values["data"]):
        values["model"]["classes"] = defaults["model"]["classes"]  # an explicit head of the dataset's size
    if recipe.distill.teacher:
        values["distill"]["teacher"] = teacher_identity(values["distill"])
        # where a teacher came from is not what it is: teacher_identity has used it
        values["distill"]["teacher_recipe"] = defaults["distill"]["teacher_recipe"]
    if values["distill"]["teacher_dtype"] == values["model"]["dtype"]:
        values["distill"]["teacher_dtype"] = defaults["distill"]["teacher_dtype"]  # the student's, said twice
    out = {}
    for k, v in values.items():
        if k in NOT_IDENTITY:
            continue
        if isinstance(v, dict):
            changed = {kk: vv for kk, vv in v.items() if vv != defaults[k][kk]}
            if changed:
                out[k] = changed
        elif v != defaults[k]:
            out[k] = v
    return out


def source_bn_group(recipe: Recipe) -> float:
    """Images per BatchNorm group in the recipe's source: its batch over its devices."""
    return recipe.data.batch_size / recipe.source.devices


def content_hash(recipe: Recipe, bn_group: int | None = None) -> str:
    """Results are found by this hash: renaming a file keeps its result, and any
    change of a hyperparameter the training uses gives a new hash, so a stale result
    is never reused.

    `bn_group` is the images one device's forward pass (its BatchNorm) sees in the run
    (devices.Layout): when it differs from the source's (`source_bn_group`), e.g. a follow-up
    row spread over 8 GPUs (32 instead of 256), the run is another training and gets
    another hash. A faithful run (or None: the recipe as its source ran it) keeps the hash
    the recipe had before layouts were part of identity, so committed results stay found.
    One consequence: two recipes that differ only in source.devices share the hash of their
    faithful runs; source.devices is a fact about a paper, set once per paper."""
    values = identity(recipe)
    if bn_group is not None and bn_group != source_bn_group(recipe):
        values["bn_group"] = bn_group
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML (written into each run directory)."""

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        raise TypeError(v)

    d = recipe.to_dict()
    lines = [f"{k} = {val(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {val(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def valid_keys() -> list[str]:
    out = []
    for name, cls in _sections().items():
        out += [f"{name}.{f.name}" for f in dataclasses.fields(cls)]
    return out
