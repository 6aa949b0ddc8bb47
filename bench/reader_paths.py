"""Train the same images through the two ImageNet-style readers and compare top-1.

The 4,660 cifar10-mini training images (and its 846 test images) are written as PNG class
folders; one run reads them as `imagefolder`, the other through `gluon-tricks prepare` and
RecordIO (a third run prepares the training images at 36 px, so that MXNet's C++
iterator does the crops). Same recipe otherwise: CIFAR ResNet-20, the Bag of Tricks augmentation at 32 px,
4 epochs, lr 0.1, seed 0. Before apache/mxnet#16925 was worked around (data/recordio.py),
the RecordIO run trained on smeared images and reached 24.2% against 38.3%.

    python bench/reader_paths.py [--epochs 4] [--out bench/out/reader_paths]

About 4 minutes of CPU per run here (--only NAME... runs some). Not part of `make bench` (it measures accuracy, not speed).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import gluon_tricks  # noqa: F401  first: with the GPU wheel it loads the pip CUDA libraries (cuda_libs.py)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_folders(out: Path) -> None:
    import cv2

    from gluon_tricks.data.cifar import load_cifar

    for part, train in (("train", True), ("val", False)):
        data = load_cifar("cifar10-mini", train=train)
        for i, (img, label) in enumerate(zip(data.images, data.labels)):
            d = out / part / f"class{int(label)}"
            d.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / f"{i:05d}.png"), img[:, :, ::-1])  # RGB -> BGR for OpenCV


def main() -> int:
    from gluon_tricks.data.prepare import prepare
    from gluon_tricks.engine import train
    from gluon_tricks.recipe import recipe_from_dict

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--only", nargs="+", default=["recordio", "imagefolder", "recordio-resize36"],
                   choices=["recordio", "imagefolder", "recordio-resize36"])
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "reader_paths"))
    args = p.parse_args()
    out = Path(args.out)
    images = out / "images"
    if not (images / "val").is_dir():
        shutil.rmtree(images, ignore_errors=True)
        write_folders(images)
    paths = {"recordio": ("recordio", out / "records"), "imagefolder": ("imagefolder", images),
             # shorter side 36: not the training size, so MXNet's C++ iterator does the crops
             "recordio-resize36": ("recordio", out / "records36")}
    for name, resize in (("recordio", 0), ("recordio-resize36", 36)):
        records = paths[name][1]
        if name in args.only and not (records / "val.rec").is_file():
            for part in ("train", "val"):
                prepare(images / part, records / part, resize=resize if part == "train" else 0, progress=False)
    result_file = out / "result.json"
    results = json.loads(result_file.read_text()) if result_file.is_file() else {}
    for name in args.only:
        dataset, root = paths[name]
        recipe = recipe_from_dict({
            "name": f"reader-{name}", "epochs": args.epochs, "seed": 0,
            "model": {"name": "cifar_resnet20_v1", "classes": 10},
            "optim": {"lr": 0.1},
            "data": {"dataset": dataset, "root": str(root), "augment": "bot", "image_size": 32,
                     "batch_size": 64}})
        run = out / "runs" / name
        shutil.rmtree(run, ignore_errors=True)
        result = train(recipe, run, progress=False)
        results[name] = round(result["final_top1"], 2)
        print(f"{name}: top-1 {results[name]}", flush=True)
        result_file.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
