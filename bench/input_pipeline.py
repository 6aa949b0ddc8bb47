"""Augmented CIFAR images per second: our batch-wise pipeline vs GluonCV's per-image one.

Same augmentations (flip, brightness/saturation/hue, lighting, pad-4 crop, to
tensor, normalize), same batch size, same images, same core count. The reference
is a Gluon DataLoader over `transforms.Compose` with 0 workers (1 core) and with
one worker per core; ours is the TrainStream producer on 1 thread, and with its
batches split over one thread per core.
"""
from __future__ import annotations

import threading

import numpy as np

from common import cores, median_rate, mini_cifar, print_table, record, reference_loader

BATCH = 128


def ours_rate(images, labels, threads: int) -> float:
    from gluon_tricks.data.augment import CifarAugment
    from gluon_tricks.data.loader import TrainStream
    from gluon_tricks.recipe import IMAGENET_MEAN, IMAGENET_STD

    stream = TrainStream(images, labels, BATCH, CifarAugment(IMAGENET_MEAN, IMAGENET_STD), seed=0, prefetch=0)
    steps = stream.steps_per_epoch()
    order = np.random.default_rng(0).permutation(len(images))

    def run():
        def work(k):
            for s in range(k, steps, threads):
                stream.batch(0, s, order)

        if threads == 1:
            work(0)
            return
        ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    return median_rate(run, steps * BATCH)


def reference_rate(loader, images, workers: int) -> float:
    n = (len(images) // BATCH) * BATCH

    def run():
        for x, y in loader:
            pass

    return median_rate(run, n, repeats=1 if workers == 0 else 2)


def main():
    data = mini_cifar()
    images, labels = data.images, data.labels
    n = cores()
    # The multi-worker reference forks its worker processes when created: do it before anything
    # has started MXNet's OpenMP threads (a fork after them can segfault; see train_step.py).
    loader_n = reference_loader(images, labels, BATCH, n)
    loader_1 = reference_loader(images, labels, BATCH, 0)
    ours1, ref1 = ours_rate(images, labels, 1), reference_rate(loader_1, images, 0)
    oursn = ours_rate(images, labels, n)
    ref_note = ""
    try:
        refn = reference_rate(loader_n, images, n)
    except Exception as e:  # a forked worker segfaulted: the DataLoader times out (see train_step.py)
        ref_note = f"reference with thread workers ({e.__class__.__name__} with process workers): flatters ours"
        refn = reference_rate(reference_loader(images, labels, BATCH, n, threads=True), images, n)
    rows = [
        {"benchmark": "input pipeline, 1 core (img/s)", "ours": ours1, "reference": ref1, "ratio": ours1 / ref1,
         "unit": "img/s", "goal": ">= 20x", "met": ours1 / ref1 >= 20},
        {"benchmark": f"input pipeline, {n} cores (img/s)", "ours": oursn, "reference": refn,
         "ratio": oursn / refn, "unit": "img/s", "goal": f"> 20,000 img/s on {n} cores",
         "met": oursn > 20000, "detail": ref_note},
    ]
    print_table("Input pipeline (CIFAR, follow-up augmentation, batch 128)", rows)
    record("input_pipeline", rows)
    print(f"ratio: ours/reference = {ours1 / ref1:.1f}x on 1 core, {oursn / refn:.1f}x on {n} cores")


if __name__ == "__main__":
    main()
