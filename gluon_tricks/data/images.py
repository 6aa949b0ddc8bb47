"""Per-image Bag of Tricks augmentation on HWC uint8 RGB arrays, in numpy and OpenCV,
for the image-folder reader and the RecordIO fallback (folders.py, recordio.py).

Why not Gluon's transforms: each of them is an MXNet operator, and MXNet runs CPU
operators on one engine worker thread (MXNET_CPU_WORKER_NTHREADS defaults to 1), so a
loader's threads all wait on that one thread: about one core per process whatever the
machine (gpu-readiness-2 finding 11). OpenCV's decode and resize release the GIL and numpy's
arithmetic on whole images mostly does too, so Python threads running these functions use
every core (bench/image_folder.py measures it against GluonCV's ImageFolderDataset and
DataLoader with worker processes).

The definitions are MXNet's (Bag of Tricks Sec. 2, GluonCV's train_imagenet.py):
- random-resized crop as `mx.image.random_size_crop`: up to 10 draws of an area uniform in
  [min_area, 1] of the image and an aspect ratio log-uniform in [3/4, 4/3]; the first that
  fits is cropped at a uniform position and resized (bilinear) to size x size. When none
  fits (very elongated images) the central square is used (MXNet: a central crop of the
  output's aspect ratio, the same for square outputs);
- flip with p = 0.5;
- brightness, contrast and saturation factors uniform in [1 - j, 1 + j], applied in a
  random order (MXNet's RandomColorJitter); brightness and contrast equal MXNet's operators,
  saturation moves each pixel towards its own luma (the definition, as in augment.py; MXNet
  1.9.1's random_saturation on float HWC input blends towards another grey: measured);
- AlexNet PCA lighting, alpha ~ N(0, lighting_std) per channel;
- to [0, 1] and normalized by mean/std.
Gluon applies the colour steps to uint8 images, rounding after each; here they run in
float32 and are clipped to [0, 255] after each step without rounding (at most half a
grey level apart).

Every random draw comes from the generator the caller passes: the folder reader seeds it
from (seed, epoch, image), so an image's augmentation does not depend on which thread
ran it or on what ran before, and a resumed epoch sees the same batches.
"""
from __future__ import annotations

import math

import numpy as np

from gluon_tricks.data.augment import LUMA, lighting_offsets


def crop_box(h: int, w: int, min_area: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(x0, y0, width, height) of a random-resized crop of an h x w image."""
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        area = rng.uniform(min_area, 1.0) * h * w
        ratio = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if cw <= w and ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    side = min(h, w)
    return (w - side) // 2, (h - side) // 2, side, side


def brightness(x: np.ndarray, factor: float) -> np.ndarray:
    return x * np.float32(factor)


def contrast(x: np.ndarray, factor: float) -> np.ndarray:
    """Towards the image's mean grey level (luma averaged over all pixels)."""
    mean_gray = float((x.reshape(-1, 3) @ LUMA).mean())
    return x * np.float32(factor) + np.float32((1 - factor) * mean_gray)


def saturation(x: np.ndarray, factor: float) -> np.ndarray:
    """Towards each pixel's own grey level."""
    gray = (x @ LUMA.astype(np.float32))[..., None]
    return x * np.float32(factor) + gray * np.float32(1 - factor)


COLOR_STEPS = (brightness, contrast, saturation)


def train_image(img: np.ndarray, spec, rng: np.random.Generator) -> np.ndarray:
    """One augmented training image: HWC uint8 RGB in, CHW float32 normalized out."""
    import cv2

    s = spec.image_size
    if spec.augment == "none":
        return eval_image(img, spec)
    x0, y0, cw, ch = crop_box(img.shape[0], img.shape[1], spec.min_area, rng)
    out = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (s, s), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    x = out.astype(np.float32)
    j = spec.color_jitter
    if j > 0:
        factors = rng.uniform(1 - j, 1 + j, 3)
        for k in rng.permutation(3):
            x = np.clip(COLOR_STEPS[k](x, factors[k]), 0, 255)
    if spec.lighting_std > 0:
        x = np.clip(x + lighting_offsets(rng.normal(0.0, spec.lighting_std, 3)).astype(np.float32), 0, 255)
    return normalized(x, spec)


def eval_image(img: np.ndarray, spec) -> np.ndarray:
    """Validation: shorter side resized to data.val_resize (bilinear), central size x size."""
    import cv2

    from gluon_tricks.data.streams import val_resize

    s, short = spec.image_size, val_resize(spec)
    h, w = img.shape[:2]
    nw, nh = (short, int(h * short / w)) if w <= h else (int(w * short / h), short)
    out = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    y0, x0 = (nh - s) // 2, (nw - s) // 2
    return normalized(out[y0:y0 + s, x0:x0 + s].astype(np.float32), spec)


def normalized(x: np.ndarray, spec) -> np.ndarray:
    """HWC float32 in [0, 255] -> CHW (x/255 - mean)/std."""
    scale = (1.0 / (255.0 * np.asarray(spec.std, np.float32))).astype(np.float32)
    shift = (np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)).astype(np.float32)
    return np.ascontiguousarray((x * scale - shift).transpose(2, 0, 1))


def decode(buf: bytes) -> np.ndarray | None:
    """JPEG/PNG bytes -> HWC uint8 RGB, or None when they do not decode."""
    import cv2

    img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
