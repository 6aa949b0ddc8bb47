"""Datasets and batch streams. `make_streams` picks the reader a recipe names: CIFAR
(cifar.py, loader.py), RecordIO (recordio.py) or image folders (folders.py).

A train stream has `steps_per_epoch()` and `epoch(epoch, start_step)` yielding
(step, images, int_labels) with images NCHW float32 (numpy or NDArray); label
smoothing and mixing belong to the training step, not the stream. A test stream
has `batches()` yielding (images, int_labels) and `__len__` (data/streams.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from gluon_tricks.data.cifar import ImageSet, load_cifar
from gluon_tricks.data.streams import TestStream, TrainStream
from gluon_tricks.errors import UserError
from gluon_tricks.paths import mxnet_home

CIFAR_SETS = ("cifar10", "cifar100", "cifar10-mini", "cifar100-mini")


def load_datasets(spec) -> tuple[ImageSet, ImageSet]:
    """(train, test) image sets of a CIFAR recipe's [data] section."""
    if spec.dataset not in CIFAR_SETS:
        raise UserError(f"data.dataset = {spec.dataset!r} is not a CIFAR set")
    train = load_cifar(spec.dataset, spec.root, train=True, fine_labels=spec.fine_labels)
    test = load_cifar(spec.dataset, spec.root, train=False, fine_labels=spec.fine_labels)
    return train.head(spec.train_limit), test.head(spec.test_limit)


@dataclass
class Streams:
    """What a run reads: its two streams, the number of classes the model predicts, and the
    number of images in the training set (after data.train_limit; every worker's)."""
    train: TrainStream
    test: TestStream
    classes: int
    train_images: int


# Which augmentations each reader implements: the CIFAR ones are batch-wise numpy on 32-px
# images, the ImageNet-style ones (RecordIO, image folders) the Bag of Tricks pipeline.
AUGMENTS = {"cifar": ("followup", "gluoncv", "none"), "imagenet": ("bot", "none")}


def check_augment(spec) -> None:
    kind = "cifar" if spec.dataset in CIFAR_SETS else "imagenet"
    if spec.augment not in AUGMENTS[kind]:
        raise UserError(f"data.augment = {spec.augment!r} is not an augmentation of data.dataset = "
                        f"{spec.dataset!r}; use one of: {', '.join(AUGMENTS[kind])}")


def make_streams(recipe, rank: int = 0, workers: int = 1, contexts=None) -> Streams:
    """The streams of worker `rank` of `workers`; `contexts`: the devices the run trains on
    (RecordIO batches are staged in host memory pinned for the first)."""
    spec = recipe.data
    check_augment(spec)
    if spec.dataset in CIFAR_SETS:
        from gluon_tricks.data.augment import cifar_augment
        from gluon_tricks.data.loader import CifarTestStream, CifarTrainStream

        train, test = load_datasets(spec)
        classes = recipe.model.classes or train.classes
        top = max(int(train.labels.max(initial=0)), int(test.labels.max(initial=0)))
        if top >= classes:
            raise UserError(f"model.classes = {classes} but {spec.dataset} has labels up to {top}; "
                            f"set model.classes to at least {top + 1}, or 0 for the dataset's {train.classes}")
        stream = CifarTrainStream(train.images, train.labels, spec.batch_size, cifar_augment(spec, train=True),
                                  recipe.seed, part=rank, parts=workers)
        return Streams(stream, CifarTestStream(test.images, test.labels, spec.batch_size,
                                               cifar_augment(spec, train=False)), classes, len(train))
    root = Path(spec.root) if spec.root else mxnet_home() / "datasets" / "imagenet"
    if spec.dataset == "recordio":
        from gluon_tricks.data.recordio import (RecordTestStream, RecordTrainStream, iterator_device, record_classes,
                                                record_train_stream)

        RecordTrainStream.check_files(root)
        # A recipe that names its classes (Bag of Tricks: ImageNet's 1000) needs no scan of the
        # records when neither a classes list nor a .lst says what their labels span.
        found = record_classes(root, scan=not recipe.model.classes)
        classes = recipe.model.classes or found
        if found and classes < found:
            raise UserError(f"model.classes = {classes} but the labels of {root}/train.rec span {found} classes; "
                            "set model.classes to 0 (that count) or more")
        if not classes:
            raise UserError(f"number of classes unknown: {root}/train.rec holds no records; set model.classes")
        device = iterator_device(contexts)
        train = record_train_stream(recipe, root, rank, workers, device)
        return Streams(train, RecordTestStream(recipe, root, device), classes, train.image_count)
    from gluon_tricks.data.folders import FolderTestStream, FolderTrainStream

    train = FolderTrainStream(recipe, root, rank, workers)
    classes = recipe.model.classes or train.classes
    if classes < train.classes:
        raise UserError(f"model.classes = {classes} but {root}/train has {train.classes} class folders; "
                        "set model.classes to 0 (the folder count) or more")
    return Streams(train, FolderTestStream(recipe, root), classes, train.image_count)
