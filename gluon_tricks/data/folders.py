"""Image-folder streams (data.dataset = "imagefolder"): data.root holds `train/` and
`val/` with one sub-folder per class (small datasets, Food-101 subsets), decoded by OpenCV
and augmented by images.py on one Python thread per core.

The training order of an epoch is `streams.epoch_order(n, seed, epoch)` (EpochSampler),
a pure function of (seed, epoch) as for CIFAR, and each image's augmentation draws are
a function of (seed, epoch, image), so runs repeat and a resumed epoch sees exactly the
batches an uninterrupted one sees.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gluon_tricks.data.images import decode, eval_image, train_image
from gluon_tricks.data.streams import epoch_order, train_class_index
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


def _folder(root: Path, part: str):
    import mxnet as mx

    path = root / part
    if not path.is_dir():
        raise UserError(f"image folder {path} not found; data.root needs train/ and val/ with one sub-folder per class")
    return mx.gluon.data.vision.ImageFolderDataset(str(path))


class FolderImages:
    """(HWC uint8 RGB image, label) of class folders: the files and labels Gluon's
    ImageFolderDataset lists (sorted class folders, its extensions), decoded by OpenCV in
    the calling thread. `labels` renumbers the folders' own labels (val by train's names)."""

    def __init__(self, dataset, labels: list[int] | None = None):
        self.items, self.synsets = dataset.items, dataset.synsets
        self.labels = labels

    def __len__(self):
        return len(self.items)

    def load(self, i: int) -> tuple[np.ndarray, int]:
        path, label = self.items[i]
        try:
            with open(path, "rb") as f:
                img = decode(f.read())
        except OSError as e:
            img, why = None, e.strerror
        else:
            why = "not an image OpenCV can decode"
        if img is None:
            raise UserError(f"unreadable image {shown(path)} ({why}); delete or replace it, or convert the folder "
                            "with `gluon-tricks prepare`, which skips and lists such files")
        return img, int(label) if self.labels is None else self.labels[int(label)]


def threaded_batches(fn, index_batches, threads: int, ahead: int = 2):
    """(images NCHW float32, int64 labels) of each batch of indices: fn(i) -> (CHW image, label)
    runs on `threads` threads, `ahead` batches in advance of the one being consumed. An
    exception of fn (a UserError naming a bad file) is raised here, in the batch's turn."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="images")
    pending, batches = deque(), iter(index_batches)

    def submit():
        idx = next(batches, None)
        if idx is not None:
            pending.append([pool.submit(fn, i) for i in idx])

    try:
        for _ in range(ahead + 1):
            submit()
        while pending:
            futures = pending.popleft()
            submit()
            done = [f.result() for f in futures]
            yield np.stack([x for x, _ in done]), np.array([y for _, y in done], np.int64)
    finally:  # also when the consumer stops early: nothing keeps decoding for no one
        pool.shutdown(wait=True, cancel_futures=True)


class ThreadedTrainStream:
    """Training batches of images that `images.load(i)` decodes (image folders; the RecordIO
    files MXNet's C++ iterator would crop wrongly, data/recordio.py), augmented by
    `images.train_image` on `threads` Python threads (images.py says why not Gluon's
    transforms). Image i's draws in an epoch come from a generator seeded with (seed, epoch, i)."""

    def __init__(self, recipe, images, rank: int, workers: int, where: str, threads: int | None = None):
        spec = recipe.data
        self.spec, self.seed, self.images = spec, recipe.seed, images
        self.batch_size = spec.batch_size // workers
        n = len(images) if not spec.train_limit else min(len(images), spec.train_limit)
        self.image_count = n
        self.steps = n // spec.batch_size
        if self.steps < 1:
            raise UserError(f"{where} holds fewer images than one batch of {spec.batch_size}")
        self.sampler = EpochSampler(n, recipe.seed, rank, workers, spec.batch_size)
        self.threads = threads or cores()

    def steps_per_epoch(self) -> int:
        return self.steps

    def _augmented(self, epoch: int, i: int):
        img, label = self.images.load(i)
        return train_image(img, self.spec, np.random.default_rng([self.seed, epoch, i])), label

    def epoch(self, epoch: int, start_step: int = 0):
        self.sampler.set_epoch(epoch)
        order, per = list(self.sampler), self.batch_size
        index_batches = (order[k * per:(k + 1) * per] for k in range(start_step, self.steps))
        batches = threaded_batches(lambda i: self._augmented(epoch, i), index_batches, self.threads)
        for step, (x, y) in enumerate(batches, start_step):
            yield step, x, y


class FolderTrainStream(ThreadedTrainStream):
    def __init__(self, recipe, root: Path, rank: int, workers: int, threads: int | None = None):
        images = FolderImages(_folder(root, "train"))
        self.classes = len(images.synsets)
        super().__init__(recipe, images, rank, workers, str(root / "train"), threads)


class FolderTestStream:
    def __init__(self, recipe, root: Path, threads: int | None = None):
        spec = recipe.data
        ds = _folder(root, "val")
        # Gluon numbers each folder's classes on its own: a val/ lacking a class would shift
        # the rest, so val's labels are train's indices of the same class names.
        train_classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir()) \
            if (root / "train").is_dir() else list(ds.synsets)
        self.images = FolderImages(ds, train_class_index(list(ds.synsets), train_classes, str(root / "val")))
        self.n = len(self.images) if not spec.test_limit else min(len(self.images), spec.test_limit)
        self.spec, self.threads = spec, threads or cores()

    def __len__(self) -> int:
        return self.n

    def _image(self, i: int):
        img, label = self.images.load(i)
        return eval_image(img, self.spec), label

    def batches(self):
        b = self.spec.batch_size
        return threaded_batches(self._image, (range(k, min(k + b, self.n)) for k in range(0, self.n, b)), self.threads)
