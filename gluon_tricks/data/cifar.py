"""CIFAR-10 / CIFAR-100 readers for the official binary and python formats.

Both return uint8 images in NHWC layout and int32 labels. When no files are
found, MXNet's own dataset classes download and verify the official archives
(`mx.gluon.data.vision.CIFAR10/CIFAR100`); offline, the error names the
directory and the files that were expected.

The vendored real subsets (`cifar10-mini`, `cifar100-mini`) are checked against
their SHA256SUMS on load, so a damaged copy is named instead of trained on.

The python format is a pickle. Pickles can run code, so it is read with an
unpickler that only builds dicts, lists, strings, numbers and numpy arrays
(`_SafeUnpickler`); anything else in the file is refused.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gluon_tricks.errors import UserError, shown
from gluon_tricks.paths import mxnet_home

# The real subsets shipped inside the package (each folder's README says how they were cut).
MINI_ROOTS = {
    "cifar10-mini": Path(__file__).parent / "cifar10_mini",
    "cifar100-mini": Path(__file__).parent / "cifar100_mini",
}
MINI_ROOT = MINI_ROOTS["cifar10-mini"]
# The official format each name is read as.
FORMAT_OF = {"cifar10": "cifar10", "cifar100": "cifar100", "cifar10-mini": "cifar10", "cifar100-mini": "cifar100"}
# Seconds without a byte from the server before a download gives up (per connect and per read,
# so a slow but moving download is never cut).
DOWNLOAD_TIMEOUT = 60.0

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
    if dataset in MINI_ROOTS:
        return MINI_ROOTS[dataset]
    return mxnet_home() / "datasets" / dataset


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
    return np.ascontiguousarray(images), labels.astype(np.int64)


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
    data = _pixels(np.asarray(d[b"data"]), path)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: data has shape {data.shape}, expected (N, 3072)")
    labels = _integer_labels(d[key], path, key.decode())
    if len(labels) != len(data):
        # Accepting it would pair every later image with another image's label.
        raise UserError(f"{path}: {len(labels)} labels for {len(data)} images; the file is damaged: download it again")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _pixels(data: np.ndarray, path: Path) -> np.ndarray:
    """The official files hold uint8 pixels. Any other integer array must stay in 0..255, and
    floats are refused: a cast would turn images in [0, 1] into black ones and wrap 256 to 0
    (reliability-redteam-2 probes 7.3, 7.4)."""
    if data.dtype.kind not in "ui":
        raise UserError(f"{path}: data has dtype {data.dtype}, expected integer pixels 0..255 (uint8); "
                        "float images? multiply by 255 and cast to uint8")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise UserError(f"{path}: data holds values {data.min()}..{data.max()}, expected pixels 0..255 (uint8)")
    return data.astype(np.uint8)


def _integer_labels(values, path: Path, key: str) -> np.ndarray:
    """Integer labels (numbers, or digit strings as some converters write them); a float label
    would be truncated to another class (probe 7.5)."""
    try:
        raw = np.asarray(values)
        if raw.ndim == 1 and raw.dtype.kind in "uiSU":
            return raw.astype(np.int64)
    except (TypeError, ValueError):
        raw = None
    dtype = f" (dtype {raw.dtype})" if raw is not None and raw.dtype.kind == "f" else ""
    raise UserError(f"{path}: {key} is not a list of integer labels{dtype}; download it again")


def _find_files(root: Path, dataset: str, train: bool):
    """(reader, [paths]) of the first format whose files are all present, or None."""
    for sub in SUBDIRS[dataset]:
        for files, reader in ((BINARY_FILES, read_binary), (PYTHON_FILES, read_python)):
            names = files[dataset][0 if train else 1]
            paths = [root / sub / n for n in names]
            if all(p.is_file() for p in paths):
                return reader, paths
    return None


def _official_archive(dataset: str, root: Path) -> tuple[str, str, str]:
    """(URL, file name, SHA-1) of the official binary archive, as MXNet's CIFAR classes name them."""
    import mxnet as mx  # deferred: reading files must not need MXNet

    cls = mx.gluon.data.vision.CIFAR10 if dataset == "cifar10" else mx.gluon.data.vision.CIFAR100

    class _Archive(cls):
        def _get_data(self):  # MXNet's constructor names the archive and its SHA-1, then calls this
            pass

    info = _Archive(root=str(root))
    name, sha1 = info._archive_file
    return mx.gluon.utils._get_repo_file_url("gluon/dataset/" + info._namespace, name), name, sha1


def _download(root: Path, dataset: str) -> None:
    """The official binary archive from MXNet's dataset repository, SHA-1 checked and unpacked.

    MXNet's own `CIFAR10/100` download passes no timeout to `requests`, so a connection that
    stalls hangs forever; this fetches the same archive (MXNet's URL, name and SHA-1) with a
    timeout per connect and per read."""
    import requests

    from gluon_tricks.results import atomic_write_bytes

    expected = ", ".join(BINARY_FILES[dataset][0] + BINARY_FILES[dataset][1])
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a read-only MXNET_HOME: not a download failure (probe 3.8)
        raise UserError(f"{dataset} not found in {shown(root)}, and cannot create {shown(root)} to download it into: "
                        f"{e.strerror}; set MXNET_HOME or data.root to a writable directory") from None
    try:
        url, name, sha1 = _official_archive(dataset, root)
        print(f"downloading {dataset} from {url} into {root}", flush=True)
        with requests.get(url, stream=True, timeout=(DOWNLOAD_TIMEOUT, DOWNLOAD_TIMEOUT)) as r:
            r.raise_for_status()
            archive = b"".join(r.iter_content(chunk_size=1 << 20))
        if hashlib.sha1(archive).hexdigest() != sha1:
            raise ValueError(f"{name} has the wrong SHA-1")
        atomic_write_bytes(root / name, archive)
        with tarfile.open(root / name) as tar:
            tar.extractall(root, filter="data")
    except UserError:
        raise
    except Exception as e:  # requests', tarfile's and OS errors have no common base class
        raise UserError(
            f"{dataset} not found in {root} and the download failed ({e.__class__.__name__}); "
            f"put the official files there ({expected}, or the python-format files) "
            f"or set data.root to where they are"
        ) from None


_VERIFIED: set = set()


def verify_checksums(root: Path) -> None:
    """Check every file a SHA256SUMS in `root` lists (once per file version and process)."""
    from gluon_tricks.results import sha256_file

    sums = root / "SHA256SUMS"
    if not sums.is_file():
        return
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = root / name.lstrip("*")
        try:
            st = path.stat()
        except OSError:
            raise UserError(f"{path}: listed in {sums} but missing; reinstall gluon-tricks "
                            "(or `git checkout` the folder)") from None
        key = (str(path), st.st_size, st.st_mtime_ns, digest)
        if key in _VERIFIED:
            continue
        if sha256_file(path) != digest:
            raise UserError(f"{path}: SHA-256 does not match {sums}; the copy is damaged: reinstall "
                            "gluon-tricks (or `git checkout` the folder)")
        _VERIFIED.add(key)


def load_cifar(dataset: str, root: str | Path = "", train: bool = True, fine_labels: bool = True,
               download: bool = True) -> ImageSet:
    name = FORMAT_OF.get(dataset)
    if name is None:
        raise UserError(f"unknown CIFAR dataset {dataset!r}; use one of: {', '.join(FORMAT_OF)}")
    root = Path(root) if root else default_root(dataset)
    if dataset in MINI_ROOTS:
        verify_checksums(root)
    found = _find_files(root, name, train)
    if found is None and download and dataset not in MINI_ROOTS:
        _download(root, name)
        found = _find_files(root, name, train)
    if found is None:
        expected = ", ".join(BINARY_FILES[name][0 if train else 1])
        raise UserError(
            f"no {dataset} {'training' if train else 'test'} files in {root}: expected {expected} "
            f"(binary format) or the python-format files; set data.root to the directory that holds them"
        )
    reader, paths = found
    classes = 10 if name == "cifar10" else (100 if fine_labels else 20)
    images, labels = [], []
    for path in paths:
        x, y = reader(path, name, fine_labels)
        bad = np.flatnonzero((y < 0) | (y >= classes))
        if bad.size:
            raise UserError(f"{path}: label {int(y[bad[0]])} of record {int(bad[0]) + 1} is outside "
                            f"0..{classes - 1}; is this really {dataset}?")
        images.append(x)
        labels.append(y)
    return ImageSet(np.concatenate(images), np.concatenate(labels).astype(np.int32), classes)
