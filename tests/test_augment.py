"""Batch-wise augmentation against its definition, image by image."""
import numpy as np

from gluon_tricks.data.augment import (LUMA, PCA_EIGVAL, PCA_EIGVEC, CifarAugment, color_matrices,
                                       lighting_offsets)
from gluon_tricks.recipe import IMAGENET_MEAN, IMAGENET_STD


def batch(n=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def denormalize(out):
    """NCHW normalized -> NHWC in 0..255."""
    x = out.transpose(0, 2, 3, 1) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
    return x * 255.0


def test_shapes_dtype_and_test_normalization():
    imgs = batch(8)
    out = CifarAugment(IMAGENET_MEAN, IMAGENET_STD, train=True)(imgs, np.random.default_rng(0))
    assert out.shape == (8, 3, 32, 32) and out.dtype == np.float32
    test = CifarAugment(IMAGENET_MEAN, IMAGENET_STD, train=False)(imgs)
    expected = (imgs.astype(np.float64) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(test, expected.transpose(0, 3, 1, 2), atol=1e-5)


def test_flip_and_crop_are_exact_permutations_of_the_padded_image():
    imgs = batch(64)
    aug = CifarAugment(IMAGENET_MEAN, IMAGENET_STD, train=True, color=False)
    draws = aug.draw(64, np.random.default_rng(1))
    out = np.rint(denormalize(aug(imgs, draws=draws))).astype(np.int64)
    for i in range(64):
        padded = np.zeros((40, 40, 3), np.int64)
        padded[4:36, 4:36] = imgs[i]
        crop = padded[draws["oy"][i]:draws["oy"][i] + 32, draws["ox"][i]:draws["ox"][i] + 32]
        if draws["flip"][i]:
            crop = crop[:, ::-1]
        np.testing.assert_array_equal(out[i], crop)


def test_per_image_randomness_is_independent():
    aug = CifarAugment(IMAGENET_MEAN, IMAGENET_STD, train=True)
    d = aug.draw(512, np.random.default_rng(2))
    offsets = set(zip(d["oy"].tolist(), d["ox"].tolist(), d["flip"].tolist()))
    assert len(offsets) > 120  # 9*9*2 = 162 combinations, one batch covers most of them
    assert 0.4 < d["flip"].mean() < 0.6
    assert d["oy"].min() == 0 and d["oy"].max() == 8
    assert abs(np.corrcoef(d["brightness"], d["saturation"])[0, 1]) < 0.15
    # the same image repeated gets different outputs
    same = np.repeat(batch(1), 16, axis=0)
    out = aug(same, np.random.default_rng(3))
    assert len({o.tobytes() for o in out}) == 16


def test_color_matrices_match_the_definitions():
    rng = np.random.default_rng(4)
    px = rng.uniform(0, 255, (5, 3))
    one = np.ones(1)
    # brightness: x * b
    m = color_matrices(one * 1.3, one, one * 0.0)[0]
    np.testing.assert_allclose(px @ m, px * 1.3, rtol=1e-12)
    # saturation: s*x + (1-s)*luma(x)
    m = color_matrices(one, one * 0.6, one * 0.0)[0]
    gray = px @ LUMA
    np.testing.assert_allclose(px @ m, 0.6 * px + 0.4 * gray[:, None], rtol=1e-12)
    # hue 0 is the identity
    m = color_matrices(one, one, one * 0.0)[0]
    np.testing.assert_allclose(px @ m, px, atol=1e-9)
    # a hue rotation keeps luma (Y) and the chroma magnitude sqrt(I^2 + Q^2)
    from gluon_tricks.data.augment import RGB_TO_YIQ
    m = color_matrices(one, one, one * 0.3)[0]
    before, after = px @ RGB_TO_YIQ.T, (px @ m) @ RGB_TO_YIQ.T
    np.testing.assert_allclose(after[:, 0], before[:, 0], atol=1e-9)
    np.testing.assert_allclose(np.hypot(after[:, 1], after[:, 2]), np.hypot(before[:, 1], before[:, 2]), atol=1e-9)
    angle = np.arctan2(after[:, 2], after[:, 1]) - np.arctan2(before[:, 2], before[:, 1])
    np.testing.assert_allclose(np.mod(angle, 2 * np.pi), 0.3 * np.pi, atol=1e-9)


def test_lighting_offsets_hand_computed():
    alpha = np.array([[0.1, -0.2, 0.05]])
    expected = np.array([sum(PCA_EIGVEC[c, j] * alpha[0, j] * PCA_EIGVAL[j] for j in range(3)) for c in range(3)])
    np.testing.assert_allclose(lighting_offsets(alpha)[0], expected, rtol=1e-12)


def test_color_pipeline_equals_per_image_reference():
    """Fused batch version == applying each definition to each image separately."""
    imgs = batch(6)
    aug = CifarAugment(IMAGENET_MEAN, IMAGENET_STD, train=True)
    d = aug.draw(6, np.random.default_rng(5))
    out = denormalize(aug(imgs, draws=d))
    for i in range(6):
        x = imgs[i].astype(np.float64)
        x = x * d["brightness"][i]
        x = d["saturation"][i] * x + (1 - d["saturation"][i]) * (x @ LUMA)[..., None]
        u, w = np.cos(d["hue"][i] * np.pi), np.sin(d["hue"][i] * np.pi)
        from gluon_tricks.data.augment import RGB_TO_YIQ, YIQ_TO_RGB
        rot = np.array([[1, 0, 0], [0, u, -w], [0, w, u]])
        x = x @ (YIQ_TO_RGB @ rot @ RGB_TO_YIQ).T
        x = np.clip(x + lighting_offsets(d["lighting"][i:i + 1])[0], 0, 255)
        padded = np.zeros((40, 40, 3))
        padded[4:36, 4:36] = x
        crop = padded[d["oy"][i]:d["oy"][i] + 32, d["ox"][i]:d["ox"][i] + 32]
        if d["flip"][i]:
            crop = crop[:, ::-1]
        np.testing.assert_allclose(out[i], crop, atol=0.02)


def test_reused_buffers_do_not_leak_between_batches():
    """The padded buffer is reused across calls: a batch's output must not depend on the previous batch."""
    a, b = batch(32, seed=7), batch(32, seed=8)
    aug = CifarAugment(IMAGENET_MEAN, IMAGENET_STD, train=True)
    d = aug.draw(32, np.random.default_rng(9))
    aug(a, draws=d)
    again = aug(b, draws=d)
    fresh = CifarAugment(IMAGENET_MEAN, IMAGENET_STD, train=True)(b, draws=d)
    np.testing.assert_array_equal(again, fresh)
    # the pad border still holds normalized black after use
    pad_value = (0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    d2 = dict(d, oy=np.zeros(32, int), ox=np.zeros(32, int), flip=np.zeros(32, bool))
    out = aug(b, draws=d2)
    np.testing.assert_allclose(out[:, :, 0, 0], np.tile(pad_value, (32, 1)), rtol=1e-5)
