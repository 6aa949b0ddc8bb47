"""A recipe's identity: the settings its training uses, and the content hash results are found by.

A result is looked up by `content_hash(recipe)` (results.find_result), so renaming a recipe
file keeps its result and changing anything its training uses gives a new one. `run_warnings`
reads the same facts to tell a user which of their settings have no effect.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gluon_tricks.recipe import Recipe, parse_teacher

# Sections that say how to run, not what to compute; `source` enters a run's identity only
# through the BatchNorm group it implies (see `content_hash`).
NOT_IDENTITY = {"name", "description", "system", "source"}


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
    parsed = parse_teacher(source)
    path = parsed.path
    if path is None:
        if parsed.tag:
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
