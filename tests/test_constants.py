"""The CIFAR augmentation against published constants and MXNet's own image operators.

Oracles typed here, not imported from the module under test:
- AlexNet's PCA lighting (Krizhevsky et al. 2012, as used by fb.resnet.torch and MXNet):
  eigenvalues 255 * [0.2175, 0.0188, 0.0045] and the eigenvectors below;
- ITU-R BT.601 luma .299 R + .587 G + .114 B (saturation's gray);
- MXNet's `mx.nd.image.adjust_lighting` and `mx.image.HueJitterAug`;
- Bag of Tricks 2.1 / the follow-up: brightness, saturation and hue factors from [1-j, 1+j]
  (hue from [-j, j]), PCA noise alpha ~ N(0, 0.1).
"""
import random

import mxnet as mx
import numpy as np
import pytest

import seams
from gluon_tricks.recipe import recipe_from_dict

ALEXNET_EIGVAL = 255 * np.array([0.2175, 0.0188, 0.0045])
ALEXNET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                           [-0.5808, -0.0045, -0.8140],
                           [-0.5836, -0.6948, 0.4203]])
LUMA_601 = np.array([0.299, 0.587, 0.114])


def images(n=4, seed=0, lo=60, hi=190):
    """Mid-range pixels, so no colour operation below reaches the clip at 0 or 255."""
    return np.random.default_rng(seed).integers(lo, hi, (n, 8, 8, 3), dtype=np.uint8)


def augment_in_pixels(x, **draws):
    """The module's training transform with the given draws, no crop or flip, in 0..255 units."""
    n = len(x)
    aug = seams.CifarAugment([0, 0, 0], [1, 1, 1], train=True, color=True, pad=0)
    d = {"flip": np.zeros(n, bool), "oy": np.zeros(n, int), "ox": np.zeros(n, int),
         "brightness": np.ones(n), "saturation": np.ones(n), "hue": np.zeros(n), "lighting": np.zeros((n, 3))}
    d.update(draws)
    return aug(x, draws=d).transpose(0, 2, 3, 1) * 255.0  # NCHW in [0, 1] -> NHWC pixels


def test_identity_draws_change_nothing():
    x = images()
    np.testing.assert_allclose(augment_in_pixels(x), x, atol=1e-3)


@pytest.mark.parametrize("alpha", [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.5, -0.3, 0.8]])
def test_lighting_is_alexnets_pca_noise_and_mxnets(alpha):
    x = images(n=1)
    alpha = np.array(alpha)
    got = augment_in_pixels(x, lighting=alpha[None])[0]
    offset = ALEXNET_EIGVEC @ (alpha * ALEXNET_EIGVAL)  # AlexNet: I + [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T
    np.testing.assert_allclose(got, x[0] + offset, atol=0.01)
    mxnet = mx.nd.image.adjust_lighting(mx.nd.array(x[0], dtype="float32"), alpha=tuple(alpha)).asnumpy()
    np.testing.assert_allclose(got, mxnet, atol=1e-3)


def test_zero_saturation_is_the_bt601_luma_in_every_channel():
    x = images()
    got = augment_in_pixels(x, saturation=np.zeros(len(x)))
    luma = x.astype(np.float64) @ LUMA_601
    for c in range(3):
        np.testing.assert_allclose(got[..., c], luma, atol=1e-3)


def test_saturation_and_brightness_are_mxnets_definitions():
    """MXNet: brightness x*b; saturation s*x + (1-s)*gray with gray the BT.601 luma."""
    x = images()
    b, s = np.array([0.7, 1.3, 1.0, 1.0]), np.array([1.0, 1.0, 0.6, 1.35])
    got = augment_in_pixels(x, brightness=b, saturation=s)
    xf = x.astype(np.float64)
    bright = xf * b[:, None, None, None]
    gray = (bright @ LUMA_601)[..., None]
    np.testing.assert_allclose(got, s[:, None, None, None] * bright + (1 - s[:, None, None, None]) * gray,
                               atol=1e-3)


@pytest.mark.parametrize("hue", [0.1, -0.25])
def test_hue_rotation_is_mxnets_hue_jitter(monkeypatch, hue):
    """MXNet's HueJitterAug rotates the IQ plane by hue*pi (its inverse YIQ matrix has 3 decimals,
    so the two agree to about a grey level)."""
    x = images(n=1, lo=80, hi=170)
    got = augment_in_pixels(x, hue=np.array([hue]))[0]
    monkeypatch.setattr(random, "uniform", lambda lo, hi: hue)
    mxnet = mx.image.HueJitterAug(0.4)(mx.nd.array(x[0], dtype="float32")).asnumpy()
    np.testing.assert_allclose(got, mxnet, atol=1.0)
    np.testing.assert_allclose(got @ LUMA_601, x[0].astype(np.float64) @ LUMA_601, atol=1e-3)  # luma kept


def test_random_draws_have_the_papers_ranges():
    j = 0.4
    aug = seams.CifarAugment([0, 0, 0], [1, 1, 1], train=True, color=True, jitter=j, lighting_std=0.1)
    d = aug.draw(20000, np.random.default_rng(0))
    for key, lo, hi in (("brightness", 1 - j, 1 + j), ("saturation", 1 - j, 1 + j), ("hue", -j, j)):
        v = d[key]
        assert lo <= v.min() and v.max() <= hi, key
        assert v.min() < lo + 0.01 * j and v.max() > hi - 0.01 * j, key  # the whole range is used
        assert v.mean() == pytest.approx((lo + hi) / 2, abs=0.01)
    assert d["lighting"].shape == (20000, 3)
    assert d["lighting"].std() == pytest.approx(0.1, rel=0.03) and abs(d["lighting"].mean()) < 0.005
    assert 0.48 < d["flip"].mean() < 0.52
    assert set(np.unique(d["oy"])) == set(range(9)) == set(np.unique(d["ox"]))  # pad 4: offsets 0..8


def normalized(x, spec):
    return (x.astype(np.float32) / 255 - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)


@pytest.mark.parametrize("augment", ["none", "gluoncv", "followup"])
def test_recipe_augment_names_choose_the_pipeline(augment):
    """data.augment: "none" = no training augmentation, "gluoncv" = pad-crop + flip only (GluonCV's
    CIFAR recipe), "followup" = that plus colour and lighting (the follow-up paper)."""
    from gluon_tricks.data import make_streams
    from gluon_tricks.data.cifar import load_cifar

    r = recipe_from_dict({"data": {"dataset": "cifar10-mini", "batch_size": 16, "train_limit": 32,
                                   "test_limit": 16, "augment": augment}})
    stream = make_streams(r).train
    x = next(iter(stream.epoch(0)))[1]  # (step, images, labels...)
    x = np.asarray(x.asnumpy() if hasattr(x, "asnumpy") else x).transpose(0, 2, 3, 1)
    spec = r.data
    pixels = (x * np.array(spec.std) + np.array(spec.mean)) * 255  # back to 0..255 units
    integral = np.abs(pixels - np.round(pixels)).max() < 1e-3
    originals = normalized(load_cifar("cifar10-mini", train=True).images[:32], spec)
    unchanged = [any(np.allclose(img, o, atol=1e-5) for o in originals) for img in x]
    if augment == "none":
        assert all(unchanged)
    elif augment == "gluoncv":
        assert integral and not all(unchanged)  # moved or flipped pixels, never recoloured
    else:
        assert not integral
