"""The image folders' per-image augmentation (gluon_tricks/data/images.py) against its
definitions: MXNet's own image operators with fixed factors, MXNet's random_size_crop,
hand computations; and ImageRecordIter's device and thread arguments."""
import random

import mxnet as mx
import numpy as np
import pytest

from gluon_tricks.data.augment import LUMA, lighting_offsets
from gluon_tricks.data.images import brightness, contrast, crop_box, eval_image, saturation, train_image
from gluon_tricks.data.recordio import decode_threads, iterator_device
from gluon_tricks.paths import cores
from gluon_tricks.recipe import recipe_from_dict

PIXELS = np.random.default_rng(0).uniform(0, 255, (6, 7, 3)).astype(np.float32)


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.3])
def test_brightness_and_contrast_equal_mxnets_operators(factor):
    x = mx.nd.array(PIXELS)
    np.testing.assert_allclose(brightness(PIXELS, factor), mx.nd.image.random_brightness(x, factor, factor).asnumpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(contrast(PIXELS, factor), mx.nd.image.random_contrast(x, factor, factor).asnumpy(),
                               rtol=1e-5, atol=1e-3)


def test_saturation_moves_each_pixel_towards_its_own_grey():
    out = saturation(PIXELS, 0.7)
    gray = PIXELS @ LUMA
    np.testing.assert_allclose(out, 0.7 * PIXELS + 0.3 * gray[..., None], rtol=1e-5)
    np.testing.assert_allclose(saturation(PIXELS, 0.0), np.repeat(gray[..., None], 3, axis=2), rtol=1e-5)


def test_lighting_offset_equals_mxnets_adjust_lighting():
    alpha = np.array([0.1, -0.05, 0.02])
    want = mx.nd.image.adjust_lighting(mx.nd.array(PIXELS), alpha=tuple(alpha)).asnumpy()
    np.testing.assert_allclose(PIXELS + lighting_offsets(alpha), want, rtol=1e-5, atol=1e-3)


def test_crop_boxes_follow_mxnets_random_size_crop():
    """Inside the image, area in [min_area, 1], aspect in [3/4, 4/3]; the same distribution of
    areas as MXNet's own random_size_crop (a different generator, so compared by statistics)."""
    rng, h, w = np.random.default_rng(1), 300, 400
    ours = [crop_box(h, w, 0.08, rng) for _ in range(3000)]
    for x0, y0, cw, ch in ours:
        assert 0 <= x0 and x0 + cw <= w and 0 <= y0 and y0 + ch <= h
        assert 0.07 <= cw * ch / (h * w) <= 1.0 and 3 / 4 - 0.02 <= cw / ch <= 4 / 3 + 0.02
    random.seed(1)
    theirs = [mx.image.random_size_crop(mx.nd.zeros((h, w, 3), dtype="uint8"), (8, 8), (0.08, 1.0),
                                        (3 / 4, 4 / 3))[1] for _ in range(1500)]
    area = lambda boxes: np.mean([b[2] * b[3] / (h * w) for b in boxes])  # noqa: E731
    ratio = lambda boxes: np.mean([np.log(b[2] / b[3]) for b in boxes])  # noqa: E731
    assert abs(area(ours) - area(theirs)) < 0.03 and abs(ratio(ours) - ratio(theirs)) < 0.02
    assert crop_box(10, 400, 0.9, rng) == (195, 0, 10, 10)  # nothing fits: the central square


def spec(**data):
    return recipe_from_dict({"data": dict({"dataset": "imagefolder", "augment": "bot", "image_size": 16,
                                           "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5]}, **data)}).data


def test_a_plain_crop_is_resized_flipped_and_normalized():
    import cv2

    img = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    s = spec(color_jitter=0.0, lighting_std=0.0)
    out = train_image(img, s, np.random.default_rng(7))
    rng = np.random.default_rng(7)  # the same draws, in the same order
    x0, y0, cw, ch = crop_box(40, 50, s.min_area, rng)
    want = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (16, 16), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        want = want[:, ::-1]
    want = ((want / 255.0 - np.array(s.mean)) / np.array(s.std)).transpose(2, 0, 1)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_validation_is_a_central_crop_of_the_resized_image():
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, 25:35] = 255  # a white band in the middle third of the width
    out = eval_image(img, spec(image_size=16, val_resize=20))  # 40x60 -> 20x30, centre 16x16: columns 7..22
    white = (1 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.5])
    np.testing.assert_allclose(out[:, :, 8], np.repeat(white[:, None], 16, axis=1), atol=1e-5)
    np.testing.assert_allclose(out[:, :, 0], np.repeat((-np.array([0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5])[:, None],
                                                       16, axis=1), atol=1e-5)


def test_record_iterators_stage_batches_for_the_runs_own_gpu():
    """ImageRecordIter's device_id is the run's first GPU (its output lives in memory pinned for
    that GPU; the default 0 opened a CUDA context on GPU 0 in every process), -1 on CPU."""
    assert iterator_device([mx.gpu(3), mx.gpu(4)]) == 3
    assert iterator_device([mx.cpu(0)]) == -1 and iterator_device(None) == -1
    assert [decode_threads(n) for n in (1, 2, 8, 32, 64)] == [1, 2, 7, 28, 60]  # 60 of 64: GluonCV's choice


def test_make_streams_passes_the_device_to_both_record_iterators(tmp_path, monkeypatch):
    from test_imagenet import make_folder

    from gluon_tricks.data import make_streams
    from gluon_tricks.data.prepare import prepare

    make_folder(tmp_path / "train", per_class=4, corrupt=False)
    make_folder(tmp_path / "val", per_class=2, corrupt=False)
    prepare(tmp_path / "train", tmp_path / "rec" / "train", resize=48, workers=1, progress=False)
    prepare(tmp_path / "val", tmp_path / "rec" / "val", resize=48, workers=1, progress=False)

    class Done:
        def next(self):
            raise StopIteration

    made = []
    monkeypatch.setattr(mx.io, "ImageRecordIter", lambda **k: (made.append(k), Done())[1])
    r = recipe_from_dict({"data": {"dataset": "recordio", "root": str(tmp_path / "rec"), "augment": "bot",
                                   "image_size": 32, "batch_size": 4}})
    test = make_streams(r, 0, 1, [mx.gpu(5)]).test
    list(test.batches())
    assert [k["device_id"] for k in made] == [5, 5]
    assert all(k["preprocess_threads"] == decode_threads(cores()) for k in made)
