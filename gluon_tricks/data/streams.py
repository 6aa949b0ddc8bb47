"""What every batch stream shares: the protocols the engine relies on, the random
streams, and the validation resize of the ImageNet-style readers.

A train stream yields (step, images NCHW float32, int_labels) for the steps of an epoch
from a given step on; label smoothing and mixing belong to the training step. A test
stream yields (images, int_labels) over the whole test set, in order.

All randomness of training is a pure function of (seed, epoch, step): the shuffle order
of an epoch comes from Generator([seed, epoch]), and a step's augmentation and mixing
draws from Generator([seed, epoch, step, RNG_AUGMENT or RNG_MIX]). A run resumed at any
step therefore sees exactly the batches an uninterrupted run would, with no RNG state to save.
"""
from __future__ import annotations

import math
from typing import Iterator, Protocol

import numpy as np

from gluon_tricks.errors import UserError, shown

RNG_AUGMENT, RNG_MIX = 1, 2  # ids of a step's two random sub-streams (augmentation, mixing)


def step_rng(seed: int, epoch: int, step: int, rng_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, step, rng_id])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class TrainStream(Protocol):
    def steps_per_epoch(self) -> int: ...

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple]: ...


class TestStream(Protocol):
    def __len__(self) -> int: ...

    def batches(self) -> Iterator[tuple]: ...


def val_resize(spec) -> int:
    """Shorter side before the center crop: data.val_resize, else image_size x 256/224."""
    return spec.val_resize or int(math.ceil(spec.image_size * 256 / 224))


def trimmed_batches(batches, n: int):
    """(images, labels) batches cut to the first `n` images in all (test_limit, padding)."""
    seen = 0
    for x, y, valid in batches:
        k = min(valid, n - seen)
        if k <= 0:
            break
        yield x[:k], y[:k]
        seen += k


def train_class_index(val_names: list[str], train_names: list[str], where: str) -> list[int]:
    """For each validation class name, its index among training's class names. Gluon's
    ImageFolderDataset and im2rec number a folder's classes on their own, so a val/ lacking
    a class would shift the labels of the rest; a UserError names the classes training lacks."""
    extra = [c for c in val_names if c not in train_names]
    if extra:
        raise UserError(f"{shown(where)} has classes that train does not: {', '.join(map(repr, extra))[:300]}; "
                        "val and train need the same class folders (val may lack some)")
    index = {name: i for i, name in enumerate(train_names)}
    return [index[c] for c in val_names]
