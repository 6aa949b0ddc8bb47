"""The real pretrained teacher: GluonCV's published CIFAR-10 cifar_resnet20_v1 weights, from
the data directory ($GLUON_TRICKS_DATA/pretrained/, README there: provenance and checks).
Measured there: 93.85% (794/846) on the cifar10-mini test images with CIFAR's mean/std,
93.26% with ImageNet's. Skipped only where no data directory is named; named but missing
the file, the tests fail."""
import os
from pathlib import Path

import mxnet as mx
import pytest

from gluon_tricks.errors import UserError
from gluon_tricks.models import load_teacher
from gluon_tricks.recipe import DistillSpec
from gluon_tricks.scoring import score

NAME = "cifar_resnet20_v1-cifar10.params"
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]  # GluonCV's CIFAR presets


@pytest.fixture
def real_teacher() -> Path:
    data = os.environ.get("GLUON_TRICKS_DATA")
    if not data:
        pytest.skip("GLUON_TRICKS_DATA names no data directory (README: Data)")
    path = Path(data) / "pretrained" / NAME
    assert path.is_file(), f"GLUON_TRICKS_DATA={data} has no pretrained/{NAME}"
    return path


def test_the_real_teacher_scores_its_published_accuracy_with_cifar_normalization(real_teacher):
    got = score(str(real_teacher), model="cifar_resnet20_v1", data="demo/baseline", ctx="cpu",
                overrides=[f"data.mean={CIFAR_MEAN}", f"data.std={CIFAR_STD}"])
    assert got["images"] == 846
    assert got["top1"] >= 93.0
    assert round(got["top1"] * 846 / 100) == 794  # 93.85%, as measured in the data directory's README


def test_the_student_normalization_costs_it_what_the_readme_says(real_teacher):
    got = score(str(real_teacher), model="cifar_resnet20_v1", data="demo/baseline", ctx="cpu")
    assert round(got["top1"] * 846 / 100) == 789  # 93.26% with ImageNet's mean/std


def test_a_truncated_copy_is_one_line_naming_the_file(real_teacher, tmp_path):
    cut = tmp_path / NAME
    cut.write_bytes(real_teacher.read_bytes()[:500_000])
    with pytest.raises(UserError) as e:
        load_teacher(DistillSpec(teacher=str(cut), teacher_model="cifar_resnet20_v1"), 10, [mx.cpu()])
    text = str(e.value)
    assert "\n" not in text and str(cut) in text and "truncated" in text and "500,000 bytes" in text
    assert "does not match" not in text


def test_the_zoo_name_reads_the_data_directorys_copy_offline(real_teacher, monkeypatch, tmp_path):
    """The demo's teacher is the zoo name; with a data directory its pretrained/ copy of the same
    weights is used, with no download (GluonCV's store is empty and may not be asked)."""
    from gluon_tricks import models

    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(models, "_pretrained", lambda *a, **k: pytest.fail("asked GluonCV's model store"))
    got = score("cifar_resnet20_v1", data="demo/baseline", ctx="cpu",
                overrides=[f"data.mean={CIFAR_MEAN}", f"data.std={CIFAR_STD}"])
    assert round(got["top1"] * 846 / 100) == 794
