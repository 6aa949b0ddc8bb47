"""Augmented CIFAR images per second: our batch-wise pipeline vs GluonCV's per-image one.

Same augmentations (flip, brightness/saturation/hue, lighting, pad-4 crop, to
tensor, normalize), same batch size, same images, same core count. The reference
is a Gluon DataLoader over `transforms.Compose` with 0 workers (1 core) and with
one worker per core; ours is the CifarTrainStream producer on 1 thread, and with its
batches split over one thread per core.

The reference with worker processes runs in a child process of its own (`--reference-workers`)
with OMP_NUM_THREADS=1: its DataLoader forks, and a fork after MXNet's OpenMP threads
exist segfaulted on a loaded 2-core machine (it ended `make bench`). If the child still
crashes, the row is measured with thread workers and says so.
"""
from __future__ import annotations

import json
import sys
import threading

import numpy as np

from common import cores, in_subprocess, median_rate, mini_cifar, print_table, record, reference_loader

BATCH = 128


def ours_rate(images, labels, threads: int) -> float:
    from gluon_tricks.data.augment import CifarAugment
    from gluon_tricks.data.loader import CifarTrainStream
    from gluon_tricks.recipe import IMAGENET_MEAN, IMAGENET_STD

    stream = CifarTrainStream(images, labels, BATCH, CifarAugment(IMAGENET_MEAN, IMAGENET_STD), seed=0, prefetch=0)
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


def reference_with_processes(workers: int) -> None:
    """Child mode: print the process-worker reference's rate as JSON."""
    data = mini_cifar()
    print(json.dumps(reference_rate(reference_loader(data.images, data.labels, BATCH, workers), data.images, workers)))


def main():
    data = mini_cifar()
    images, labels = data.images, data.labels
    n = cores()
    # One worker process per core, each single-threaded (per-image ops gain nothing from OpenMP)
    refn = in_subprocess(__file__, "--reference-workers", str(n), env={"OMP_NUM_THREADS": "1"})
    ref_note = ""
    if refn is None:
        ref_note = "reference with thread workers (its process workers crashed): flatters ours"
        refn = reference_rate(reference_loader(images, labels, BATCH, n, threads=True), images, n)
    ours1, ref1 = ours_rate(images, labels, 1), reference_rate(reference_loader(images, labels, BATCH, 0), images, 0)
    oursn = ours_rate(images, labels, n)
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
    if sys.argv[1:2] == ["--reference-workers"]:
        reference_with_processes(int(sys.argv[2]))
    else:
        main()
