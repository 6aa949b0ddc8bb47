"""The distillation teacher: no gradient buffers, and an opt-in float16 forward
(`distill.teacher_dtype`) that is part of a result's identity and refused on the CPU."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from gluon_tricks.errors import UserError
from gluon_tricks.models import load_teacher
from gluon_tricks.identity import content_hash
from gluon_tricks.recipe import DistillSpec, recipe_from_dict
from gluon_tricks.tricks.distill import DistillStep


@pytest.fixture
def teacher_file(tmp_path):
    from gluoncv.model_zoo import get_model

    net = get_model("cifar_resnet20_v1", classes=10)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    net.save_parameters(str(tmp_path / "t.params"))
    return str(tmp_path / "t.params")


def test_teacher_parameters_keep_no_gradients(teacher_file):
    teacher = load_teacher(DistillSpec(teacher=teacher_file, teacher_model="cifar_resnet20_v1"), 10, [mx.cpu()])
    params = list(teacher.collect_params().values())
    assert params and all(p.grad_req == "null" for p in params)


def test_float16_teacher_is_refused_on_the_cpu_in_one_line(teacher_file):
    spec = DistillSpec(teacher=teacher_file, teacher_model="cifar_resnet20_v1", teacher_dtype="float16")
    with pytest.raises(UserError, match="teacher_dtype = \"float16\" needs GPU contexts") as e:
        load_teacher(spec, 10, [mx.cpu()], "float16")
    assert "\n" not in str(e.value)


def test_teacher_dtype_is_part_of_the_identity_only_when_it_changes_something():
    base = {"data": {"dataset": "cifar10-mini"}, "distill": {"teacher": "cifar_resnet20_v1"}}
    plain = content_hash(recipe_from_dict(base))
    half = recipe_from_dict({**base, "distill": {**base["distill"], "teacher_dtype": "float16"}})
    assert content_hash(half) != plain
    fp16_student = {**base, "model": {"dtype": "float16"}}  # its teacher runs in float16 anyway
    assert content_hash(recipe_from_dict({**fp16_student, "distill": {**base["distill"], "teacher_dtype": "float16"}})) \
        == content_hash(recipe_from_dict(fp16_student))
    with pytest.raises(UserError, match="distill.teacher_dtype = 'bfloat16' is not one of: \"\", float16"):
        recipe_from_dict({**base, "distill": {**base["distill"], "teacher_dtype": "bfloat16"}})


def test_the_teacher_gets_the_images_in_its_own_dtype():
    seen = []

    def teacher(x):
        seen.append(np.dtype(x.dtype))
        return mx.nd.zeros((x.shape[0], 3))

    net = gluon.nn.Dense(3, in_units=4)
    net.initialize()
    xs, ys = [mx.nd.ones((2, 4))], [mx.nd.array([[1, 0, 0], [0, 1, 0]])]
    DistillStep(teacher, 20.0, 0.5, "float16")(net, xs, ys)
    DistillStep(teacher, 20.0, 0.5)(net, xs, ys)
    assert seen == [np.dtype("float16"), np.dtype("float32")]


def test_images_already_in_the_teacher_dtype_are_not_copied():
    """NDArray.dtype is a numpy type (np.float16), not a string: the comparison must be by dtype,
    or every batch is copied with astype before the teacher's forward."""
    step = DistillStep(teacher=None, temperature=1.0, soft_weight=0.5, teacher_dtype="float16")
    x = mx.nd.zeros((2, 3, 4, 4), dtype="float16")
    assert step.teacher_input(x) is x
    y = mx.nd.zeros((2, 3, 4, 4), dtype="float32")
    assert step.teacher_input(y).dtype == np.float16
