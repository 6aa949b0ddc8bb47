"""Each trick against its definition: smoothing, mixing, distillation, init tricks, fp16 parts."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from gluon_tricks.recipe import MixupSpec, recipe_from_dict
from gluon_tricks.tricks import mixing
from gluon_tricks.tricks.losses import DistillationLoss, SoftCrossEntropy, distillation_numpy
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
    block = mixing.mix_block(plan.sources)
    block.hybridize(static_alloc=True, static_shape=True)
    xm, ym = block(mx.nd.array(x), mx.nd.array(y), mx.nd.array(plan.index), mx.nd.array(plan.masks),
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
    opt = mx.optimizer.create("nag", learning_rate=0.1, momentum=0.9, wd=0.0, multi_precision=True)
    updater = mx.optimizer.get_updater(opt)
    w = mx.nd.array([1.0, 2.0], dtype="float16")
    g = mx.nd.array([1e-4, 1e-4], dtype="float16")
    for _ in range(3):
        updater(0, g, w)
    w.wait_to_read()
    momentum_state, master = updater.states[0]  # MXNet keeps (optimizer state, fp32 copy)
    assert master.dtype == np.float32
    # NAG with momentum m: mom = m*mom + g; w -= lr*(g + m*mom); three steps of a constant g
    gval = float(np.float16(1e-4))
    mom, expected = 0.0, 1.0
    for _ in range(3):
        mom = 0.9 * mom + gval
        expected -= 0.1 * (gval + 0.9 * mom)
    assert master.asnumpy()[0] == pytest.approx(expected, rel=1e-6)
    assert momentum_state.asnumpy()[0] == pytest.approx(-0.1 * mom, rel=1e-5)  # MXNet stores -lr * momentum
    # the fp16 copy could not have represented these tiny steps on its own
    assert w.asnumpy()[0] == np.float16(expected)


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
