"""Numeric ranges checked at load, --epochs-scale keeping a schedule's shape, and warnings
for what a recipe asks but will not train (reliability-redteam-2 causes 5, 6 and 17; the
probe ids are in each test)."""
import math

import pytest

from gluon_tricks.paths import recipes_root
from gluon_tricks.errors import UserError
from gluon_tricks.identity import run_warnings
from gluon_tricks.recipe import explicit_keys, load_recipe, recipe_from_dict, scale_epochs
from gluon_tricks.tables import load_table, row_recipes, table_names


def write(p, text):
    p.write_text(text)
    return p


# (probe, section, key, value, the range the message must name)
OUT_OF_RANGE = [
    ("4.14", "schedule", "decay_epochs", [-1], "must be strictly increasing epochs >= 1"),
    ("4.14", "schedule", "decay_epochs", [0, 30], "strictly increasing epochs >= 1"),
    ("4.20", "schedule", "decay_epochs", [1, 1], "strictly increasing epochs >= 1"),
    ("4.15", "schedule", "decay_factor", -1.0, "(0, 1]"),
    ("4.21", "schedule", "decay_factor", 10.0, "(0, 1]"),
    ("4.16", "schedule", "final_lr", -0.5, ">= 0"),
    ("4.17", "schedule", "warmup_start_lr", -1.0, ">= 0"),
    ("4.18", "schedule", "warmup_epochs", -2, ">= 0"),
    ("4.19", "schedule", "power", -2.0, "> 0"),
    ("4.22", "optim", "momentum", 1.5, "[0, 1)"),
    ("4.22", "optim", "momentum", -0.5, "[0, 1)"),
    ("4.23", "optim", "lr_reference_batch", 0, ">= 1"),
    ("4.24", "mixup", "min_lambda", 1.5, "[0, 1)"),
    ("4.25", "mixup", "off_first_epochs", -3, ">= 0"),
    ("4.25", "mixup", "off_last_epochs", -3, ">= 0"),
    ("4.27", "data", "train_limit", -5, ">= 0"),
    ("4.27", "data", "test_limit", -5, ">= 0"),
    ("4.28", "data", "image_size", 0, ">= 1"),
    ("4.28", "data", "min_area", 1.5, "(0, 1]"),
    ("4.28", "data", "min_area", 0.0, "(0, 1]"),
    ("4.28", "data", "val_resize", -10, ">= 0"),
    ("4.28", "data", "color_jitter", -1.0, "[0, 1]"),
    ("4.28", "data", "lighting_std", -0.1, ">= 0"),
    ("-", "system", "log_interval", 0, ">= 1"),
]


@pytest.mark.parametrize("probe,section,key,value,allowed", OUT_OF_RANGE)
def test_a_value_outside_its_range_is_one_line_naming_key_value_and_range(probe, section, key, value, allowed):
    with pytest.raises(UserError) as e:
        recipe_from_dict({section: {key: value}}, "r.toml")
    text = str(e.value)
    assert "\n" not in text and f"{section}.{key}" in text and repr(value) in text and allowed in text, (probe, text)


def test_top_level_epochs_scale_must_be_positive():  # probe 4.29
    with pytest.raises(UserError, match=r"epochs_scale = -3.0: must be > 0"):
        recipe_from_dict({"epochs_scale": -3.0})


def test_the_edges_of_each_range_load():
    recipe_from_dict({"schedule": {"decay_factor": 1.0, "decay_epochs": [1, 2], "power": 0.5},
                      "optim": {"momentum": 0.0, "lr_reference_batch": 1},
                      "mixup": {"min_lambda": 0.99}, "data": {"min_area": 1.0, "color_jitter": 1.0,
                                                             "train_limit": 0, "image_size": 1}})


# -- --epochs-scale (cause 6, probe 1.11) -------------------------------------------------------
def half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def test_scale_rounds_half_up_and_keeps_what_was_there():
    r = recipe_from_dict({"epochs": 4, "schedule": {"kind": "step", "decay_epochs": [2, 3], "warmup_epochs": 1},
                          "mixup": {"kind": "interpolation", "off_last_epochs": 1}})
    s = scale_epochs(r, 0.25)
    # probe 1.11: round() gave decay_epochs [0, 1] (the rate decayed before the first step) and no warm-up
    assert s.epochs == 1 and s.schedule.decay_epochs == [1, 2]
    assert s.schedule.warmup_epochs == 1 and s.mixup.off_last_epochs == 1
    assert scale_epochs(recipe_from_dict({"epochs": 10}), 0.25).epochs == 3  # 2.5 -> 3, not round()'s 2
    assert scale_epochs(recipe_from_dict({"schedule": {"warmup_epochs": 0}}), 0.25).schedule.warmup_epochs == 0


SCALES = (0.25, 0.5)  # what users pass to `table --epochs-scale` (README, docs/proxy.md)


def _all_rows():
    root = recipes_root()
    for name in table_names(root):
        for row in load_table(root, name).rows:
            if row.recipe_path is not None:
                yield name, row


def test_every_shipped_table_keeps_its_schedule_shape_when_scaled():
    checked = 0
    for name, row in _all_rows():
        (full,) = row_recipes(row, 1, 1.0)
        for f in SCALES:
            (s,) = row_recipes(row, 1, f)
            where = (name, row.label, f)
            assert s.epochs == max(1, half_up(full.epochs * f)), where
            d = s.schedule.decay_epochs
            assert all(e >= 1 for e in d) and all(b > a for a, b in zip(d, d[1:])), where
            assert len(d) == len(full.schedule.decay_epochs), where
            for e_full, e in zip(full.schedule.decay_epochs, d):
                assert e >= half_up(e_full * f), where  # never earlier than its scaled place
            w = full.schedule.warmup_epochs
            assert s.schedule.warmup_epochs == (max(1, half_up(w * f)) if w else 0), where
            for key in ("off_first_epochs", "off_last_epochs"):
                n = getattr(full.mixup, key)
                assert getattr(s.mixup, key) == (max(1, half_up(n * f)) if n else 0), where
            checked += 1
    assert checked > 100  # every row of every table, twice


# -- warnings (cause 17) ------------------------------------------------------------------------
def test_settings_the_recipe_makes_irrelevant_are_warned_about(tmp_path):
    base = write(tmp_path / "base.toml", 'epochs = 2\n[schedule]\nkind = "cosine"\n')
    # probe 4.10: alpha without a mixup kind
    p = write(tmp_path / "a.toml", 'extends = "base.toml"\n[mixup]\nalpha = 0.4\n')
    (w,) = run_warnings(load_recipe(p), explicit_keys(p))
    assert "mixup.alpha = 0.4 has no effect" in w and 'mixup.kind is "none"' in w
    # probe 4.11: distillation keys without a teacher
    p = write(tmp_path / "b.toml", 'extends = "base.toml"\n[distill]\ntemperature = 4.0\nsoft_weight = 0.9\n')
    w = run_warnings(load_recipe(p), explicit_keys(p))
    assert len(w) == 2 and all('distill.teacher is ""' in x for x in w)
    # a value inherited through extends is the parent's business: no warning for decay_epochs here
    assert run_warnings(load_recipe(base), explicit_keys(write(tmp_path / "c.toml", 'extends = "base.toml"\n'))) == []
    # --set counts as set by the user
    sets = ['smoothing.form="paper"']
    assert any("smoothing.form = 'paper' has no effect: smoothing.eps is 0" in x
               for x in run_warnings(load_recipe(base, sets), explicit_keys(base, sets)))
    # a resolved recipe.toml sets every key, mostly to their defaults: those are no news
    from gluon_tricks.recipe import to_toml
    full = write(tmp_path / "full.toml", to_toml(load_recipe(base)))
    assert run_warnings(load_recipe(full), explicit_keys(full)) == []


def test_windows_that_do_not_fit_the_run_are_warned_about():
    # probe 4.12: the whole run is warm-up
    w = run_warnings(recipe_from_dict({"epochs": 2, "schedule": {"kind": "cosine", "warmup_epochs": 10}}))
    assert any("warmup_epochs = 10 covers the whole 2-epoch run" in x for x in w)
    # probe 4.25: off_first_epochs leaves no epoch to mix in
    w = run_warnings(recipe_from_dict({"epochs": 2, "mixup": {"kind": "interpolation", "off_first_epochs": 5}}))
    assert any("leave no epoch of the 2-epoch run to mix in" in x for x in w)
    # probe 4.13: decays past the end, counted from the warm-up's end where the recipe says so
    w = run_warnings(recipe_from_dict({"epochs": 10, "schedule": {"decay_epochs": [5, 8], "warmup_epochs": 2,
                                                                   "decay_from": "warmup_end"}}))
    assert any("decay_epochs [8] fall at or after the end of the 10-epoch run" in x for x in w)
    assert run_warnings(recipe_from_dict({"epochs": 10, "schedule": {"decay_epochs": [5, 8]}})) == []


def test_train_prints_the_warnings_before_training(tmp_path, monkeypatch, capsys):
    import gluon_tricks.engine as engine
    from gluon_tricks.cli import main

    p = write(tmp_path / "w.toml", 'name = "w"\nepochs = 2\n[mixup]\nalpha = 0.4\n')
    monkeypatch.setattr(engine, "train", lambda *a, **k: {"final_top1": 1.0, "final_top5": 2.0,
                                                          "best_top1": 1.0, "best_epoch": 0})
    assert main(["train", str(p), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("gluon-tricks: warning: mixup.alpha = 0.4 has no effect")
