"""CIFAR readers against files written in the official binary and python formats."""
import hashlib
import pickle

import numpy as np
import pytest

from conftest import cifar_records, python_cifar_file
from gluon_tricks.data import cifar
from gluon_tricks.errors import UserError


def write_cifar10_binary(root, n_per_file=20):
    expected_x, expected_y = [], []
    for i, name in enumerate(cifar.BINARY_FILES["cifar10"][0] + cifar.BINARY_FILES["cifar10"][1]):
        x, y, _, raw = cifar_records(n_per_file, 10, fine=False, seed=i)
        (root / name).write_bytes(raw)
        expected_x.append(x)
        expected_y.append(y)
    return expected_x, expected_y


def test_cifar10_binary_round_trip(tmp_path):
    xs, ys = write_cifar10_binary(tmp_path)
    train = cifar.load_cifar("cifar10", tmp_path, train=True, download=False)
    test = cifar.load_cifar("cifar10", tmp_path, train=False, download=False)
    np.testing.assert_array_equal(train.images, np.concatenate(xs[:5]))
    np.testing.assert_array_equal(train.labels, np.concatenate(ys[:5]))
    np.testing.assert_array_equal(test.images, xs[5])
    assert train.images.dtype == np.uint8 and train.images.shape == (100, 32, 32, 3)
    assert train.classes == 10


@pytest.mark.parametrize("fine", [True, False])
def test_cifar100_binary_fine_and_coarse(tmp_path, fine):
    sub = tmp_path / "cifar-100-binary"  # the folder the official archive unpacks into
    sub.mkdir()
    x, coarse, fine_l, raw = cifar_records(30, 100, fine=True)
    (sub / "train.bin").write_bytes(raw)
    (sub / "test.bin").write_bytes(raw)
    s = cifar.load_cifar("cifar100", tmp_path, train=True, fine_labels=fine, download=False)
    np.testing.assert_array_equal(s.labels, fine_l if fine else coarse)
    np.testing.assert_array_equal(s.images, x)
    assert s.classes == (100 if fine else 20)


def test_cifar10_python_format(tmp_path):
    sub = tmp_path / "cifar-10-batches-py"
    sub.mkdir()
    xs = []
    for i, name in enumerate(cifar.PYTHON_FILES["cifar10"][0] + cifar.PYTHON_FILES["cifar10"][1]):
        x, y, _, _ = cifar_records(10, 10, fine=False, seed=i)
        python_cifar_file(sub / name, x, {"labels": y})
        xs.append((x, y))
    s = cifar.load_cifar("cifar10", tmp_path, train=True, download=False)
    np.testing.assert_array_equal(s.images, np.concatenate([x for x, _ in xs[:5]]))
    np.testing.assert_array_equal(s.labels, np.concatenate([y for _, y in xs[:5]]))


def test_cifar100_python_format_coarse(tmp_path):
    sub = tmp_path / "cifar-100-python"
    sub.mkdir()
    x, coarse, fine_l, _ = cifar_records(12, 100, fine=True)
    for name in ("train", "test"):
        python_cifar_file(sub / name, x, {"fine_labels": fine_l, "coarse_labels": coarse})
    s = cifar.load_cifar("cifar100", tmp_path, train=False, fine_labels=False, download=False)
    np.testing.assert_array_equal(s.labels, coarse)
    np.testing.assert_array_equal(s.images, x)


def test_python_format_refuses_code(tmp_path):
    """A pickle that would run code is refused, not executed."""
    sub = tmp_path / "cifar-100-python"
    sub.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in ("train", "test"):
        with open(sub / name, "wb") as f:
            pickle.dump({b"data": Evil(), b"fine_labels": [0]}, f)
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        cifar.load_cifar("cifar100", tmp_path, train=True, download=False)


def test_wrong_size_file_is_a_clear_error(tmp_path):
    write_cifar10_binary(tmp_path)
    with open(tmp_path / "data_batch_3.bin", "ab") as f:
        f.write(b"\x00" * 17)
    with pytest.raises(UserError, match=r"data_batch_3.bin: .* not a whole number of 3073-byte"):
        cifar.load_cifar("cifar10", tmp_path, train=True, download=False)


def test_missing_directory_offline_names_dir_and_files(tmp_path, monkeypatch):
    import mxnet as mx

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(mx.gluon.data.vision, "CIFAR100", offline)
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as e:
        cifar.load_cifar("cifar100", missing, train=True)
    msg = str(e.value)
    assert str(missing) in msg and "train.bin" in msg and "test.bin" in msg and "download failed" in msg


def test_download_path_uses_mxnet_dataset(tmp_path, monkeypatch):
    """Absent files -> MXNet's CIFAR10 class is asked to download into the root."""
    import mxnet as mx

    calls = []

    def fake_download(root, train):
        calls.append(root)
        xs, ys = write_cifar10_binary(tmp_path)  # what the real archive would unpack

    monkeypatch.setattr(mx.gluon.data.vision, "CIFAR10", fake_download)
    s = cifar.load_cifar("cifar10", tmp_path, train=True)
    assert calls == [str(tmp_path)] and len(s) == 100


def test_vendored_mini_is_the_documented_real_subset():
    """The README's counts, class balance and SHA-256 digests (independent facts)."""
    root = cifar.MINI_ROOT
    sums = dict(line.split()[::-1] for line in (root / "SHA256SUMS").read_text().splitlines())
    for name, digest in sums.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest
    train = cifar.load_cifar("cifar10-mini", train=True)
    test = cifar.load_cifar("cifar10-mini", train=False)
    assert len(train) == 4660 and len(test) == 846
    assert np.bincount(test.labels).tolist() == [83, 70, 88, 84, 76, 79, 97, 87, 88, 94]
