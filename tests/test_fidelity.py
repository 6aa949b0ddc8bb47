"""Each row trains what printed its number: resolved recipes against the sources' behaviour.

The truths come from outside the project: the follow-up's code at the commits whose printed
training logs end on the published numbers, GluonCV's scheduler and scripts, and the Bag of
Tricks text (shared/papers/fidelity-audit.md gives every source). Each test resolves the
shipped recipes the way a table does and compares what the training would do.
"""
import dataclasses
import hashlib
import math

import numpy as np
import pytest
from scipy import stats

from gluon_tricks.cli import recipes_root
from gluon_tricks.recipe import Recipe, content_hash, identity, load_recipe
from gluon_tricks.tables import load_table, row_recipes, table_names
from gluon_tricks.tricks import mixing
from gluon_tricks.tricks.smoothing import smooth_targets

ROOT = recipes_root()
TEACHER = ROOT.parent / "teacher"


def recipe(path: str, sets=()):
    return load_recipe(ROOT / path, list(sets))


def followup_rows(fine: bool | None = None):
    """(table, label, resolved recipe) for every follow-up table row that trains."""
    out = []
    for name in table_names(ROOT):
        if not name.startswith("followup/") or (fine is not None and name.endswith("-fine") != fine):
            continue
        for row in load_table(ROOT, name).rows:
            for r in row_recipes(row, 1, 1.0):
                out.append((name, row.label, r))
    return out


def unmixed_fraction(r, batches: int = 4000) -> float:
    """Share of batches a recipe's mixer leaves unmixed while mixup is switched on."""
    mixer = mixing.Mixer(r.mixup, r.epochs)
    epoch = r.mixup.off_first_epochs  # an epoch where mixing is active
    assert mixer.active(epoch)
    rng = np.random.default_rng(0)
    unmixed = 0
    for _ in range(batches):
        plan = mixer.plan(8, 4, 4, epoch, rng)
        unmixed += plan.lam == 1.0
    return unmixed / batches


# --- F1: "lambda < 0.1 means no mixing" belongs to the stitch branch only -----------------

def test_interpolation_rows_never_skip_a_mix_as_the_followup_code():
    # the follow-up's interpolation branch has no `lam < 0.1` test: no batch is skipped (a
    # Beta(0.2, 0.2) draw rounds to exactly 1.0 about once in 1,500 batches, hence < 1%)
    rows = [(t, label, r) for t, label, r in followup_rows() if r.mixup.kind == "interpolation"]
    assert len(rows) >= 10  # table3 mixup/distill, table5 interp rows, the text rows, fine twins
    for table, label, r in rows:
        assert unmixed_fraction(r, 1500) < 0.01, (table, label)


def test_stitch_rows_skip_lambda_below_0_1_as_the_followup_code():
    # the stitch branch did: P(lambda < 0.1) under Beta(0.2, 0.2), from scipy
    expected = stats.beta.cdf(0.1, 0.2, 0.2)
    assert expected == pytest.approx(0.34, abs=0.01)
    r = recipe("followup/table5/stitch-height.toml")
    assert unmixed_fraction(r) == pytest.approx(expected, abs=0.025)
    for path in ("stitch-width.toml", "stitch-height-distill.toml", "stitch-width-distill.toml"):
        assert recipe("followup/table5/" + path).mixup.min_lambda == 0.1


def test_an_inherited_min_lambda_does_not_reach_interpolation():
    # a row that extends a stitch recipe but switches to interpolation keeps every mix
    r = recipe("followup/table5/stitch-height.toml", ["mixup.kind=interpolation"])
    assert r.mixup.min_lambda == 0.1 and unmixed_fraction(r, 1500) < 0.01
    asked = recipe("followup/table5/stitch-height.toml",
                   ["mixup.kind=interpolation", 'mixup.min_lambda_kinds=["interpolation"]'])
    assert unmixed_fraction(asked) > 0.3


# --- F2: faithful coarse rows keep the 100-way head and K = 100 smoothing -----------------

def head_classes(r) -> int:
    """The engine's rule (data/__init__.py): model.classes, else the labels' class count."""
    assert r.data.dataset == "cifar100"
    return r.model.classes or (100 if r.data.fine_labels else 20)


def test_coarse_rows_and_teacher_build_a_100_way_head_and_smooth_with_k_100():
    coarse = [(t, label, r) for t, label, r in followup_rows(fine=False) if r.data.dataset == "cifar100"]
    coarse += [("teacher", p.name, load_recipe(p)) for p in TEACHER.glob("resnext29_teacher.toml")]
    assert len(coarse) >= 30 and all(not r.data.fine_labels for _, _, r in coarse)
    for table, label, r in coarse:
        assert head_classes(r) == 100, (table, label)
    # the notebook at 19e0afb prints a smoothed coarse target: on 0.901, off 0.001 over 100 entries
    r = recipe("followup/table3/smoothing.toml")
    target = smooth_targets(np.array([7]), head_classes(r), r.smoothing.eps, r.smoothing.form)[0]
    assert target.shape == (100,) and target[7] == pytest.approx(0.901) and target[0] == pytest.approx(0.001)


def test_fine_twins_keep_100_classes_and_share_the_fine_baseline_result():
    assert all(head_classes(r) == 100 for _, _, r in followup_rows(fine=True) if r.data.dataset == "cifar100")
    twin = recipe("followup/faithful.toml", ["data.fine_labels=true"])
    assert content_hash(twin) == content_hash(recipe("followup/baseline.toml"))


# --- Identity -----------------------------------------------------------------------------

# Every default, written by hand. Identity leaves out settings equal to their default, so a
# changed default would change trainings under unchanged hashes: this pins them. A new key
# goes here with the value that reproduces the behaviour from before it existed.
PINNED_DEFAULTS = {
    "name": "baseline", "description": "", "seed": 0, "epochs": 120, "epochs_scale": 1.0,
    "data": {"dataset": "cifar100", "root": "", "fine_labels": True, "augment": "followup", "batch_size": 256,
             "train_limit": 0, "test_limit": 0, "image_size": 32, "mean": [0.485, 0.456, 0.406],
             "std": [0.229, 0.224, 0.225], "val_resize": 0, "min_area": 0.08, "color_jitter": 0.4,
             "lighting_std": 0.1},
    "model": {"name": "cifar_resnet56_v1", "pretrained": False, "init": "xavier", "zero_gamma": False,
              "dtype": "float32", "classes": 0},
    "optim": {"name": "nag", "lr": 0.1, "momentum": 0.9, "wd": 1e-4, "no_bias_decay": False,
              "linear_scaling": False, "lr_reference_batch": 256, "loss_scale": "none", "epsilon": 0.0},
    "schedule": {"kind": "step", "decay_epochs": [30, 60, 90], "decay_factor": 0.1, "power": 2.0,
                 "warmup_epochs": 0, "warmup_start_lr": 0.0, "final_lr": 0.0, "decay_from": "start"},
    "smoothing": {"eps": 0.0, "form": "gluoncv"},
    "mixup": {"kind": "none", "alpha": 0.2, "partner": "reversed", "min_lambda": 0.0,
              "min_lambda_kinds": ["stitch_height", "stitch_width"], "label_weight": "lambda",
              "choices": ["interpolation", "stitch_height", "stitch_width"], "off_first_epochs": 0,
              "off_last_epochs": 0},
    "distill": {"teacher": "", "teacher_model": "", "temperature": 20.0, "soft_weight": 0.5},
}


def test_every_identity_default_is_pinned():
    defaults = Recipe().to_dict()
    for section, value in defaults.items():
        if section == "system":
            continue  # never part of identity
        if not isinstance(value, dict):
            assert PINNED_DEFAULTS.get(section, "unpinned") == value, section
            continue
        for key, v in value.items():
            assert key in PINNED_DEFAULTS[section], (
                f"{section}.{key} is new: pin its default here, the value that reproduces the old behaviour")
            assert PINNED_DEFAULTS[section][key] == v, f"{section}.{key}: a default changed"


def test_the_default_recipe_has_an_empty_identity():
    # so a key added at its default leaves every hash as it was: sha256 of the JSON "{}"
    assert identity(Recipe()) == {}
    assert content_hash(Recipe()) == hashlib.sha256(b"{}").hexdigest()[:16]


def test_a_key_added_at_its_default_keeps_every_shipped_hash(monkeypatch):
    rows = followup_rows(fine=False)[:12]
    before = [content_hash(r) for _, _, r in rows]
    plain = Recipe.to_dict

    def with_future_key(self):
        d = plain(self)
        d["optim"]["future_key"] = d["optim"].get("future_key", 7)  # every recipe at the default
        return d

    monkeypatch.setattr(Recipe, "to_dict", with_future_key)
    assert [content_hash(r) for _, _, r in rows] == before


def test_identity_of_a_row_is_its_used_non_default_settings():
    # written by hand from the follow-up's Table III cosine row
    assert identity(recipe("followup/table3/cosine.toml")) == {
        "data": {"fine_labels": False}, "model": {"classes": 100},
        "schedule": {"kind": "cosine", "warmup_epochs": 5}}


def test_table4_rows_that_train_the_same_share_one_result():
    t4 = {row.label: row_recipes(row, 1, 1.0)[0] for row in load_table(ROOT, "followup/table4").rows}
    for kind in ("poly", "cosine"):
        for warm in (5, 20):
            a = t4[f"{kind} decay, 30/60/90, {warm}-epoch warm-up"]
            b = t4[f"{kind} decay, 40/80, {warm}-epoch warm-up"]
            assert content_hash(a) == content_hash(b), (kind, warm)
    for warm in (5, 20):
        assert content_hash(t4[f"step decay, 30/60/90, {warm}-epoch warm-up"]) != \
            content_hash(t4[f"step decay, 40/80, {warm}-epoch warm-up"])


def test_identity_keeps_what_the_training_uses():
    base = recipe("followup/table3/smoothing.toml")
    for change in ("schedule.warmup_epochs=6", "smoothing.eps=0.2", "smoothing.form=paper", "model.classes=20",
                   "optim.lr=0.2", "mixup.kind=interpolation"):
        assert content_hash(recipe("followup/table3/smoothing.toml", [change])) != content_hash(base), change
    stitch = recipe("followup/table5/stitch-height.toml")
    for change in ("mixup.min_lambda=0.2", "mixup.label_weight=area", 'mixup.min_lambda_kinds=["stitch_width"]'):
        assert content_hash(recipe("followup/table5/stitch-height.toml", [change])) != content_hash(stitch), change
    step = recipe("followup/table4/step-306090-w5.toml")
    assert content_hash(recipe("followup/table4/step-306090-w5.toml", ["schedule.decay_from=warmup_end",
                                                                         "schedule.decay_epochs=[30,60,90]"])) \
        != content_hash(recipe("followup/table4/step-306090-w5.toml", ["schedule.decay_from=start",
                                                                        "schedule.decay_epochs=[30,60,90]"]))
    assert step.schedule.kind == "step"


def test_identity_drops_what_the_training_ignores():
    base = recipe("followup/table3/smoothing.toml")  # cosine, no mixup, no teacher
    for change in ("schedule.decay_epochs=[40,80]", "schedule.decay_factor=0.5", "schedule.power=3.0",
                   "schedule.decay_from=warmup_end", "mixup.alpha=0.4", "mixup.min_lambda=0.1",
                   "distill.temperature=4.0", "system.ctx=cpu:0,cpu:1"):
        assert content_hash(recipe("followup/table3/smoothing.toml", [change])) == content_hash(base), change
    assert content_hash(recipe("followup/baseline.toml", ["smoothing.form=paper"])) == \
        content_hash(recipe("followup/baseline.toml"))  # eps 0: both forms are the one-hot target
