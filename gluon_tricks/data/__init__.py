"""Datasets and batch streams. `make_streams` picks the reader a recipe names.

A train stream has `steps_per_epoch()` and `epoch(epoch, start_step)` yielding
(step, images, soft_targets, int_labels) with images NCHW float32 (numpy or
NDArray); a test stream has `batches()` yielding (images, int_labels) and `__len__`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gluon_tricks.data.cifar import ImageSet, load_cifar
from gluon_tricks.errors import UserError

CIFAR_SETS = ("cifar10", "cifar100", "cifar10-mini", "cifar100-mini")


def load_datasets(spec) -> tuple[ImageSet, ImageSet]:
    """(train, test) image sets of a CIFAR recipe's [data] section."""
    if spec.dataset not in CIFAR_SETS:
        raise UserError(f"data.dataset = {spec.dataset!r} is not a CIFAR set")
    train = load_cifar(spec.dataset, spec.root, train=True, fine_labels=spec.fine_labels)
    test = load_cifar(spec.dataset, spec.root, train=False, fine_labels=spec.fine_labels)
    return train.head(spec.train_limit), test.head(spec.test_limit)


@dataclass
class CifarTest:
    images: np.ndarray
    labels: np.ndarray
    batch_size: int
    augment: object

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self):
        from gluon_tricks.data.loader import test_batches

        return test_batches(self.images, self.labels, self.batch_size, self.augment)


def make_streams(recipe, rank: int = 0, workers: int = 1):
    """(train stream, test stream, number of classes, number of training images)."""
    spec = recipe.data
    if spec.dataset in CIFAR_SETS:
        from gluon_tricks.data.augment import cifar_augment
        from gluon_tricks.data.loader import TrainStream

        train, test = load_datasets(spec)
        classes = recipe.model.classes or train.classes
        stream = TrainStream(train.images, train.labels, classes, spec.batch_size,
                             cifar_augment(spec, train=True), recipe.seed, recipe.smoothing.eps,
                             recipe.smoothing.form, part=rank, parts=workers)
        return stream, CifarTest(test.images, test.labels, spec.batch_size, cifar_augment(spec, train=False)), \
            classes, len(train)
    from gluon_tricks.data.imagenet import make_imagenet_streams

    return make_imagenet_streams(recipe, rank, workers)
