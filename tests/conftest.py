"""Shared fixtures: CIFAR files generated in the official formats, tiny recipes."""
from __future__ import annotations

# Before any test module imports mxnet: with the GPU wheel, gluon_tricks's import loads the
# pip CUDA libraries libmxnet.so needs (cuda_libs.py); after mxnet it is too late.
import gluon_tricks  # noqa: F401  isort: skip

import os
import pickle

from gluon_tricks.paths import cores

os.environ.setdefault("OMP_NUM_THREADS", str(cores()))

import numpy as np
import pytest


def cifar_records(n: int, classes: int, fine: bool, seed: int = 0):
    """Random images and labels, plus the bytes of an official binary file holding them."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    planar = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    if fine:  # CIFAR-100: coarse label byte, fine label byte, pixels
        coarse = rng.integers(0, 20, n).astype(np.uint8)
        fine_l = rng.integers(0, 100, n).astype(np.uint8)
        raw = np.concatenate([coarse[:, None], fine_l[:, None], planar], axis=1)
        return images, coarse, fine_l, raw.tobytes()
    labels = rng.integers(0, classes, n).astype(np.uint8)
    raw = np.concatenate([labels[:, None], planar], axis=1)
    return images, labels, None, raw.tobytes()


def python_cifar_file(path, images, labels_key_values: dict):
    """A python-format CIFAR file exactly as the official ones: a pickled dict of bytes keys."""
    d = {b"batch_label": b"testing batch", b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072)}
    d.update({k.encode(): list(map(int, v)) for k, v in labels_key_values.items()})
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)



@pytest.fixture(autouse=True)
def _cpu_unless_a_gpu_test(request, monkeypatch):
    """On a GPU machine every test but the `gpu` smoke suite still runs on the CPU: their
    exact-equality assertions are about the CPU's arithmetic, and the default `--ctx auto`
    would move them (and the training subprocesses some tests start) to the GPUs."""
    if request.node.get_closest_marker("gpu"):
        return
    import mxnet as mx

    monkeypatch.setattr(mx.context, "num_gpus", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

@pytest.fixture
def tiny_recipe_dict(tmp_path):
    """A recipe for seconds-long runs on real images: ResNet-20 on 256 cifar10-mini images."""
    return {
        "name": "tiny",
        "epochs": 2,
        "data": {"dataset": "cifar10-mini", "batch_size": 64, "train_limit": 256, "test_limit": 128},
        "model": {"name": "cifar_resnet20_v1"},
        "schedule": {"kind": "step", "decay_epochs": [1]},
        "system": {"log_interval": 1},
    }
