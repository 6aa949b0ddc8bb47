"""Batch-wise CIFAR augmentation on uint8 arrays, vectorized over the batch.

The follow-up paper's training pipeline, per image: horizontal flip (p=0.5);
random brightness, saturation and hue; random PCA lighting; zero-pad to 40x40
and random-crop 32x32; scale to [0, 1]; normalize by the ImageNet mean/std.
Test images are only scaled and normalized.

Why it is written this way (bench/input_pipeline.py measures it against
GluonCV's per-image `transforms.Compose` pipeline):
- brightness, saturation and hue are each a linear map of a pixel's RGB, so the
  three compose into one 3x3 matrix per image and cost one batched matmul;
  lighting is then a per-image RGB offset;
- normalization folds into that matrix and offset, and clipping to [0, 255]
  becomes clipping to the normalized images of 0 and 255;
- the work is done in planar (N, 3, H*W) layout, so numpy loops over pixels,
  not over 3 channels;
- the random crop picks one window per image from a sliding-window view of the
  padded batch (a block copy, not a per-pixel gather), then flips half of them.
The colour operations use the same definitions as MXNet's image transforms
(`RandomBrightness`, `RandomSaturation`, `RandomHue`, `RandomLighting`), applied
in one fixed order (brightness, saturation, hue) instead of a random order, and
clipped to [0, 255] once at the end.
"""
from __future__ import annotations

import threading

import numpy as np

# Luma weights (ITU-R 601) used by MXNet's saturation and by the YIQ transform.
LUMA = np.array([0.299, 0.587, 0.114])
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
# MXNet's RandomHue uses a 3-decimal YIQ->RGB matrix, so its hue 0 shifts pixels by up
# to 0.5/255; the exact inverse makes hue 0 the identity and every rotation keep luma.
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)
# PCA of ImageNet RGB pixels (0..255 scale), as in AlexNet and MXNet's RandomLighting.
PCA_EIGVAL = np.array([55.46, 4.794, 1.148])
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


def color_matrices(brightness: np.ndarray, saturation: np.ndarray, hue: np.ndarray) -> np.ndarray:
    """Per-image 3x3 matrices M such that pixel_row_vector @ M applies brightness
    (x*b), then saturation (s*x + (1-s)*luma(x)), then a hue rotation by hue*pi in YIQ."""
    n = len(brightness)
    eye = np.eye(3)
    m_b = brightness[:, None, None] * eye
    gray = np.outer(LUMA, np.ones(3))  # p @ gray = luma(p) in every channel
    m_s = saturation[:, None, None] * eye + (1 - saturation)[:, None, None] * gray
    u, w = np.cos(hue * np.pi), np.sin(hue * np.pi)
    rot = np.zeros((n, 3, 3))
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = u, -w, w, u
    m_h = np.transpose(YIQ_TO_RGB @ rot @ RGB_TO_YIQ, (0, 2, 1))
    return m_b @ m_s @ m_h


def lighting_offsets(alpha: np.ndarray) -> np.ndarray:
    """AlexNet PCA lighting: per-image RGB offset eigvec @ (alpha * eigval)."""
    return (alpha * PCA_EIGVAL) @ PCA_EIGVEC.T


class CifarAugment:
    """Turns a uint8 NHWC batch into a normalized float32 NCHW batch.

    `train=False` gives the test transform (scale + normalize only).
    `color=False` drops the colour and lighting jitter (GluonCV's CIFAR recipe)."""

    def __init__(self, mean, std, train: bool = True, color: bool = True, pad: int = 4,
                 jitter: float = 0.4, lighting_std: float = 0.1):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.train, self.color, self.pad = train, color, pad
        self.jitter, self.lighting_std = jitter, lighting_std
        # (x/255 - mean)/std == x*scale - shift, one fused multiply-add.
        self.scale = (1.0 / (255.0 * self.std)).astype(np.float32)
        self.shift = (self.mean / self.std).astype(np.float32)
        # Python floats: numpy's clip takes a slow casting path with numpy-scalar bounds.
        self.clip_bounds = [(float(-sh), float(255.0 * sc - sh)) for sc, sh in zip(self.scale, self.shift)]
        self._local = threading.local()

    def _padded(self, n: int, c: int, h: int, w: int) -> np.ndarray:
        """A padded batch buffer, kept per thread: its border is the normalized black pad
        (0 before normalization, so -shift after) and never changes, and reusing it spares
        the page faults of a fresh 2.4 MB array per batch (a quarter of the batch's time)."""
        key = (n, c, h, w)
        buf = getattr(self._local, "padded", None)
        if buf is None or buf[0] != key:
            p = self.pad
            arr = np.empty((n, c, h + 2 * p, w + 2 * p), dtype=np.float32)
            arr[...] = -self.shift[None, :, None, None]
            buf = self._local.padded = (key, arr)
        return buf[1]

    def draw(self, n: int, rng: np.random.Generator) -> dict:
        """All random choices for a batch of n images, one per image."""
        j = self.jitter
        return {
            "flip": rng.random(n) < 0.5,
            "oy": rng.integers(0, 2 * self.pad + 1, n),
            "ox": rng.integers(0, 2 * self.pad + 1, n),
            "brightness": rng.uniform(1 - j, 1 + j, n),
            "saturation": rng.uniform(1 - j, 1 + j, n),
            "hue": rng.uniform(-j, j, n),
            "lighting": rng.normal(0.0, self.lighting_std, (n, 3)),
        }

    def __call__(self, images: np.ndarray, rng: np.random.Generator | None = None, draws: dict | None = None):
        n, h, w, c = images.shape
        # Planar layout first: every later operation then runs along h*w contiguous pixels
        # instead of along the 3 channels (numpy is ~10x slower on a length-3 inner axis).
        x = images.transpose(0, 3, 1, 2).reshape(n, c, h * w).astype(np.float32)
        scale, shift = self.scale[None, :, None], self.shift[None, :, None]
        if not self.train:
            x *= scale
            x -= shift
            return x.reshape(n, c, h, w)
        d = draws if draws is not None else self.draw(n, rng)
        if self.color:
            # Colour, lighting and normalization fused: y = scale * (M^T x + b) - shift,
            # clipped to the normalized images of 0 and 255 (the same as clipping before).
            m = color_matrices(d["brightness"], d["saturation"], d["hue"])
            mt = (np.transpose(m, (0, 2, 1)) * self.scale[None, :, None]).astype(np.float32)
            offset = lighting_offsets(d["lighting"]) * self.scale - self.shift
            x = np.matmul(mt, x)
            x += offset.astype(np.float32)[:, :, None]
            # One scalar-bound clip per channel: ~7x faster than broadcast array bounds.
            for ch, (lo, hi) in enumerate(self.clip_bounds):
                np.clip(x[:, ch], lo, hi, out=x[:, ch])
        else:
            x *= scale
            x -= shift
        p = self.pad
        padded = self._padded(n, c, h, w)
        padded[:, :, p:p + h, p:p + w] = x.reshape(n, c, h, w)
        # Every crop window of every image as a view; pick one window per image (a block copy).
        windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))
        out = windows[np.arange(n), :, d["oy"], d["ox"]]
        flip = d["flip"]
        out[flip] = out[flip][..., ::-1]
        return out


def cifar_augment(spec, train: bool) -> CifarAugment:
    """The augmentation a recipe's [data] section asks for."""
    return CifarAugment(spec.mean, spec.std, train=train and spec.augment != "none",
                        color=spec.augment == "followup", jitter=spec.color_jitter,
                        lighting_std=spec.lighting_std)
