"""CIFAR-10 / CIFAR-100 readers for the official binary and python formats.

Both return uint8 images in NHWC layout and int32 labels. When no files are
found, MXNet's own dataset classes download and verify the official archives
(`mx.gluon.data.vision.CIFAR10/CIFAR100`); offline, the error names the
directory and the files that were expected.

The python format is a pickle. Pickles can run code, so it is read with an
unpickler that only builds dicts, lists, strings, numbers and numpy arrays
(`_SafeUnpickler`); anything else in the file is refused.
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gluon_tricks.errors import UserError

MINI_ROOT = Path(__file__).parent / "cifar10_mini"

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Official file names of each format: (train files, test files).
BINARY_FILES = {
    "cifar10": ([f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"]),
    "cifar100": (["train.bin"], ["test.bin"]),
}
PYTHON_FILES = {
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    "cifar100": (["train"], ["test"]),
}
# Sub-folders the official archives unpack into.
SUBDIRS = {
    "cifar10": ["", "cifar-10-batches-bin", "cifar-10-batches-py"],
    "cifar100": ["", "cifar-100-binary", "cifar-100-python"],
}
RECORD_BYTES = {"cifar10": 1 + 3072, "cifar100": 2 + 3072}


@dataclass
class ImageSet:
    images: np.ndarray  # uint8, (N, H, W, 3)
    labels: np.ndarray  # int32, (N,)
    classes: int

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> "ImageSet":
        return self if n <= 0 else ImageSet(self.images[:n], self.labels[:n], self.classes)


def default_root(dataset: str) -> Path:
    if dataset == "cifar10-mini":
        return MINI_ROOT
    home = os.environ.get("MXNET_HOME", os.path.join(os.path.expanduser("~"), ".mxnet"))
    return Path(home) / "datasets" / dataset


def read_binary(path: Path, dataset: str, fine_labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One official binary file: records of label byte(s) + 3072 planar RGB bytes."""
    rec = RECORD_BYTES[dataset]
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % rec:
        raise UserError(
            f"{path}: {raw.size} bytes is not a whole number of {rec}-byte {dataset} records; "
            f"the file is truncated or not {dataset} binary format: download it again"
        )
    raw = raw.reshape(-1, rec)
    if dataset == "cifar100":
        labels = raw[:, 1] if fine_labels else raw[:, 0]
    else:
        labels = raw[:, 0]
    images = raw[:, rec - 3072:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


class _SafeUnpickler(pickle.Unpickler):
    """Builds only plain containers and numpy arrays: the CIFAR python files need no more."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_python(path: Path, dataset: str, fine_labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One official python-format file: a pickled dict with b'data' (N x 3072) and labels."""
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise UserError(f"{path}: not a CIFAR python-format file ({e}); download it again") from None
    key = b"labels" if dataset == "cifar10" else (b"fine_labels" if fine_labels else b"coarse_labels")
    if not isinstance(d, dict) or b"data" not in d or key not in d:
        raise UserError(f"{path}: CIFAR python-format file without b'data' and {key!r}; download it again")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: data has shape {data.shape}, expected (N, 3072)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(d[key], dtype=np.int32)


def _find_files(root: Path, dataset: str, train: bool):
    """(reader, [paths]) of the first format whose files are all present, or None."""
    for sub in SUBDIRS[dataset]:
        for files, reader in ((BINARY_FILES, read_binary), (PYTHON_FILES, read_python)):
            names = files[dataset][0 if train else 1]
            paths = [root / sub / n for n in names]
            if all(p.is_file() for p in paths):
                return reader, paths
    return None


def _download(root: Path, dataset: str) -> None:
    """MXNet's own download + SHA1 check of the official binary archive."""
    import mxnet as mx  # deferred: reading files must not need MXNet

    cls = mx.gluon.data.vision.CIFAR10 if dataset == "cifar10" else mx.gluon.data.vision.CIFAR100
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(root=str(root), train=True)
    except Exception as e:  # requests' and MXNet's network errors have no common base class
        expected = ", ".join(BINARY_FILES[dataset][0] + BINARY_FILES[dataset][1])
        raise UserError(
            f"{dataset} not found in {root} and the download failed ({e.__class__.__name__}); "
            f"put the official files there ({expected}, or the python-format files) "
            f"or set data.root to where they are"
        ) from None


def load_cifar(dataset: str, root: str | Path = "", train: bool = True, fine_labels: bool = True,
               download: bool = True) -> ImageSet:
    name = "cifar10" if dataset == "cifar10-mini" else dataset
    if name not in BINARY_FILES:
        raise UserError(f"unknown CIFAR dataset {dataset!r}; use cifar10, cifar100 or cifar10-mini")
    root = Path(root) if root else default_root(dataset)
    found = _find_files(root, name, train)
    if found is None and download and dataset != "cifar10-mini":
        _download(root, name)
        found = _find_files(root, name, train)
    if found is None:
        expected = ", ".join(BINARY_FILES[name][0 if train else 1])
        raise UserError(
            f"no {dataset} {'training' if train else 'test'} files in {root}: expected {expected} "
            f"(binary format) or the python-format files; set data.root to the directory that holds them"
        )
    reader, paths = found
    parts = [reader(p, name, fine_labels) for p in paths]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    classes = 10 if name == "cifar10" else (100 if fine_labels else 20)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise UserError(f"{paths[0]}: labels outside 0..{classes - 1}; is this really {dataset}?")
    return ImageSet(images, labels, classes)
