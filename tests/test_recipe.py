"""Recipes: defaults, inheritance, overrides, errors, content hash."""
import pytest

from gluon_tricks.errors import UserError
from gluon_tricks.identity import content_hash
from gluon_tricks.recipe import Recipe, load_recipe, parse_override, recipe_from_dict, scale_epochs, to_toml, valid_keys
from seams import recipes_root


def write(p, text):
    p.write_text(text)
    return p


def test_defaults_are_the_followup_baseline():
    r = Recipe()
    assert (r.model.name, r.optim.name, r.optim.lr, r.optim.momentum, r.optim.wd) == \
        ("cifar_resnet56_v1", "nag", 0.1, 0.9, 1e-4)
    assert (r.schedule.kind, r.schedule.decay_epochs, r.epochs, r.data.batch_size) == \
        ("step", [30, 60, 90], 120, 256)
    assert r.data.mean == [0.485, 0.456, 0.406] and r.data.std == [0.229, 0.224, 0.225]


def test_shipped_baseline_equals_defaults():
    r = load_recipe(recipes_root() / "followup/baseline.toml")
    assert content_hash(r) == content_hash(Recipe())


def test_extends_and_override(tmp_path):
    write(tmp_path / "base.toml", 'epochs = 10\n[optim]\nlr = 0.2\nwd = 5e-4\n')
    child = write(tmp_path / "child.toml", 'extends = "base.toml"\n[optim]\nlr = 0.05\n')
    r = load_recipe(child, ["schedule.kind=cosine", "data.batch_size=32"])
    assert (r.epochs, r.optim.lr, r.optim.wd) == (10, 0.05, 5e-4)
    assert r.schedule.kind == "cosine" and r.data.batch_size == 32
    assert r.name == "child"


def test_unknown_key_lists_valid_keys(tmp_path):
    p = write(tmp_path / "r.toml", '[optim]\nlearning_rate = 0.1\n')
    with pytest.raises(UserError, match=r"unknown key 'optim.learning_rate'; valid keys in \[optim\]: name, lr"):
        load_recipe(p)
    with pytest.raises(UserError, match="unknown key 'epoch'; valid keys: name"):
        load_recipe(write(tmp_path / "s.toml", "epoch = 3\n"))


def test_wrong_type_and_bad_choice(tmp_path):
    with pytest.raises(UserError, match="optim.lr: expected float, got str"):
        load_recipe(write(tmp_path / "a.toml", '[optim]\nlr = "fast"\n'))
    with pytest.raises(UserError, match="epochs: expected int, got bool"):
        load_recipe(write(tmp_path / "b.toml", "epochs = true\n"))
    with pytest.raises(UserError, match="mixup.kind = 'cutmix' is not one of"):
        load_recipe(write(tmp_path / "c.toml", '[mixup]\nkind = "cutmix"\n'))


def test_cyclic_extends(tmp_path):
    write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(UserError, match="cyclic extends in recipes: a.toml -> b.toml -> a.toml"):
        load_recipe(tmp_path / "a.toml")


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.toml")
    with pytest.raises(UserError, match="not valid TOML"):
        load_recipe(write(tmp_path / "x.toml", "epochs = = 3\n"))


def test_parse_override_values():
    assert parse_override("optim.lr=0.2") == (["optim", "lr"], 0.2)
    assert parse_override("model.name=cifar_resnet20_v1") == (["model", "name"], "cifar_resnet20_v1")
    assert parse_override("schedule.decay_epochs=[40, 80]") == (["schedule", "decay_epochs"], [40, 80])
    with pytest.raises(UserError, match="expected key=value"):
        parse_override("optim.lr")


def test_hash_ignores_names_and_system_but_not_hyperparameters(tmp_path):
    a = recipe_from_dict({"name": "a", "description": "x"})
    b = recipe_from_dict({"name": "renamed", "system": {"ctx": "cpu:0,cpu:1"}})
    c = recipe_from_dict({"name": "a", "optim": {"lr": 0.11}})
    assert content_hash(a) == content_hash(b) != content_hash(c)


def test_resolved_toml_round_trips(tmp_path):
    r = recipe_from_dict({"name": "rt", "mixup": {"kind": "stitch_height"}, "optim": {"wd": 5e-5}})
    again = load_recipe(write(tmp_path / "rt.toml", to_toml(r)))
    assert again == r


def test_a_loaded_recipe_cannot_be_changed_in_place():
    """A recipe is its identity: changing a field of a loaded one would change what its hash
    names; a changed recipe is a new object (dataclasses.replace, scale_epochs)."""
    import dataclasses

    r = recipe_from_dict({"epochs": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.epochs = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.optim.lr = 1.0
    assert dataclasses.replace(r, epochs=4).epochs == 4 and r.epochs == 3


def test_scale_epochs_keeps_schedule_shape():
    r = recipe_from_dict({"epochs": 200, "schedule": {"warmup_epochs": 5, "decay_epochs": [30, 60, 90]},
                          "mixup": {"kind": "interpolation", "off_last_epochs": 20}})
    s = scale_epochs(r, 0.1)
    assert (s.epochs, s.schedule.warmup_epochs, s.schedule.decay_epochs, s.mixup.off_last_epochs) == \
        (20, 1, [3, 6, 9], 2)  # a 0.5-epoch warm-up rounds half up to 1 (it was round()'s 0)
    assert s.epochs_scale == pytest.approx(0.1) and content_hash(s) != content_hash(r)


def test_valid_keys_cover_sections():
    keys = valid_keys()
    assert "optim.lr" in keys and "mixup.partner" in keys and "distill.temperature" in keys


def test_new_keys_are_checked(tmp_path):
    with pytest.raises(UserError, match="schedule.decay_from = 'end' is not one of: start, warmup_end"):
        load_recipe(write(tmp_path / "a.toml", '[schedule]\ndecay_from = "end"\n'))
    with pytest.raises(UserError, match="mixup.min_lambda_kinds may list only"):
        load_recipe(write(tmp_path / "b.toml", '[mixup]\nmin_lambda_kinds = ["tile"]\n'))
    with pytest.raises(UserError, match="optim.epsilon is for adam, nadam, rmsprop, adadelta; nag takes none"):
        load_recipe(write(tmp_path / "c.toml", '[optim]\nepsilon = 1e-7\n'))
    with pytest.raises(UserError, match="optim.epsilon must be >= 0"):
        load_recipe(write(tmp_path / "d.toml", '[optim]\nname = "adam"\nepsilon = -1.0\n'))
    r = load_recipe(write(tmp_path / "e.toml", '[optim]\nname = "adam"\nepsilon = 1e-7\n'
                                                '[distill]\nteacher = "resnet152_v1d:cfe0220d"\n'))
    assert r.optim.epsilon == 1e-7 and r.distill.teacher == "resnet152_v1d:cfe0220d"


def test_parse_teacher_reads_files_zoo_names_and_tags(tmp_path):
    """One reading of distill.teacher for recipe checks, identity, loading and doctor."""
    from gluon_tricks.errors import UserError
    from gluon_tricks.recipe import TeacherSource, parse_teacher

    assert parse_teacher("resnet152_v1d") == TeacherSource(zoo_name="resnet152_v1d")
    assert parse_teacher("resnet152_v1d:cfe0220d") == TeacherSource(zoo_name="resnet152_v1d", tag="cfe0220d")
    assert parse_teacher(str(tmp_path / "t.params")) == TeacherSource(path=tmp_path / "t.params")
    # recipes name teacher/... files relative to the project
    shipped = parse_teacher("teacher/resnext29_teacher.toml").path
    assert shipped is not None and shipped.is_file()
    for bad in ("resnet152_v1d:", "resnet152_v1d:CFE0220D", "resnet152_v1d:cfe022", ":cfe0220d"):
        with pytest.raises(UserError, match="<zoo name>:<8 hex digits>"):
            parse_teacher(bad)
