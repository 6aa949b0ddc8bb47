"""Decoded-and-augmented 224-px images/s from RecordIO: our ImageRecordIter stream vs a
Gluon ImageFolderDataset + DataLoader reference with the same augmentation.

Both read the same few hundred generated JPEGs (the reference from the class folders,
ours from the RecordIO file `gluon-tricks prepare` writes from them) and produce
normalized 224x224 float batches with random-resized crop, flip, colour jitter and PCA
lighting, using every core. The reference's worker processes fork, so it runs in a child
process of its own (single-threaded OpenMP, as in input_pipeline.py); if that crashes, it is
measured with thread workers and the row says so.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from common import cores, in_subprocess, print_table, record, reference_bot_transform, tmpdir

BATCH, IMAGES = 32, 384


def make_images(root):
    import cv2

    rng = np.random.default_rng(0)
    for c in range(4):
        d = root / "train" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(IMAGES // 4):
            img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
            img = cv2.GaussianBlur(img, (9, 9), 3)  # photo-like, so JPEG sizes are realistic
            cv2.imwrite(str(d / f"{i}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])


def rate(batches, n_images) -> float:
    next(iter(batches()))  # warm-up: thread pools, first decode
    t0 = time.perf_counter()
    seen = 0
    for x in batches():
        seen += x.shape[0]
        getattr(x, "wait_to_read", lambda: None)()  # an NDArray is ready only when MXNet says so
    return seen / (time.perf_counter() - t0)


def recipe_for(root: Path):
    from gluon_tricks.recipe import recipe_from_dict

    return recipe_from_dict({"data": {"dataset": "recordio", "root": str(root / "rec"), "augment": "bot",
                                      "image_size": 224, "batch_size": BATCH}, "model": {"name": "resnet50_v1"}})


def reference_rate(root: Path, threads: bool, workers: int | None = None) -> float:
    """GluonCV's ImageNet reader for class folders: ImageFolderDataset, its training
    transform, a DataLoader with `workers` worker processes (or threads)."""
    import mxnet as mx

    transform = reference_bot_transform(224)
    if threads:  # Compose hybridizes: build its graph once before several threads call it
        transform(mx.nd.zeros((300, 400, 3), dtype="uint8")).wait_to_read()
    ds = mx.gluon.data.vision.ImageFolderDataset(str(root / "train")).transform_first(transform)
    loader = mx.gluon.data.DataLoader(ds, batch_size=BATCH, shuffle=True, last_batch="discard",
                                      num_workers=workers or cores(), thread_pool=threads)
    return rate(lambda: (x for x, _ in loader), IMAGES)


def main():
    from gluon_tricks.data.prepare import prepare
    from gluon_tricks.data.recordio import RecordTrainStream

    root = tmpdir()
    make_images(root)
    prepare(root / "train", root / "rec" / "train", workers=cores(), progress=False)
    ref_rate = in_subprocess(__file__, "--reference", str(root), env={"OMP_NUM_THREADS": "1"})
    ref_note = ""
    if ref_rate is None:
        ref_note = "; reference with thread workers (its process workers crashed)"
        ref_rate = reference_rate(root, threads=True)
    ours = RecordTrainStream(recipe_for(root), root / "rec", 0, 1)
    ours_rate = rate(lambda: (b[1] for b in ours.epoch(0)), IMAGES)
    n = cores()
    rows = [{"benchmark": f"RecordIO 224-px decode+augment ({n} cores, img/s)", "ours": ours_rate,
             "reference": ref_rate, "ratio": ours_rate / ref_rate, "unit": "img/s", "goal": "> 1x",
             "met": ours_rate > ref_rate, "detail": f"per core: {ours_rate / n:.0f} vs {ref_rate / n:.0f}{ref_note}"}]
    print_table("ImageNet-style input (224 px, Bag of Tricks augmentation)", rows)
    record("recordio", rows)
    print(f"ratio: ours/reference = {ours_rate / ref_rate:.2f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--reference"]:
        print(json.dumps(reference_rate(Path(sys.argv[2]), threads=False, workers=int(sys.argv[3]) if sys.argv[3:] else None)))
    else:
        main()
