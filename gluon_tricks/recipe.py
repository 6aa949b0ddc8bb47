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
from gluon_tricks.recipe_rules import MixKind, check_name, value_problems

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


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
    # e.g. "resnet152_v1d:cfe0220d"), or a path to a .params file (read by `parse_teacher`)
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
    problems = value_problems(recipe) + _teacher_problems(recipe.distill)
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))
    check_name(recipe.name, source)
    return recipe


def _teacher_problems(d: DistillSpec) -> list[str]:
    try:
        source = parse_teacher(d.teacher) if d.teacher else None
    except UserError as e:
        return [f"distill.teacher = {e}"]
    if d.teacher_recipe and (source is None or source.path is None):
        return [f"distill.teacher_recipe names the recipe a .params teacher file is exported from, but "
                f"distill.teacher = {d.teacher!r} is not a .params file; remove teacher_recipe"]
    return []


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


def explicit_keys(path: str | Path, overrides: list[str] = ()) -> set[str]:
    """The `section.key`s a recipe file sets itself (not through `extends`) or --set sets."""
    raw = apply_overrides(_read_toml(Path(path)), list(overrides))
    return {f"{k}.{kk}" if isinstance(v, dict) else k for k, v in raw.items()
            for kk in (v if isinstance(v, dict) else [None])}


# A GluonCV zoo name and the short hash (first 8 hex digits of the SHA-1) of one published
# version of its weights: what `get_model(name, pretrained='<tag>')` loads.
ZOO_TAG = re.compile(r"[A-Za-z0-9_.\-]+:[0-9a-f]{8}")


@dataclass(frozen=True)
class TeacherSource:
    """What a `distill.teacher` (or zoo-weights) text names: a .params file, or a zoo network's
    published weights, one version (`tag`) or the zoo's current one (None)."""
    path: Path | None = None
    zoo_name: str = ""
    tag: str | None = None


def parse_teacher(text: str) -> TeacherSource:
    """The one reading of a teacher source. A file: ends in .params, holds a path separator or
    exists (a relative path is also looked up under the project, where recipes name teacher/...
    files). Else zoo weights: `name` or `name:tag` (ZOO_TAG); any other tag is a UserError."""
    if text.endswith(".params") or os.sep in text or Path(text).exists():
        path = Path(text)
        project_path = Path(__file__).resolve().parent.parent / text
        if not path.is_absolute() and not path.exists() and project_path.exists():
            path = project_path
        return TeacherSource(path=path)
    name, sep, tag = text.partition(":")
    if sep and not ZOO_TAG.fullmatch(text):
        raise UserError(f"{text!r}: zoo weights with a tag are written <zoo name>:<8 hex digits>, GluonCV's "
                        "hexadecimal short hash of one published version (e.g. resnet152_v1d:cfe0220d), or as "
                        "the name alone for the zoo's current weights")
    return TeacherSource(zoo_name=name, tag=tag if sep else None)


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
