"""Shared bits of the benchmarks: timing, the reference pipeline, result records.

Every benchmark measures ours and a reference side by side in one process and
reports their ratio; absolute times depend on the machine and are only context.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Every benchmark imports this module before its functions import mxnet: importing
# gluon_tricks (here through paths.py) first loads, with the GPU wheel, the pip CUDA
# libraries libmxnet.so needs (cuda_libs.py).
from gluon_tricks.paths import cores  # noqa: F401  (the benchmarks take it from here)

os.environ.setdefault("OMP_NUM_THREADS", str(cores()))

OUT = Path(__file__).parent / "out"


def median_rate(fn, items: int, repeats: int = 3) -> float:
    """Items per second of fn(), the median of `repeats` timed calls after one warm-up."""
    fn()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - t0))
    return statistics.median(rates)


def seconds_per_call(fn, repeats: int = 20) -> float:
    """Mean seconds of fn() over `repeats` calls after one warm-up, waiting for MXNet's
    asynchronous engine to finish before each clock read."""
    import mxnet as mx

    fn()
    mx.nd.waitall()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    mx.nd.waitall()
    return (time.perf_counter() - t0) / repeats


def record(name: str, rows: list[dict]) -> None:
    """Append this benchmark's rows to bench/out/<name>.json (run_all.py collects them)."""
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(rows, indent=2))


TABLE_HEAD = ["| benchmark | ours | reference | ratio | goal | met | note |", "|---|---|---|---|---|---|---|"]


def format_row(r: dict) -> str:
    """One benchmark row as a markdown table line (the one formatter: console and results.md)."""
    ref = "" if r.get("reference") is None else f"{r['reference']:.4g}"
    ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
    return (f"| {r['benchmark']} | {r['ours']:.4g} {r.get('unit', '')} | {ref} | {ratio} | "
            f"{r.get('goal', '')} | {'yes' if r.get('met') else 'no'} | {r.get('detail', '')} |")


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}\n")
    for line in TABLE_HEAD + [format_row(r) for r in rows]:
        print(line)


def in_subprocess(script: str, *args: str, timeout: float = 1800, env: dict | None = None):
    """Run `python script *args` and return the JSON it prints last, or None if it crashed or
    timed out: a reference that segfaults is reported as such instead of ending the whole bench."""
    import subprocess

    try:
        proc = subprocess.run([sys.executable, script, *args], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    except subprocess.TimeoutExpired:
        note(f"{script} {' '.join(args)} ran past {timeout:.0f} s")
        return None
    if proc.returncode:
        note(f"{script} {' '.join(args)} exited with {proc.returncode}: {proc.stderr.strip()[-300:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def reference_cifar_transform(color: bool = True):
    """GluonCV's CIFAR scripts' per-image pipeline, rebuilt from the public API, with the
    follow-up paper's colour and lighting jitter when `color` is set."""
    from gluoncv.data import transforms as gcv_transforms
    from mxnet.gluon.data.vision import transforms

    from gluon_tricks.recipe import IMAGENET_MEAN, IMAGENET_STD

    steps = [transforms.RandomFlipLeftRight()]
    if color:
        steps += [transforms.RandomColorJitter(brightness=0.4, saturation=0.4, hue=0.4),
                  transforms.RandomLighting(0.1)]
    steps += [gcv_transforms.RandomCrop(32, pad=4), transforms.ToTensor(),
              transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return transforms.Compose(steps)


def reference_bot_transform(size: int = 224):
    """GluonCV's train_imagenet.py training transform (the Bag of Tricks augmentation as
    Gluon transforms), rebuilt from the public API."""
    from mxnet.gluon.data.vision import transforms

    from gluon_tricks.recipe import IMAGENET_MEAN, IMAGENET_STD

    return transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomFlipLeftRight(),
                               transforms.RandomColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
                               transforms.RandomLighting(0.1), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def reference_loader(images, labels, batch_size: int, workers: int, color: bool = True, threads: bool = False):
    import mxnet as mx

    dataset = mx.gluon.data.ArrayDataset(mx.nd.array(images, dtype="uint8"), labels.astype("float32"))
    transform = reference_cifar_transform(color)
    if threads:  # Compose hybridizes: build its graph here once, since building it from several
        transform(dataset[0][0]).wait_to_read()  # threads at once races in MXNet's name scopes
    return mx.gluon.data.DataLoader(dataset.transform_first(transform),
                                    batch_size=batch_size, shuffle=True, last_batch="discard",
                                    num_workers=workers, thread_pool=threads)


def mini_cifar():
    from gluon_tricks.data.cifar import load_cifar

    return load_cifar("cifar10-mini", train=True)


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="gt-bench-"))


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
