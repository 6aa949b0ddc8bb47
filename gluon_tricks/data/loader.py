"""The CIFAR streams: training batches of augmented images and integer labels, produced
ahead on a background thread, and the test set in order.

The shuffle order of an epoch and the augmentation draws of a step come from
streams.epoch_order and streams.step_rng: a run resumed at any step sees exactly the
batches an uninterrupted run would.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np

from gluon_tricks.data.streams import RNG_AUGMENT, epoch_order, step_rng


class CifarTrainStream:
    """Batches of one worker in a job of `parts` workers.

    Every global step takes the same global batch (batch_size images of the epoch's
    order), whatever the number of workers; worker `part` takes its contiguous slice,
    and the augmentation draws are made for the whole global batch and sliced. So N
    workers with one device each compute exactly what one process with N devices
    computes (split_and_load hands device k the k-th slice), BatchNorm groups included."""

    def __init__(self, images, labels, batch_size, augment, seed, part=0, parts=1, prefetch=2):
        self.images, self.labels = images, labels
        self.global_batch, self.augment, self.seed = batch_size, augment, seed
        self.batch_size = batch_size // parts
        self.part, self.parts, self.prefetch = part, parts, prefetch
        if len(images) < batch_size:
            from gluon_tricks.errors import UserError

            raise UserError(f"only {len(images)} training images for a batch of {batch_size}; "
                            "lower data.batch_size or use more data")

    def steps_per_epoch(self) -> int:
        return len(self.images) // self.global_batch

    def indices(self, order: np.ndarray, step: int) -> np.ndarray:
        start = step * self.global_batch + self.part * self.batch_size
        return order[start:start + self.batch_size]

    def batch(self, epoch: int, step: int, order: np.ndarray):
        idx = self.indices(order, step)
        rng = step_rng(self.seed, epoch, step, RNG_AUGMENT)
        draws = None
        if getattr(self.augment, "train", False):
            full = self.augment.draw(self.global_batch, rng)
            part = slice(self.part * self.batch_size, (self.part + 1) * self.batch_size)
            draws = {k: v[part] for k, v in full.items()}
        return self.augment(self.images[idx], draws=draws), self.labels[idx]

    def epoch(self, epoch: int, start_step: int = 0):
        """Yields (step, images, int_labels) for the steps of `epoch` from `start_step` on."""
        order = epoch_order(len(self.images), self.seed, epoch)
        steps = range(start_step, self.steps_per_epoch())
        if self.prefetch <= 0:
            for s in steps:
                yield (s,) + self.batch(epoch, s, order)
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for s in steps:
                    item = (s,) + self.batch(epoch, s, order)
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(None)
            except BaseException as e:  # re-raised in the consumer
                q.put(e)

        t = threading.Thread(target=produce, daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()


@dataclass
class CifarTestStream:
    images: np.ndarray
    labels: np.ndarray
    batch_size: int
    augment: object

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self):
        """The whole test set in order, the last batch possibly smaller."""
        for i in range(0, len(self.images), self.batch_size):
            yield self.augment(self.images[i:i + self.batch_size]), self.labels[i:i + self.batch_size]
