"""Image-folder streams (data.dataset = "imagefolder"): data.root holds `train/` and
`val/` with one sub-folder per class, read by Gluon's ImageFolderDataset and DataLoader
with the Bag of Tricks augmentation as Gluon transforms (small datasets, Food-101 subsets).

The training order of an epoch is `loader.epoch_order(n, seed, epoch)` (EpochSampler),
a pure function of (seed, epoch) as for CIFAR; the transforms draw from MXNet's and
Python's RNGs, so a resumed run matches an uninterrupted one only statistically.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gluon_tricks.data.loader import epoch_order
from gluon_tricks.data.streams import trimmed_batches, val_resize
from gluon_tricks.errors import UserError


class EpochSampler:
    """Gluon sampler: the indices 0..n-1 in the order of the current epoch (`set_epoch`)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_order(self.n, self.seed, self.epoch).tolist())

    def __len__(self) -> int:
        return self.n


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
            raise UserError(f"unreadable image {path} ({e.__class__.__name__}); delete or replace it, "
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


class FolderTrainStream:
    def __init__(self, recipe, root: Path, rank: int, workers: int):
        import mxnet as mx

        spec = recipe.data
        ds = _folder(root, "train")
        self.classes = len(ds.synsets)
        if workers > 1:
            ds = ds.shard(workers, rank)
        self.batch_size = spec.batch_size // workers
        n = len(ds) if not spec.train_limit else min(len(ds), spec.train_limit)
        self.steps = n // self.batch_size
        if self.steps < 1:
            raise UserError(f"{root / 'train'} holds fewer images than one batch of {self.batch_size}")
        # Threads, not processes: a decode error then surfaces as our one-line UserError.
        self.sampler = EpochSampler(len(ds), recipe.seed)
        self.loader = mx.gluon.data.DataLoader(_TransformFirst(NamedDecodeErrors(ds), folder_transforms(spec, True)),
                                               batch_size=self.batch_size, sampler=self.sampler, last_batch="discard",
                                               num_workers=os.cpu_count() or 1, thread_pool=True)

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


class FolderTestStream:
    def __init__(self, recipe, root: Path):
        import mxnet as mx

        spec = recipe.data
        ds = _folder(root, "val")
        self.n = len(ds) if not spec.test_limit else min(len(ds), spec.test_limit)
        self.loader = mx.gluon.data.DataLoader(_TransformFirst(NamedDecodeErrors(ds), folder_transforms(spec, False)),
                                               batch_size=spec.batch_size, shuffle=False, last_batch="keep",
                                               num_workers=os.cpu_count() or 1, thread_pool=True)

    def __len__(self) -> int:
        return self.n

    def batches(self):
        return trimmed_batches(((x, y.asnumpy().astype(np.int64), x.shape[0]) for x, y in self.loader), self.n)
