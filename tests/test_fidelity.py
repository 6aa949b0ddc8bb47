"""Each row trains what printed its number: resolved recipes against the sources' behaviour.

The truths come from outside the project: the follow-up's code at the commits whose printed
training logs end on the published numbers, GluonCV's scheduler and scripts, and the Bag of
Tricks text (shared/papers/fidelity-audit.md gives every source). Each test resolves the
shipped recipes the way a table does and compares what the training would do.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest
from scipy import stats

from seams import recipes_root
from gluon_tricks.identity import content_hash, identity
from gluon_tricks.recipe import Recipe, load_recipe
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
                 "warmup_epochs": 0, "warmup_start_lr": 0.0, "final_lr": 0.0, "decay_from": "start",
                 "warmup_every": "iteration", "decay_every": "iteration"},
    "smoothing": {"eps": 0.0, "form": "gluoncv"},
    "mixup": {"kind": "none", "alpha": 0.2, "partner": "reversed", "min_lambda": 0.0,
              "min_lambda_kinds": ["stitch_height", "stitch_width"], "label_weight": "lambda",
              "choices": ["interpolation", "stitch_height", "stitch_width"], "off_first_epochs": 0,
              "off_last_epochs": 0},
    "distill": {"teacher": "", "teacher_model": "", "teacher_recipe": "", "temperature": 20.0, "soft_weight": 0.5,
                "teacher_mean": [], "teacher_std": [], "teacher_dtype": ""},
    "source": {"devices": 1},  # the follow-up's one GPU: the whole batch is one BatchNorm group
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


# --- F3: Table II as its code ran: no decay, wd 0, Nadam batch 128, Adam epsilon 1e-7 -----

def lr_per_epoch(r, iters_per_epoch: int = 4) -> list[float]:
    from gluon_tricks.tricks.schedules import lr_curve

    return lr_curve(r, iters_per_epoch)[::iters_per_epoch]


def test_table2_adaptive_optimizers_as_their_code_ran():
    import mxnet as mx

    from gluon_tricks.tricks.optim import make_optimizer

    rows = {row.label: row_recipes(row, 1, 1.0)[0] for row in load_table(ROOT, "followup/table2").rows}
    # the optimizer scripts at HEAD: decay commented out, no wd passed (MXNet's 0), lr 1e-3
    source = {"Adam": (1e-3, 256, 1e-7), "Nadam": (1e-3, 128, 1e-8), "RMSProp": (1e-3, 256, 1e-8),
              "Adadelta": (None, 256, 1e-5)}
    for label, (lr, batch, eps) in source.items():
        r = rows[label]
        lrs = lr_per_epoch(r)
        assert len(lrs) == (101 if label == "Nadam" else 120) and len(set(lrs)) == 1, label  # Nadam: N1 below
        assert r.data.batch_size == batch, label
        name, params = make_optimizer(r, None, 4)  # no net: no_bias_decay is off
        opt = mx.optimizer.create(name, **params)
        assert opt.wd == 0.0 and opt.epsilon == pytest.approx(eps, rel=1e-12), label
        if lr is not None:
            assert lrs[0] == lr, label


def test_epsilon_is_refused_where_mxnet_has_none(tmp_path):
    from gluon_tricks.errors import UserError

    with pytest.raises(UserError, match="optim.epsilon is for adam"):
        recipe("followup/baseline.toml", ["optim.epsilon=1e-7"])


# --- F4: Table IV step rows decay where GluonCV's LRSequential decayed --------------------

@pytest.mark.parametrize("steps,warm,drops", [([30, 60, 90], 5, [35, 65, 95]), ([30, 60, 90], 20, [50, 80, 110]),
                                              ([40, 80], 5, [45, 85]), ([40, 80], 20, [60, 100])])
def test_table4_step_rows_follow_gluoncv_lrsequential_point_by_point(steps, warm, drops):
    from gluoncv.utils import LRScheduler, LRSequential

    from gluon_tricks.tricks.schedules import lr_curve

    r = recipe(f"followup/table4/step-{''.join(map(str, steps))}-w{warm}.toml")
    n, epochs, lr = 3, r.epochs, r.optim.lr
    # the follow-up's construction: linear warm-up, then a step scheduler over the remaining epochs
    gcv = LRSequential([LRScheduler("linear", base_lr=0, target_lr=lr, nepochs=warm, iters_per_epoch=n),
                        LRScheduler("step", base_lr=lr, nepochs=epochs - warm, iters_per_epoch=n,
                                    step_epoch=steps + [math.inf], step_factor=0.1)])
    ours = lr_curve(r, n)
    theirs = [gcv(t) for t in range(epochs * n)]
    assert len(ours) == len(theirs) == epochs * n
    warm_iters = warm * n
    # after the warm-up: identical at every iteration
    assert ours[warm_iters:] == pytest.approx(theirs[warm_iters:], rel=1e-12, abs=1e-15)
    # during it: GluonCV divides by niters - 1, so at most one increment apart (schedules.py)
    assert max(abs(a - b) for a, b in zip(ours[:warm_iters], theirs[:warm_iters])) <= lr / (warm_iters - 1) + 1e-12
    per_epoch = ours[::n]
    assert [e for e in range(1, epochs) if per_epoch[e] < per_epoch[e - 1]] == drops


def test_decay_from_start_is_gluoncv_imagenet_scripts_absolute_epochs():
    # train_imagenet.py subtracts the warm-up from each decay epoch before its LRSequential,
    # so Bag of Tricks' rows decay at 30/60/90 of the whole run
    from gluoncv.utils import LRScheduler, LRSequential

    from gluon_tricks.tricks.schedules import lr_curve

    r = load_recipe(ROOT / "bot/table4/warmup.toml")
    assert r.schedule.kind == "step" and r.schedule.decay_from == "start" and r.schedule.warmup_epochs == 5
    n, warm = 2, r.schedule.warmup_epochs
    gcv = LRSequential([LRScheduler("linear", base_lr=0, target_lr=r.optim.lr, nepochs=warm, iters_per_epoch=n),
                        LRScheduler("step", base_lr=r.optim.lr, nepochs=r.epochs - warm, iters_per_epoch=n,
                                    step_epoch=[e - warm for e in r.schedule.decay_epochs], step_factor=0.1)])
    ours = lr_curve(r, n)
    assert ours[warm * n:] == pytest.approx([gcv(t) for t in range(warm * n, r.epochs * n)], rel=1e-12)


# --- F5, F6: the batch sizes and model of the runs that printed the numbers ---------------

def test_table5_stitch_batches_are_the_printed_runs():
    # 049a4dc (79.50 / 95.64, no distillation): batch 256; b2d883c (81.42 / 95.96, distilled): 128
    t5 = {row.label: row_recipes(row, 1, 1.0)[0] for row in load_table(ROOT, "followup/table5").rows}
    assert t5["Vert. Spatial Mixup (as run: top/bottom seam)"].data.batch_size == 256
    assert t5["Vert. Spatial Mixup w/ Distill. (as run)"].data.batch_size == 128


def test_resnet110_candidate_is_the_v2_run_at_batch_256():
    # scripts/cifar100_resnet110_v2.ipynb at 6edeaa8 printed 79.36 / 95.02
    r = recipe("followup/other/resnet110-teacher.toml")
    assert (r.model.name, r.data.batch_size, r.epochs, r.schedule.warmup_epochs, r.schedule.kind,
            r.smoothing.eps) == ("cifar_resnet110_v2", 256, 120, 20, "cosine", 0.1)


# --- F7: "mixup off" as the code ran it: the last N epochs -------------------------------

def test_a_row_switches_mixup_off_for_the_last_20_epochs_with_a_20_epoch_warmup():
    rows = [r for t, _, r in followup_rows(fine=False) if t == "followup/other"]
    code = [r for r in rows if r.mixup.off_last_epochs == 20]
    assert len(code) == 1
    r = code[0]
    mixer = mixing.Mixer(r.mixup, r.epochs)
    # the follow-up / GluonCV rule: lam = 1 when epoch >= epochs - mixup_off_epochs
    assert [mixer.active(e) for e in range(r.epochs)] == [e < r.epochs - 20 for e in range(r.epochs)]
    assert r.schedule.warmup_epochs == 20


# --- F8: the "distill w/o mixup" teacher is GluonCV's non-mixup ResNet-152-D --------------

def test_bot_teachers_are_the_zoo_tags_the_paper_describes():
    from gluoncv.model_zoo.model_store import short_hash

    t6 = load_table(ROOT, "bot/table6")
    teachers = {row.label: row_recipes(row, 1, 1.0)[0].distill.teacher for row in t6.rows if "+ distill" in row.label}
    assert len(teachers) == 6
    # GluonCV's ResNet.csv: tag cfe0220d is ResNet-152-D with cosine + label smoothing (80.26 / 95.00);
    # its default weights (resnet152_v1d-mixup.sh, 80.61 / 95.34) are the mixup teacher
    default_tag = short_hash("resnet152_v1d")
    assert default_tag == "cddbc86f"
    for label, teacher in teachers.items():
        expected = f"resnet152_v1d:{default_tag}" if "w/ mixup" in label else "resnet152_v1d:cfe0220d"
        assert teacher == expected, label


def test_a_teacher_tag_must_be_eight_hex_digits(tmp_path):
    from gluon_tricks.errors import UserError

    assert recipe("bot/table6/distill.toml", ['distill.teacher="mobilenet1.0:0123abcd"']).distill.teacher
    for bad in ("resnet152_v1d:cfe022", "resnet152_v1d:CFE0220D", "resnet152_v1d:", ":cfe0220d"):
        with pytest.raises(UserError, match=r"<zoo name>:<8 hex digits>"):
            recipe("bot/table6/distill.toml", [f'distill.teacher="{bad}"'])


# --- F9: Bag of Tricks' exact normalization ----------------------------------------------

def test_bot_rows_normalize_with_the_papers_pixel_constants():
    # Bag of Tricks Sec. 2 and GluonCV's train_imagenet.py; the iterator multiplies by 255
    rows = [r for name in table_names(ROOT) if name.startswith("bot/")
            for row in load_table(ROOT, name).rows for r in row_recipes(row, 1, 1.0)]
    assert len(rows) >= 30
    for r in rows:
        assert [m * 255 for m in r.data.mean] == pytest.approx([123.68, 116.779, 103.939], abs=1e-9), r.name
        assert [s * 255 for s in r.data.std] == pytest.approx([58.393, 57.12, 57.375], abs=1e-9), r.name


# --- F10: Food-101 values the tutorial never gives are marked chosen; its teacher; warm-up --

def test_food101_values_the_tutorial_does_not_give_are_marked_chosen():
    from gluon_tricks._compat import tomllib

    unsourced = {("smoothing", "eps"), ("mixup", "alpha"), ("distill", "temperature"), ("distill", "soft_weight"),
                 ("distill", "teacher_model")}
    files = sorted((ROOT / "food101").rglob("*.toml")) + [TEACHER / "food101_resnet50_teacher.toml"]
    checked = 0
    for p in files:
        if p.name == "table.toml":
            continue
        raw = tomllib.loads(p.read_text())
        comments = " ".join(line for line in p.read_text().splitlines() if line.lstrip().startswith("#"))
        for section, key in unsourced:
            if key in raw.get(section, {}):
                checked += 1
                assert "chosen" in comments.lower(), (p.name, section, key)
    assert checked >= 8


def test_food101_warmup_is_the_tutorials_per_epoch_ramp():
    from gluon_tricks.tricks.schedules import lr_curve

    n = 5
    r = recipe("food101/table8/warmup.toml")
    curve = lr_curve(r, n)
    # the tutorial: lr * (epoch + 1) / 6 while epoch < 6, then 1e-4, 1e-5 from 15, 1e-6 from 30
    for epoch in range(r.epochs):
        if epoch < 6:
            want = 1e-4 * (epoch + 1) / 6
        else:
            want = 1e-4 * 0.1 ** ((epoch >= 15) + (epoch >= 30))
        assert curve[epoch * n:(epoch + 1) * n] == pytest.approx([want] * n, rel=1e-12), epoch


def test_food101_teacher_recipe_trains_what_the_distillation_rows_load():
    t = load_recipe(TEACHER / "food101_resnet50_teacher.toml")
    student = recipe("food101/table8/distill.toml")
    assert t.model.name == student.distill.teacher_model and t.model.pretrained
    # the tutorial: the teacher used label smoothing, cosine annealing and linear warm-up
    assert (t.schedule.kind, t.schedule.warmup_epochs > 0, t.smoothing.eps > 0) == ("cosine", True, True)
    assert (t.data.root, t.data.dataset) == (student.data.root, student.data.dataset)
    assert "food101_resnet50.params" in student.distill.teacher


# --- F12.3: every fine-label anchor names the public source it comes from -----------------

def test_every_fine_anchor_names_its_primary_source():
    import csv
    import re

    from gluon_tricks.tables import PAPER_NUMBERS

    with open(PAPER_NUMBERS / "followup_fine_anchors.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows:
        source = row["source"]
        assert re.search(r"\b[\w.-]+/[\w.-]+\b", source), row["row"]  # an owner/repository
        for text in row["top1"].split("-"):
            n = float(text)
            # the zoo prints either the accuracy or the error rate
            assert f"{n:.2f}" in source or f"{100 - n:.2f}%" in source, (row["row"], n)


# --- Second audit (shared/papers/fidelity-audit-2.md): N1-N3, provenance P1-P8, comments ----

def table_row(table: str, label: str):
    (row,) = [r for r in load_table(ROOT, table).rows if r.label == label]
    return row


@pytest.mark.parametrize("table", ["followup/table2", "followup/table2-fine"])
def test_table2_nadam_trains_the_101_epochs_that_printed_its_number(table):
    """N1: the Nadam log @a83d530 has 101 epoch lines and no "Done.": the printed 73.55 is
    its epoch 100 (0-based), and 150.799 s/epoch is the mean of those 101."""
    from gluon_tricks.tricks.schedules import lr_curve

    (r,) = row_recipes(table_row(table, "Nadam"), 1, 1.0)
    assert r.epochs == 101
    assert set(lr_curve(r, 3)) == {1e-3}  # constant: a 101-epoch run is the stopped run up to its last line
    assert r.data.batch_size == 128


def test_food101_mixup_row_smooths_its_labels_as_the_tutorial_says():
    """N2: tutorial l.317, "Mix-up augmentation between two batches with label smoothing"."""
    (mix,) = row_recipes(table_row("food101/table8", "Mix-Up"), 1, 1.0)
    (ls,) = row_recipes(table_row("food101/table8", "Label Smoothing"), 1, 1.0)
    assert mix.mixup.kind == "interpolation" and mix.smoothing.eps > 0
    assert (mix.smoothing.eps, mix.smoothing.form) == (ls.smoothing.eps, ls.smoothing.form) == (0.1, "paper")


@pytest.mark.parametrize("label,warmup", [("Cosine Scheduler", 0), ("Warm-up+CS+LS+KD", 6)])
def test_food101_cosine_moves_once_per_epoch_as_the_tutorials_formula(label, warmup):
    """N3: tutorial l.149-151, "If we have T epochs (warmup stage is ignored) ... at epoch t,
    l_t = 1/2 (1 + cos(t pi / T)) l": one rate per epoch."""
    from gluon_tricks.tricks.schedules import lr_curve

    (r,) = row_recipes(table_row("food101/table8", label), 1, 1.0)
    n = 7
    curve = lr_curve(r, n)
    T = r.epochs - warmup
    for epoch in range(warmup, r.epochs):
        t = epoch - warmup
        want = 0.5 * (1 + math.cos(t * math.pi / T)) * 1e-4
        assert curve[epoch * n:(epoch + 1) * n] == pytest.approx([want] * n, rel=1e-12, abs=1e-18), epoch


# (table, row label, what the row's provenance must say): each line the audit found imprecise.
PRECISE_PROVENANCE = [
    ("followup/table2", "Nadam", "stopped after 101 epochs"),  # P1
    ("followup/table2", "Nadam", "the log's name says 256bs"),  # P1
    ("followup/table3", "+ mixup", ".py@596c8dc"),  # P2: the script's HEAD has warm-up 20
    ("followup/table5", "Interp. Mixup", ".py@596c8dc"),  # P2
    ("followup/table3", "+ cosine decay", "20201118_205430.log"),  # P2: the log that printed 75.99
    ("followup/table3", "+ distillation", "batch 256 chosen"),  # P3
    ("followup/table5", "Interp. Mixup w/ Distill.", "batch 256 chosen"),  # P3
    ("food101/table8", "Mix-Up", "with label smoothing"),  # P4
    ("food101/table8", "Cosine Scheduler", "per epoch"),  # P5
    ("food101/table8", "FP16", "dynamic loss scaling"),  # P5
    ("bot/table2", "ResNet-50", "without hue"),  # P6
    ("bot/table2", "ResNet-50", "MSRAPrelu"),  # P6
    ("bot/table3", "ResNet-50 baseline (BS 256, FP32)", "without hue"),  # P6
    ("followup/table1", "ResNet50 (Bag of Tricks, ImageNet)", "MSRAPrelu"),  # P6
    ("followup/other", "mixup off for the last 20 epochs, 20-epoch warm-up (as the script at 6edeaa8 is configured)",
     "its notebook has warm-up 5, off 120"),  # P7
    ("followup/table1", "CIFAR ResNet56 v1 (CIFAR-100)", "508d3cb"),  # P8: the log that printed 74.92 / 95.66
    ("followup/table3", "Baseline", "508d3cb"),  # P8
]


@pytest.mark.parametrize("table,label,phrase", PRECISE_PROVENANCE)
def test_second_audit_provenance_lines_are_precise(table, label, phrase):
    assert phrase in table_row(table, label).provenance


def test_recipe_comments_say_what_the_sources_say():
    """Audit nits: the BoT baseline jitters brightness/contrast/saturation (no hue), and the
    paper does not say whether it used loss scaling."""
    base = (ROOT / "bot" / "baseline.toml").read_text()
    assert "brightness/saturation/hue" not in base and "brightness/contrast/saturation" in base
    fp16 = (ROOT / "bot" / "table4" / "fp16.toml").read_text()
    assert "states no loss scaling" not in fp16 and "without saying whether it used it" in fp16
