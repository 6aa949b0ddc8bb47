"""LR schedules against the papers' formulas, hand-computed, and against GluonCV."""
import math

import pytest

from gluon_tricks.recipe import recipe_from_dict
from gluon_tricks.tricks.schedules import Schedule, lr_at, lr_curve, scaled_lr

IPE = 10  # iterations per epoch


def test_step_decay_at_30_60_90():
    lr = lambda e: lr_at(e * IPE, "step", 0.1, IPE, 120)
    assert lr(0) == 0.1 and lr(29) == 0.1
    assert lr(30) == pytest.approx(0.01) and lr(60) == pytest.approx(0.001) and lr(90) == pytest.approx(1e-4)
    assert lr_at(30 * IPE - 1, "step", 0.1, IPE, 120) == 0.1


def test_linear_warmup_from_zero():
    args = dict(kind="cosine", base_lr=0.1, iters_per_epoch=IPE, epochs=120, warmup_epochs=5)
    assert lr_at(0, **args) == 0.0
    assert lr_at(25, **args) == pytest.approx(0.05)  # half-way through 50 warm-up iterations
    assert lr_at(50, **args) == pytest.approx(0.1)  # cosine starts at base lr


def test_cosine_is_the_paper_formula_excluding_warmup():
    T = (120 - 5) * IPE
    for t in (0, 1, T // 3, T // 2, T - 1):
        expected = 0.5 * (1 + math.cos(math.pi * t / T)) * 0.1
        assert lr_at(50 + t, "cosine", 0.1, IPE, 120, warmup_epochs=5) == pytest.approx(expected, abs=1e-15)
    assert lr_at(50 + T // 2, "cosine", 0.1, IPE, 120, warmup_epochs=5) == pytest.approx(0.05)


def test_poly():
    T = 100 * IPE
    assert lr_at(T // 2, "poly", 0.1, IPE, 100, power=2) == pytest.approx(0.1 * 0.25)


def test_linear_scaling_rule():
    r = recipe_from_dict({"data": {"batch_size": 1024}, "optim": {"lr": 0.1, "linear_scaling": True}})
    assert scaled_lr(r) == pytest.approx(0.4)  # Bag of Tricks' batch-1024 rate
    r = recipe_from_dict({"data": {"batch_size": 1024}})
    assert scaled_lr(r) == 0.1


def test_mxnet_scheduler_counts_updates_from_one():
    s = Schedule(kind="cosine", base_lr=0.1, iters_per_epoch=IPE, epochs=10, warmup_epochs=1)
    assert s(1) == lr_at(0, "cosine", 0.1, IPE, 10, warmup_epochs=1) == 0.0
    assert s(11) == pytest.approx(0.1)


def test_optimizer_applies_the_schedule_inside_mxnet():
    """One SGD step per update on a weight with gradient 1 moves it by exactly lr_at(t)."""
    import mxnet as mx

    sched = Schedule(kind="step", base_lr=0.5, iters_per_epoch=2, epochs=4, decay_epochs=(1, 2), decay_factor=0.1)
    opt = mx.optimizer.SGD(learning_rate=0.5, lr_scheduler=sched, wd=0.0)
    updater = mx.optimizer.get_updater(opt)
    w, g = mx.nd.zeros((1,)), mx.nd.ones((1,))
    moved = []
    for t in range(6):
        before = w.asscalar()
        updater(0, g, w)
        moved.append(before - w.asscalar())
    assert moved == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.005, 0.005], rel=1e-6)


def test_gluoncv_step_matches_and_cosine_differs_by_one_iteration():
    """Why we keep our own: GluonCV divides by niters - 1 (documented in schedules.py)."""
    from gluoncv.utils import LRScheduler, LRSequential

    n, epochs, warm = IPE, 20, 2
    ours = [lr_at(t, "cosine", 0.1, n, epochs, warmup_epochs=warm) for t in range(epochs * n)]
    gcv = LRSequential([LRScheduler("linear", base_lr=0, target_lr=0.1, nepochs=warm, iters_per_epoch=n),
                        LRScheduler("cosine", base_lr=0.1, target_lr=0, nepochs=epochs - warm, iters_per_epoch=n)])
    theirs = [gcv(t) for t in range(epochs * n)]
    diff = max(abs(a - b) for a, b in zip(ours, theirs))
    assert 0 < diff < 0.1 / (warm * n - 1) + 1e-12  # at most one warm-up increment apart
    step = LRScheduler("step", base_lr=0.1, nepochs=epochs, iters_per_epoch=n, step_epoch=[5, 10], step_factor=0.1)
    assert [step(t) for t in range(epochs * n)] == pytest.approx(
        [lr_at(t, "step", 0.1, n, epochs, decay_epochs=(5, 10)) for t in range(epochs * n)], rel=1e-12)


def test_lr_curve_from_recipe():
    r = recipe_from_dict({"epochs": 4, "schedule": {"kind": "cosine", "warmup_epochs": 1}})
    curve = lr_curve(r, 5)
    assert len(curve) == 20 and curve[0] == 0.0 and max(curve) == pytest.approx(0.1)
    assert curve == [Schedule.from_recipe(r, 5).lr(t) for t in range(20)]


def test_schedule_from_a_recipe_is_its_settings_hand_computed():
    r = recipe_from_dict({"epochs": 6, "data": {"batch_size": 512},
                          "optim": {"lr": 0.1, "linear_scaling": True},
                          "schedule": {"kind": "step", "decay_epochs": [2, 4], "decay_factor": 0.5,
                                       "warmup_epochs": 1, "warmup_start_lr": 0.02}})
    s = Schedule.from_recipe(r, IPE)
    assert s.base_lr == pytest.approx(0.2)  # 0.1 * 512 / 256
    # warm-up from 0.02 to 0.2 over 10 iterations, then halved at epochs 2 and 4
    assert [s.lr(t) for t in (0, 5, 10, 19, 20, 39, 40, 59)] == pytest.approx(
        [0.02, 0.11, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05])


def test_schedule_is_frozen_and_survives_pickling():
    """The optimizer is pickled with its scheduler: into every checkpoint's trainer states, and
    (protocol 0) to the parameter servers of a distributed kvstore."""
    import dataclasses
    import pickle

    s = Schedule(kind="cosine", base_lr=0.1, iters_per_epoch=IPE, epochs=10, warmup_epochs=1, decay_epochs=(3,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.base_lr = 0.2
    for protocol in (0, pickle.DEFAULT_PROTOCOL):
        back = pickle.loads(pickle.dumps(s, protocol))
        assert back == s and [back(t) for t in range(1, 101)] == [s(t) for t in range(1, 101)]


def test_trainer_states_written_before_schedule_resume_exactly():
    """tests/data/trainer_states_paperlr.pickle is what a checkpoint of the code before Schedule
    holds (written at commit 5e9420e: its make_optimizer for the recipe below, a bias-free
    Dense(1, in_units=2) from zero weights, three trainer.step(1) on input ones, save_states).
    Its scheduler was pickled as `schedules.PaperLR`: loading it now must give the same
    Schedule, update count and momentum, so a resumed fourth step equals an uninterrupted one."""
    from pathlib import Path

    import mxnet as mx
    from mxnet import autograd, gluon

    from seams import make_optimizer

    r = recipe_from_dict({"epochs": 4, "optim": {"name": "nag", "lr": 0.5, "wd": 0.0},
                          "schedule": {"kind": "step", "decay_epochs": [1, 2], "warmup_epochs": 1}})

    def trainer_and_net():
        net = gluon.nn.Dense(1, in_units=2, use_bias=False)
        net.initialize(mx.init.Zero())
        name, params = make_optimizer(r, net, 2)
        return gluon.Trainer(net.collect_params(), name, params, kvstore=None), net

    def step(trainer, net):
        with autograd.record():
            loss = net(mx.nd.ones((1, 2))).sum()
        loss.backward()
        trainer.step(1)

    trainer, net = trainer_and_net()
    for _ in range(3):
        step(trainer, net)
    after_three = net.weight.data().copy()
    step(trainer, net)
    uninterrupted = net.weight.data().asnumpy()

    from gluon_tricks.checkpoints import check_trainer_states

    old_states = Path(__file__).parent / "data" / "trainer_states_paperlr.pickle"
    check_trainer_states(old_states)  # the resume's allow-list admits it
    resumed, net = trainer_and_net()
    net.weight.set_data(after_three)
    resumed.load_states(str(old_states))
    assert resumed.optimizer.lr_scheduler == Schedule.from_recipe(r, 2)
    assert resumed.optimizer.num_update == 3
    step(resumed, net)
    assert resumed.learning_rate == lr_at(3, "step", 0.5, 2, 4, warmup_epochs=1, decay_epochs=(1, 2)) == 0.05
    assert (net.weight.data().asnumpy() == uninterrupted).all()


def test_step_decay_counted_from_the_warmup_end():
    # hand computation: 2-epoch warm-up, decay epochs 3 and 5 counted after it -> drops at 5 and 7
    lrs = [lr_at(t, "step", 0.1, IPE, 10, warmup_epochs=2, decay_epochs=(3, 5), decay_from="warmup_end")
           for t in range(0, 10 * IPE, IPE)]
    assert lrs == pytest.approx([0.0, 0.05, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.001])
    absolute = [lr_at(t, "step", 0.1, IPE, 10, warmup_epochs=2, decay_epochs=(3, 5)) for t in range(0, 10 * IPE, IPE)]
    assert absolute == pytest.approx([0.0, 0.05, 0.1, 0.01, 0.01, 0.001, 0.001, 0.001, 0.001, 0.001])


def test_per_epoch_warmup_and_constant_schedule():
    # the Food-101 tutorial: lr * (epoch + 1) / m through epoch < m, the same at every step of an epoch
    lrs = [lr_at(t, "constant", 1e-4, IPE, 6, warmup_epochs=3, warmup_every="epoch") for t in range(6 * IPE)]
    assert lrs == pytest.approx([1e-4 / 3] * IPE + [2e-4 / 3] * IPE + [1e-4] * 4 * IPE)


def test_decay_every_epoch_holds_one_rate_per_epoch_for_poly_and_cosine():
    # epoch e after a 2-epoch warm-up of a 6-epoch run: t = e - 2 of T = 4 whole epochs
    for kind, f in (("poly", lambda x: 0.1 * (1 - x) ** 2), ("cosine", lambda x: 0.05 * (1 + math.cos(math.pi * x)))):
        lrs = [lr_at(t, kind, 0.1, IPE, 6, warmup_epochs=2, decay_every="epoch") for t in range(6 * IPE)]
        for e in range(2, 6):
            assert lrs[e * IPE:(e + 1) * IPE] == pytest.approx([f((e - 2) / 4)] * IPE, rel=1e-12), (kind, e)
