"""Decoded-and-augmented 224-px images/s from class folders with 2 workers: our image-folder
stream (OpenCV and numpy on 2 Python threads, gluon_tricks/data/images.py) vs GluonCV's
reader for folders (ImageFolderDataset + its training transform + DataLoader(num_workers=2),
worker processes).

Both read the same generated JPEGs (bench/recordio.py's images: 300x400, photo-like) with
the Bag of Tricks augmentation (random-resized crop, flip, brightness/contrast/saturation,
PCA lighting, normalize) at batch 32. The reference's worker processes fork, so it runs in a
child process of its own with single-threaded OpenMP (as in input_pipeline.py); if that
crashes, it is measured with thread workers and the row says so. Before images.py our
stream sent every image through Gluon's transforms and so through MXNet's one CPU engine
thread: about one core whatever the worker count (gpu-readiness-2 finding 11).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common import in_subprocess, print_table, record, tmpdir
from recordio import BATCH, IMAGES, make_images, rate, reference_rate

WORKERS = 2


def ours_rate(root: Path) -> float:
    from gluon_tricks.data.folders import FolderTrainStream
    from gluon_tricks.recipe import recipe_from_dict

    r = recipe_from_dict({"data": {"dataset": "imagefolder", "root": str(root), "augment": "bot",
                                   "image_size": 224, "batch_size": BATCH}})
    stream = FolderTrainStream(r, root, 0, 1, threads=WORKERS)
    return rate(lambda: (x for _, x, _ in stream.epoch(0)), IMAGES)


def main():
    root = tmpdir()
    make_images(root)
    ref = in_subprocess(str(Path(__file__).with_name("recordio.py")), "--reference", str(root), str(WORKERS),
                        env={"OMP_NUM_THREADS": "1"})
    note = ""
    if ref is None:
        note = "; reference with thread workers (its process workers crashed)"
        ref = reference_rate(root, threads=True, workers=WORKERS)
    ours = ours_rate(root)
    rows = [{"benchmark": f"image folders 224-px decode+augment, {WORKERS} workers (img/s)", "ours": ours,
             "reference": ref, "ratio": ours / ref, "unit": "img/s", "goal": ">= 1.5x", "met": ours / ref >= 1.5,
             "detail": f"ours: {WORKERS} threads; GluonCV: DataLoader(num_workers={WORKERS}){note}"}]
    print_table("Image folders (224 px, Bag of Tricks augmentation)", rows)
    record("image_folder", rows)
    print(f"ratio: ours/reference = {ours / ref:.2f}x")


if __name__ == "__main__":
    main()
