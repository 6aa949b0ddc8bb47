"""Teachers: identified by their content, loaded with one-line errors about the file itself,
and fed the batch in their own normalization."""
import shutil

import mxnet as mx
import numpy as np
import pytest

from gluon_tricks.errors import UserError
from gluon_tricks.models import _get, load_teacher
from gluon_tricks.identity import content_hash
from gluon_tricks.recipe import DistillSpec, recipe_from_dict
from gluon_tricks.results import find_result
from gluon_tricks.tables import Row, Table, run_table

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]  # GluonCV's CIFAR presets


def saved_resnet20(path, seed: int):
    mx.random.seed(seed)
    net = _get("cifar_resnet20_v1", classes=10)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    net.save_parameters(str(path))
    return path


def student(teacher, **distill):
    return recipe_from_dict({
        "name": "student", "epochs": 1,
        "data": {"dataset": "cifar10-mini", "batch_size": 32, "train_limit": 64, "test_limit": 32, "augment": "none"},
        "model": {"name": "cifar_resnet20_v1"}, "schedule": {"kind": "constant"},
        "distill": {"teacher": str(teacher), "teacher_model": "cifar_resnet20_v1", **distill},
        "system": {"ctx": "cpu", "log_interval": 1},
    })


def test_identity_is_the_teacher_files_content_not_its_path(tmp_path):
    a = saved_resnet20(tmp_path / "a.params", seed=1)
    h = content_hash(student(a))
    moved = shutil.copyfile(a, tmp_path / "elsewhere.params")
    assert content_hash(student(moved)) == h  # same bytes, same teacher
    saved_resnet20(a, seed=2)  # the file replaced by other weights
    assert content_hash(student(a)) != h


def test_an_old_result_is_not_reused_after_the_teacher_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUON_TRICKS_RESULTS", "")  # only this test's runs
    teacher = saved_resnet20(tmp_path / "teacher.params", seed=1)
    (tmp_path / "student.toml").write_text(
        'epochs = 1\nname = "student"\n[data]\ndataset = "cifar10-mini"\nbatch_size = 32\ntrain_limit = 64\n'
        'test_limit = 32\naugment = "none"\n[model]\nname = "cifar_resnet20_v1"\n[schedule]\nkind = "constant"\n'
        f'[distill]\nteacher = "{teacher}"\nteacher_model = "cifar_resnet20_v1"\n[system]\nctx = "cpu"\n')
    table = Table("t", "t", [Row("distilled", tmp_path / "student.toml")])
    runs = tmp_path / "runs"

    def trained():
        return sorted(p.name for p in runs.iterdir() if (p / "result.json").is_file())

    run_table(table, runs_root=runs, progress=False, in_process=True)
    first = trained()
    run_table(table, runs_root=runs, progress=False, in_process=True)
    assert trained() == first and len(first) == 1  # same teacher: the result is reused
    saved_resnet20(teacher, seed=2)
    assert find_result(content_hash(student(teacher)), runs) is None
    run_table(table, runs_root=runs, progress=False, in_process=True)
    assert len(trained()) == 2  # a new teacher: the student is trained again


def test_a_zoo_name_is_identified_by_the_tag_of_its_weights():
    # 121e1579: the SHA-1 prefix of GluonCV's published cifar_resnet20_v1 file
    # (../shared/data/pretrained/README.md, GluonCV's model_store)
    assert content_hash(student("cifar_resnet20_v1")) == content_hash(student("cifar_resnet20_v1:121e1579"))
    assert content_hash(student("cifar_resnet20_v1")) != content_hash(student("cifar_resnet20_v1:00000000"))


def test_a_teacher_made_by_a_recipe_keeps_the_identity_its_committed_students_have(monkeypatch, tmp_path):
    """The proxy's distillation rows name their teacher by the path regenerate.py exports the
    teacher recipe to; that file is not in a fresh clone, and the committed results stay found."""
    from gluon_tricks.cli import recipes_root
    from gluon_tricks.tables import load_table, row_recipes

    monkeypatch.setenv("GLUON_TRICKS_RUNS", str(tmp_path / "empty"))
    table = load_table(recipes_root(), "proxy")
    rows = [r for r in table.rows if "distillation" in r.label]
    assert len(rows) == 2
    for row in rows:
        for recipe in row_recipes(row, table.seeds, 1.0):
            assert recipe.distill.teacher_recipe and not (recipes_root().parent / recipe.distill.teacher).exists()
            assert find_result(content_hash(recipe)) is not None, row.label


def test_a_teacher_recipe_is_only_for_a_params_teacher():
    with pytest.raises(UserError, match="teacher_recipe names the recipe a .params teacher file is exported from"):
        student("cifar_resnet20_v1", teacher_recipe="recipes/proxy/teacher.toml")


def test_the_teachers_normalization_default_is_the_students():
    base = student("cifar_resnet20_v1:121e1579")
    same = student("cifar_resnet20_v1:121e1579", teacher_mean=base.data.mean, teacher_std=base.data.std)
    other = student("cifar_resnet20_v1:121e1579", teacher_mean=CIFAR_MEAN, teacher_std=CIFAR_STD)
    assert content_hash(same) == content_hash(base) != content_hash(other)
    with pytest.raises(UserError, match="teacher_mean and distill.teacher_std need 3 values"):
        student("cifar_resnet20_v1:121e1579", teacher_mean=CIFAR_MEAN)


# --- loading errors -----------------------------------------------------------------------


def test_a_truncated_params_file_is_named_as_truncated_not_as_another_architecture(tmp_path):
    good = saved_resnet20(tmp_path / "good.params", seed=1)
    cut = tmp_path / "cut.params"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError) as e:
        load_teacher(DistillSpec(teacher=str(cut), teacher_model="cifar_resnet20_v1"), 10, [mx.cpu()])
    text = str(e.value)
    assert "\n" not in text and str(cut) in text and "truncated" in text
    assert "does not match" not in text and "Traceback" not in text


def test_a_file_of_another_format_is_named(tmp_path):
    npz = tmp_path / "weights.params"
    np.savez(npz.with_suffix(""), w=np.zeros(3))  # a numpy archive under a .params name
    shutil.move(str(npz.with_suffix(".npz")), npz)
    with pytest.raises(UserError, match=r"weights.params is not an MXNet .params file"):
        load_teacher(DistillSpec(teacher=str(npz), teacher_model="cifar_resnet20_v1"), 10, [mx.cpu()])


def test_another_architecture_or_class_count_names_the_parameter(tmp_path):
    good = saved_resnet20(tmp_path / "good.params", seed=1)
    with pytest.raises(UserError, match=r"does not match cifar_resnet56_v1 .*Parameter 'features\.\S+' is missing"):
        load_teacher(DistillSpec(teacher=str(good), teacher_model="cifar_resnet56_v1"), 10, [mx.cpu()])
    with pytest.raises(UserError, match=r"does not match cifar_resnet20_v1 with 100 classes .*dense0_weight.*"
                                        r"\(100, 64\) vs saved \(10, 64\)"):
        load_teacher(DistillSpec(teacher=str(good), teacher_model="cifar_resnet20_v1"), 100, [mx.cpu()])


def test_a_missing_recipe_teacher_says_which_recipe_makes_it(tmp_path):
    spec = DistillSpec(teacher=str(tmp_path / "t.params"), teacher_model="cifar_resnet20_v1",
                       teacher_recipe="recipes/proxy/teacher.toml")
    with pytest.raises(UserError, match=r"not found; train recipes/proxy/teacher.toml and export"):
        load_teacher(spec, 10, [mx.cpu()])


# --- the teacher's normalization ------------------------------------------------------------


def test_the_teacher_sees_the_mixed_batch_in_its_own_normalization(tmp_path):
    """Renormalizing the student's mixed batch on the device gives the teacher exactly the
    logits of the same mix of the images normalized separately with the teacher's statistics."""
    from gluon_tricks.data.augment import CifarAugment
    from gluon_tricks.data.cifar import load_cifar
    from gluon_tricks.tricks.distill import DistillStep, renormalization

    images = load_cifar("cifar10-mini", train=False).images[:16]
    teacher = load_teacher(DistillSpec(teacher=str(saved_resnet20(tmp_path / "t.params", seed=3)),
                                       teacher_model="cifar_resnet20_v1"), 10, [mx.cpu()])
    imagenet_mean, imagenet_std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    rng = np.random.default_rng(0)

    def normalized(mean, std):
        return np.asarray(CifarAugment(mean, std, train=False)(images, rng), dtype=np.float32)

    def mixed(x, lam=0.3):  # interpolation mixup with the reversed batch
        return lam * x + (1 - lam) * x[::-1]

    step = DistillStep(teacher, 20.0, 0.5, renorm=renormalization(imagenet_mean, imagenet_std, CIFAR_MEAN, CIFAR_STD))
    got = step.teacher_logits([mx.nd.array(mixed(normalized(imagenet_mean, imagenet_std)))])[0].asnumpy()
    expected = teacher(mx.nd.array(mixed(normalized(CIFAR_MEAN, CIFAR_STD)))).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    plain = DistillStep(teacher, 20.0, 0.5, renorm=renormalization(imagenet_mean, imagenet_std, [], []))
    assert plain.renorm is None
    assert not np.allclose(plain.teacher_logits([mx.nd.array(normalized(imagenet_mean, imagenet_std))])[0].asnumpy(),
                           teacher(mx.nd.array(normalized(CIFAR_MEAN, CIFAR_STD))).asnumpy(), atol=1e-4)
