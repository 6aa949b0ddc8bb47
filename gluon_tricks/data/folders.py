"""Image-folder streams (data.dataset = "imagefolder"): data.root holds `train/` and
`val/` with one sub-folder per class, read by Gluon's ImageFolderDataset and DataLoader
with the Bag of Tricks augmentation as Gluon transforms (small datasets, Food-101 subsets).

The training order of an epoch is `loader.epoch_order(n, seed, epoch)` (EpochSampler),
a pure function of (seed, epoch) as for CIFAR, and each image's augmentation draws are
a function of (seed, epoch, image), so runs repeat and a resumed epoch sees exactly the
batches an uninterrupted one sees.
"""
from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import numpy as np

from gluon_tricks.data.loader import epoch_order
from gluon_tricks.data.streams import trimmed_batches, val_resize
from gluon_tricks.errors import UserError, shown
from gluon_tricks.paths import cores


class EpochSampler:
    """Gluon sampler: this worker's indices of the current epoch (`set_epoch`).

    Every worker walks the same epoch order (`epoch_order` of the whole folder) in global
    batches of `global_batch` and takes its slice of each, as the CIFAR stream does: so
    every worker has the same number of steps (a synchronous job never waits on a worker
    that has run out), and N workers see what one process with N devices sees."""

    def __init__(self, n: int, seed: int, rank: int = 0, workers: int = 1, global_batch: int | None = None):
        self.n, self.seed, self.epoch = n, seed, 0
        self.rank, self.workers = rank, workers
        self.global_batch = global_batch or n
        self.steps = n // self.global_batch
        self.per_worker = self.global_batch // workers

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch)
        for k in range(self.steps):
            start = k * self.global_batch + self.rank * self.per_worker
            yield from order[start:start + self.per_worker].tolist()

    def __len__(self) -> int:
        return self.steps * self.per_worker


class NamedDecodeErrors:
    """An image-folder dataset whose unreadable files are named in a one-line error."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except Exception as e:  # OpenCV/MXNet decode errors have no common type
            path = self.dataset.items[i][0] if hasattr(self.dataset, "items") else f"item {i}"
            if isinstance(e, UnicodeEncodeError):  # MXNet's imread takes the name as UTF-8 (probe 7.19)
                raise UserError(f"image {shown(path)}: its file name is not UTF-8, which MXNet's image reader "
                                "cannot open; rename it, or convert the folder with `gluon-tricks prepare`, "
                                "which reads such names") from None
            raise UserError(f"unreadable image {shown(path)} ({e.__class__.__name__}); delete or replace it, "
                            "or convert the folder with `gluon-tricks prepare`, which skips and lists such files") from None


def _chain(steps):
    """Apply transform blocks one after another. Not `transforms.Compose`: it hybridizes its
    HybridBlock steps, and building that cached graph from the DataLoader's threads at once
    races inside MXNet (name scopes are not thread-safe); plain calls are."""

    def apply(x):
        for step in steps:
            x = step(x)
        return x

    return apply


def folder_transforms(spec, train: bool):
    from mxnet.gluon.data.vision import transforms as T

    s = spec.image_size
    if not train:
        return _chain([T.Resize(val_resize(spec), keep_ratio=True), T.CenterCrop(s), T.ToTensor(),
                       T.Normalize(spec.mean, spec.std)])
    steps = []
    if spec.augment != "none":
        steps += [T.RandomResizedCrop(s, scale=(spec.min_area, 1.0), ratio=(3 / 4, 4 / 3)), T.RandomFlipLeftRight()]
        if spec.color_jitter > 0:
            steps.append(T.RandomColorJitter(brightness=spec.color_jitter, contrast=spec.color_jitter,
                                             saturation=spec.color_jitter))
        if spec.lighting_std > 0:
            steps.append(T.RandomLighting(spec.lighting_std))
    else:
        steps += [T.Resize(val_resize(spec), keep_ratio=True), T.CenterCrop(s)]
    return _chain(steps + [T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def _folder(root: Path, part: str):
    import mxnet as mx

    path = root / part
    if not path.is_dir():
        raise UserError(f"image folder {path} not found; data.root needs train/ and val/ with one sub-folder per class")
    return mx.gluon.data.vision.ImageFolderDataset(str(path))


class GluonTrainStream:
    """Training batches of a Gluon dataset of (HWC uint8 image, label), augmented by Gluon's
    transforms (`folder_transforms`) with seeded per-image draws: image folders, and the
    RecordIO files whose images MXNet's C++ iterator would crop wrongly (data/recordio.py)."""

    def __init__(self, recipe, dataset, rank: int, workers: int, where: str):
        import mxnet as mx

        spec = recipe.data
        self.batch_size = spec.batch_size // workers
        n = len(dataset) if not spec.train_limit else min(len(dataset), spec.train_limit)
        self.steps = n // spec.batch_size
        if self.steps < 1:
            raise UserError(f"{where} holds fewer images than one batch of {spec.batch_size}")
        # Threads, not processes: a decode error then surfaces as our one-line UserError.
        self.sampler = EpochSampler(n, recipe.seed, rank, workers, spec.batch_size)
        self.loader = mx.gluon.data.DataLoader(_SeededTransform(dataset, folder_transforms(spec, True),
                                                                recipe.seed, self.sampler),
                                               batch_size=self.batch_size, sampler=self.sampler, last_batch="discard",
                                               num_workers=cores(), thread_pool=True)

    def steps_per_epoch(self) -> int:
        return self.steps

    def epoch(self, epoch: int, start_step: int = 0):
        self.sampler.set_epoch(epoch)
        for step, (x, y) in enumerate(self.loader):
            if step >= self.steps:
                break
            if step < start_step:
                continue
            yield step, x, y.asnumpy().astype(np.int64)


class _TransformFirst:
    def __init__(self, dataset, fn):
        self.dataset, self.fn = dataset, fn

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return self.fn(x), y


class FolderTrainStream(GluonTrainStream):
    def __init__(self, recipe, root: Path, rank: int, workers: int):
        ds = _folder(root, "train")
        self.classes = len(ds.synsets)
        super().__init__(recipe, NamedDecodeErrors(ds), rank, workers, str(root / "train"))


_SEEDED = threading.Lock()


class _SeededTransform(_TransformFirst):
    """Training transforms whose random draws are a function of (seed, epoch, image):
    Gluon's transforms draw from Python's `random` and MXNet's global generator, which
    the loader's threads share, so each image re-seeds both under a lock and waits for its
    result before releasing it. Decoding (the costly part) stays parallel; the draws of
    an epoch, and of a resumed epoch, are then the same in every process."""

    def __init__(self, dataset, fn, seed: int, sampler: "EpochSampler"):
        super().__init__(dataset, fn)
        self.seed, self.sampler = seed, sampler

    def __getitem__(self, i):
        import mxnet as mx

        x, y = self.dataset[i]
        draw = np.random.default_rng([self.seed, self.sampler.epoch, i]).integers(0, 2 ** 31, 2)
        with _SEEDED:
            random.seed(int(draw[0]))
            mx.random.seed(int(draw[1]))
            out = self.fn(x)
            out.wait_to_read()
        return out, y


class _Relabelled:
    """A val dataset whose labels are train's indices of the same class names (Gluon numbers
    each folder's classes on its own, so a val/ lacking a class would shift the rest)."""

    def __init__(self, dataset, to_train: list[int]):
        self.dataset, self.to_train = dataset, to_train
        self.items = getattr(dataset, "items", None)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x, self.to_train[int(y)]


def by_train_names(val_classes: list[str], train_classes: list[str], where: str) -> list[int]:
    """For each val class, its index in train's class list; a UserError names classes train lacks."""
    extra = [c for c in val_classes if c not in train_classes]
    if extra:
        raise UserError(f"{shown(where)} has classes that train does not: {', '.join(map(repr, extra))[:300]}; "
                        "val and train need the same class folders (val may lack some)")
    return [train_classes.index(c) for c in val_classes]


class FolderTestStream:
    def __init__(self, recipe, root: Path):
        import mxnet as mx

        spec = recipe.data
        ds = _folder(root, "val")
        train_classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir()) \
            if (root / "train").is_dir() else list(ds.synsets)
        ds = _Relabelled(ds, by_train_names(list(ds.synsets), train_classes, str(root / "val")))
        self.n = len(ds) if not spec.test_limit else min(len(ds), spec.test_limit)
        self.loader = mx.gluon.data.DataLoader(_TransformFirst(NamedDecodeErrors(ds), folder_transforms(spec, False)),
                                               batch_size=spec.batch_size, shuffle=False, last_batch="keep",
                                               num_workers=cores(), thread_pool=True)

    def __len__(self) -> int:
        return self.n

    def batches(self):
        return trimmed_batches(((x, y.asnumpy().astype(np.int64), x.shape[0]) for x, y in self.loader), self.n)
