"""Each trick against its definition: smoothing, mixing, distillation, init tricks, fp16 parts."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from gluon_tricks.recipe import MixupSpec, recipe_from_dict
from gluon_tricks.tricks import mixing
from gluon_tricks.tricks.distill import DistillationLoss, distillation_numpy
from gluon_tricks.tricks.losses import SoftCrossEntropy
from gluon_tricks.tricks.precision import LossScaler, check_dtype, grads_finite
from gluon_tricks.tricks.smoothing import smooth_targets
from gluon_tricks.errors import UserError


# -- label smoothing -----------------------------------------------------------------------
def test_smoothing_paper_form_eq4():
    t = smooth_targets(np.array([2, 0]), 5, eps=0.1, form="paper")
    np.testing.assert_allclose(t[0], [0.025, 0.025, 0.9, 0.025, 0.025], rtol=1e-6)
    np.testing.assert_allclose(t.sum(1), 1, rtol=1e-6)


def test_smoothing_gluoncv_form():
    t = smooth_targets(np.array([1]), 4, eps=0.2, form="gluoncv")
    np.testing.assert_allclose(t[0], [0.05, 0.85, 0.05, 0.05], rtol=1e-6)
    assert smooth_targets(np.array([3]), 4, eps=0.0).tolist() == [[0, 0, 0, 1]]


# -- mixing ------------------------------------------------------------------------------------
def batch(n=6, h=8, w=8, k=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3, h, w)).astype(np.float32)
    y = smooth_targets(rng.integers(0, k, n), k)
    return x, y


def run_block(x, y, plan):
    block = mixing.MixBlock(plan.sources)
    block.hybridize(static_alloc=True, static_shape=True)
    xm, ym = block(mx.nd.array(x), mx.nd.array(y), mx.nd.array(plan.orders), mx.nd.array(plan.masks),
                   mx.nd.array(plan.weights))
    return xm.asnumpy(), ym.asnumpy()


def test_interpolation_is_the_mixup_formula():
    x, y = batch()
    lam = 0.3
    partner = np.arange(6)[::-1]
    xm, ym = run_block(x, y, mixing.interpolation_plan(6, 8, 8, lam, partner))
    np.testing.assert_allclose(xm, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ym, lam * y + (1 - lam) * y[::-1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", ["height", "width"])
def test_stitch_is_an_exact_concatenation(axis):
    x, y = batch()
    lam = 0.37
    cut = int(8 * lam)
    partner = np.random.default_rng(1).permutation(6)
    xm, ym = run_block(x, y, mixing.stitch_plan(6, 8, 8, lam, partner, axis))
    ax = 2 if axis == "height" else 3
    expected = np.concatenate([np.take(x, range(cut), axis=ax), np.take(x[partner], range(cut, 8), axis=ax)], axis=ax)
    np.testing.assert_array_equal(xm, expected)  # bit-exact: masks are 0/1
    np.testing.assert_allclose(ym, lam * y + (1 - lam) * y[partner], rtol=1e-6)


def test_stitch_area_label_weight():
    plan = mixing.stitch_plan(4, 10, 10, 0.37, np.arange(4)[::-1], "width", label_weight="area")
    assert plan.weights.tolist() == pytest.approx([0.3, 0.7])


def test_tile_cells_and_area_weights():
    x, y = batch(n=4, h=10, w=10)
    others = mixing.partners(4, "reversed", None, 3)
    plan = mixing.tile_plan(4, 10, 10, 0.4, 0.7, others)
    xm, ym = run_block(x, y, plan)
    np.testing.assert_array_equal(xm[:, :, :4, :7], x[:, :, :4, :7])
    np.testing.assert_array_equal(xm[:, :, :4, 7:], x[others[0]][:, :, :4, 7:])
    np.testing.assert_array_equal(xm[:, :, 4:, :7], x[others[1]][:, :, 4:, :7])
    np.testing.assert_array_equal(xm[:, :, 4:, 7:], x[others[2]][:, :, 4:, 7:])
    assert plan.weights.tolist() == pytest.approx([0.28, 0.12, 0.42, 0.18])
    np.testing.assert_allclose(ym.sum(1), 1, rtol=1e-6)
    assert len({tuple(o) for o in [np.arange(4)] + others}) == 4  # four different orderings


def test_padded_plan_changes_nothing():
    x, y = batch()
    plan = mixing.stitch_plan(6, 8, 8, 0.5, np.arange(6)[::-1], "height")
    a = run_block(x, y, plan)
    b = run_block(x, y, plan.padded(4))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)


def test_mixer_block_matches_numpy_reference_for_every_kind():
    x, y = batch()
    for kind in ["interpolation", "stitch_height", "stitch_width", "tile", "random"]:
        mixer = mixing.Mixer(MixupSpec(kind=kind, choices=["tile", "stitch_width", "interpolation"]), epochs=10)
        for seed in range(4):
            plan = mixer.plan(6, 8, 8, 3, np.random.default_rng(seed))
            xm, ym = run_block(x, y, plan)
            xr, yr = mixing.mix_numpy(x, y, plan)
            np.testing.assert_allclose(xm, xr, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(ym, yr, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(plan.weights.sum(), 1, rtol=1e-6)
            np.testing.assert_allclose(plan.masks.sum(0), 1, rtol=1e-6)


def test_mixer_mixes_each_device_slice_by_one_plan():
    """Mixer.mix: every device's slice mixed by the one plan drawn from the step's rng (the
    numpy reference), and the batch unchanged in an epoch without mixing."""
    x, y = batch(n=8)
    spec = MixupSpec(kind="random", choices=["tile", "stitch_width", "interpolation"], off_last_epochs=1)
    mixer = mixing.Mixer(spec, epochs=4)
    devices = [mx.cpu(0), mx.cpu(1)]
    for seed in range(3):
        images = [mx.nd.array(x[:4], ctx=devices[0]), mx.nd.array(x[4:], ctx=devices[1])]
        targets = [mx.nd.array(y[:4], ctx=devices[0]), mx.nd.array(y[4:], ctx=devices[1])]
        xs, ys = mixer.mix(images, targets, 1, np.random.default_rng(seed))
        plan = mixer.plan(4, 8, 8, 1, np.random.default_rng(seed))
        for k, part in enumerate((slice(0, 4), slice(4, 8))):
            xr, yr = mixing.mix_numpy(x[part], y[part], plan)
            assert xs[k].context == devices[k]
            np.testing.assert_allclose(xs[k].asnumpy(), xr, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(ys[k].asnumpy(), yr, rtol=1e-5, atol=1e-6)
    xs, ys = mixer.mix(images, targets, 3, np.random.default_rng(0))  # the last epoch is off
    assert xs is images and ys is targets


def test_partner_choices():
    rng = np.random.default_rng(0)
    assert mixing.partners(5, "reversed", rng)[0].tolist() == [4, 3, 2, 1, 0]
    perm = mixing.partners(50, "random", rng)[0]
    assert sorted(perm.tolist()) == list(range(50)) and perm.tolist() != list(range(50))


def test_min_lambda_means_no_mixing():
    spec = MixupSpec(kind="interpolation", alpha=0.2, min_lambda=0.1, min_lambda_kinds=["interpolation"])
    mixer = mixing.Mixer(spec, 10)
    seen_small = False
    for seed in range(200):
        rng = np.random.default_rng(seed)
        lam = np.random.default_rng(seed).beta(0.2, 0.2)
        plan = mixer.plan(4, 8, 8, 0, rng)
        if lam < 0.1:
            seen_small = True
            assert plan.lam == 1.0 and plan.weights.tolist() == [1.0, 0.0]
        else:
            assert plan.lam == pytest.approx(lam)
    assert seen_small


def test_mixing_off_for_first_and_last_epochs():
    mixer = mixing.Mixer(MixupSpec(kind="stitch_height", off_first_epochs=2, off_last_epochs=3), epochs=10)
    assert [mixer.active(e) for e in range(10)] == [False, False] + [True] * 5 + [False] * 3
    assert mixer.plan(4, 8, 8, 0, np.random.default_rng(0)) is None


# -- losses ------------------------------------------------------------------------------------
def logits(seed, shape=(4, 7), scale=3.0):
    return np.random.default_rng(seed).normal(scale=scale, size=shape).astype(np.float32)


def test_soft_cross_entropy_equals_sparse_ce_on_one_hot():
    z, labels = logits(0), np.array([1, 0, 6, 3])
    ours = SoftCrossEntropy()(mx.nd.array(z), mx.nd.array(smooth_targets(labels, 7))).asnumpy()
    theirs = mx.gluon.loss.SoftmaxCrossEntropyLoss()(mx.nd.array(z), mx.nd.array(labels)).asnumpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_distillation_limits_and_numpy_definition():
    z, r = logits(1), logits(2)
    y = smooth_targets(np.array([1, 2, 3, 4]), 7, 0.1)
    ce = SoftCrossEntropy()(mx.nd.array(z), mx.nd.array(y)).asnumpy()
    loss0 = DistillationLoss(20, 0.0)(mx.nd.array(z), mx.nd.array(y), mx.nd.array(r)).asnumpy()
    np.testing.assert_allclose(loss0, ce, rtol=1e-5)
    loss1 = DistillationLoss(20, 1.0)(mx.nd.array(z), mx.nd.array(y), mx.nd.array(r)).asnumpy()
    pt = np.exp(r / 20) / np.exp(r / 20).sum(1, keepdims=True)
    ps = np.exp(z / 20) / np.exp(z / 20).sum(1, keepdims=True)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(1)
    np.testing.assert_allclose(loss1, 400 * kl, rtol=1e-3, atol=1e-5)
    mid = DistillationLoss(20, 0.5)(mx.nd.array(z), mx.nd.array(y), mx.nd.array(r)).asnumpy()
    np.testing.assert_allclose(mid, distillation_numpy(z, y, r, 20, 0.5), rtol=1e-3, atol=1e-5)


def test_distillation_vs_gluoncv_same_gradient_offset_by_teacher_entropy():
    from gluoncv.loss import DistillationSoftmaxCrossEntropyLoss

    z, r = logits(3), logits(4)
    y = smooth_targets(np.array([0, 1, 2, 3]), 7, 0.1)
    T, w = 20.0, 0.5
    ours_block = DistillationLoss(T, w)
    theirs_block = DistillationSoftmaxCrossEntropyLoss(temperature=T, hard_weight=1 - w, sparse_label=False)
    grads, values = [], []
    for block in (ours_block, theirs_block):
        zz = mx.nd.array(z)
        zz.attach_grad()
        with autograd.record():
            if block is ours_block:
                out = block(zz, mx.nd.array(y), mx.nd.array(r))
            else:
                out = block(zz, mx.nd.array(y), mx.nd.softmax(mx.nd.array(r) / T))
        out.backward()
        values.append(out.asnumpy())
        grads.append(zz.grad.asnumpy())
    pt = np.exp(r / T) / np.exp(r / T).sum(1, keepdims=True)
    teacher_entropy = -(pt * np.log(pt)).sum(1)
    np.testing.assert_allclose(values[1] - values[0], w * T * T * teacher_entropy, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_distillation_gradients_finite_at_t20():
    z = mx.nd.array(logits(5, scale=30.0))
    z.attach_grad()
    with autograd.record():
        loss = DistillationLoss(20, 0.5)(z, mx.nd.array(smooth_targets(np.arange(4), 7)), mx.nd.array(logits(6, scale=30.0)))
    loss.backward()
    assert np.isfinite(z.grad.asnumpy()).all() and np.isfinite(loss.asnumpy()).all()


# -- float16 machinery (no fp16 GEMM on CPU: only the parts) -------------------------------------
def test_cast_keeps_batchnorm_in_float32():
    from gluon_tricks.models import build_model

    r = recipe_from_dict({"model": {"name": "cifar_resnet20_v1", "dtype": "float16"}})
    net = build_model(r, 10, [mx.cpu()])
    params = net.collect_params()
    convs = [p for n, p in params.items() if n.endswith("weight") and "conv" in n]
    bns = [p for n, p in params.items() if "batchnorm" in n]
    assert convs and bns
    assert {np.dtype(p.dtype) for p in convs} == {np.dtype("float16")}
    assert {np.dtype(p.dtype) for p in bns} == {np.dtype("float32")}


def test_multi_precision_update_keeps_fp32_master_weights():
    """A float16 recipe's optimizer (the project's construction) keeps an fp32 master copy of each
    fp16 weight: ten updates of 1e-4 each, below half the fp16 spacing at 1.0 (2**-11), move the
    weight to fp16(0.999); an fp16-only update would round every one of them away."""
    from seams import make_optimizer

    r = recipe_from_dict({"model": {"dtype": "float16"}, "schedule": {"kind": "constant"},
                          "optim": {"name": "nag", "lr": 0.1, "momentum": 0.0, "wd": 0.0}})
    name, params = make_optimizer(r, None, iters_per_epoch=10)  # no net: no_bias_decay is off
    w = mx.gluon.Parameter("w", shape=(4,), dtype="float16", init=mx.init.One())
    w.initialize(ctx=mx.cpu())
    trainer = mx.gluon.Trainer([w], name, params, kvstore=None)
    assert trainer.optimizer.multi_precision is True
    for _ in range(10):
        with autograd.record():
            loss = (w.data() * 1e-3).sum()  # gradient 1e-3 for every weight
        loss.backward()
        trainer.step(1)
    assert np.all(w.data().asnumpy() == np.float16(1 - 10 * 0.1 * 1e-3))
    assert np.float16(1 - 10 * 0.1 * 1e-3) != np.float16(1.0)


def test_loss_scaler_static_and_dynamic():
    s = LossScaler("128")
    assert s.scale == 128 and s.update(False) and not s.update(True) and s.scale == 128
    d = LossScaler("dynamic", init_scale=1024, growth_interval=3)
    assert not d.update(True) and d.scale == 512 and d.skipped == 1
    assert d.update(False) and d.update(False) and d.scale == 512
    assert d.update(False) and d.scale == 1024  # third good step in a row doubles
    assert LossScaler("none").scale == 1.0


def test_grads_finite_detects_inf_on_any_context():
    net = mx.gluon.nn.Dense(2, in_units=3)
    ctxs = [mx.cpu(0), mx.cpu(1)]
    net.initialize(ctx=ctxs)
    params = list(net.collect_params().values())
    for c in ctxs:
        with autograd.record():
            out = net(mx.nd.ones((1, 3), ctx=c))
        out.backward()
    assert grads_finite(params, ctxs)
    params[0].grad(ctxs[1])[:] = np.inf
    assert not grads_finite(params, ctxs)


def test_float16_refused_on_cpu(tmp_path, tiny_recipe_dict):
    with pytest.raises(UserError, match="float16 needs GPU"):
        check_dtype("float16", [mx.cpu()])
    from gluon_tricks.engine import train

    r = recipe_from_dict(dict(tiny_recipe_dict, model={"name": "cifar_resnet20_v1", "dtype": "float16"}))
    with pytest.raises(UserError, match="float16 needs GPU"):
        train(r, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_grads_finite_past_200_arrays_and_mixed_dtypes():
    """MXNet's multi_all_finite segfaults past 200 arrays and rejects a float16/float32 mix
    (an fp16 net keeps BatchNorm in fp32): the check must chunk and group by dtype."""
    params = []
    for i in range(410):
        p = mx.gluon.Parameter(f"p{i}", shape=(3,), dtype="float16" if i % 2 else "float32")
        p.initialize(ctx=[mx.cpu()])
        p.grad()[:] = 1
        params.append(p)
    assert grads_finite(params, [mx.cpu()])
    params[407].grad()[:] = np.inf  # a float16 gradient past the first chunk of 200
    assert not grads_finite(params, [mx.cpu()])
