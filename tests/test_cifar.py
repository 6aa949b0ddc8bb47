"""CIFAR readers against files written in the official binary and python formats."""
import hashlib
import io
import os
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
    import requests

    def offline(*a, **k):
        raise requests.ConnectionError("no network")

    monkeypatch.setattr(requests, "get", offline)
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as e:
        cifar.load_cifar("cifar100", missing, train=True)
    msg = str(e.value)
    assert str(missing) in msg and "train.bin" in msg and "test.bin" in msg and "download failed" in msg


def _serve(directory, monkeypatch):
    """A local HTTP server standing in for MXNet's dataset repository; returns the paths asked for."""
    import functools
    import http.server
    import threading

    asked = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            asked.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Handler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MXNET_GLUON_REPO", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    return server, asked


def _archive_of(files: dict, path):
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, src in files.items():
            tar.add(src, arcname=name)
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_download_fetches_the_archive_mxnet_names_checks_and_unpacks_it(tmp_path, monkeypatch):
    """Absent files -> the archive at MXNet's repository path (gluon/dataset/cifar10/
    cifar-10-binary.tar.gz) is fetched, its SHA-1 checked, and its files read."""
    src = tmp_path / "src"
    src.mkdir()
    xs, ys = write_cifar10_binary(src)
    repo = tmp_path / "repo" / "gluon" / "dataset" / "cifar10"
    repo.mkdir(parents=True)
    sha1 = _archive_of({n: src / n for n in os.listdir(src)}, repo / "cifar-10-binary.tar.gz")
    server, asked = _serve(tmp_path / "repo", monkeypatch)
    real = cifar._official_archive
    monkeypatch.setattr(cifar, "_official_archive", lambda d, r: real(d, r)[:2] + (sha1,))
    try:
        s = cifar.load_cifar("cifar10", tmp_path / "data", train=True)
    finally:
        server.shutdown()
    assert any(a.startswith("/gluon/dataset/cifar10/cifar-10-binary.tar.gz") for a in asked), asked
    np.testing.assert_array_equal(s.images, np.concatenate(xs[:5]))
    np.testing.assert_array_equal(s.labels, np.concatenate(ys[:5]))


def test_download_with_the_wrong_sha1_is_refused(tmp_path, monkeypatch):
    """An archive that is not the official one (MXNet's SHA-1) is never unpacked."""
    src = tmp_path / "src"
    src.mkdir()
    write_cifar10_binary(src)
    repo = tmp_path / "repo" / "gluon" / "dataset" / "cifar10"
    repo.mkdir(parents=True)
    _archive_of({n: src / n for n in os.listdir(src)}, repo / "cifar-10-binary.tar.gz")
    server, _ = _serve(tmp_path / "repo", monkeypatch)
    try:
        with pytest.raises(UserError, match="download failed"):
            cifar.load_cifar("cifar10", tmp_path / "data", train=True)
    finally:
        server.shutdown()
    assert not (tmp_path / "data" / "data_batch_1.bin").exists()


def test_mini_is_the_documented_real_subset():
    """The README's counts, class balance and SHA-256 digests (independent facts)."""
    root = cifar.ensure_mini("cifar10-mini")
    sums = dict(line.split()[::-1] for line in
                (cifar.MINI_DEFINITIONS["cifar10-mini"] / "SHA256SUMS").read_text().splitlines())
    for name, digest in sums.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest
    train = cifar.load_cifar("cifar10-mini", train=True)
    test = cifar.load_cifar("cifar10-mini", train=False)
    assert len(train) == 4660 and len(test) == 846
    assert np.bincount(test.labels).tolist() == [83, 70, 88, 84, 76, 79, 97, 87, 88, 94]


def _global_call_pickle(module: str, name: str, arg: str) -> bytes:
    """A protocol-2 pickle that calls module.name(arg) when loaded (GLOBAL + TUPLE1 + REDUCE),
    written opcode by opcode so the global is exactly the one named, whatever its real module."""
    a = arg.encode()
    return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n"
            + b"X" + len(a).to_bytes(4, "little") + a + b"\x85R.")


@pytest.mark.parametrize("module, name", [
    ("os", "system"),
    ("numpy.testing._private.utils", "runstring"),  # exec() of its argument, shipped in numpy 1.23
    ("numpy", "load"),
    ("builtins", "eval"),
])
def test_python_format_refuses_code_gadgets(tmp_path, module, name):
    """Each global that can run code or read other files is refused, and its code never runs."""
    marker = tmp_path / "PWNED"
    code = {"system": f"touch {marker}", "load": str(marker)}.get(name, f"open({str(marker)!r}, 'w')")
    if name == "runstring":
        code = f"open({str(marker)!r}, 'w').close()"
    sub = tmp_path / "cifar-100-python"
    sub.mkdir()
    for split in ("train", "test"):
        (sub / split).write_bytes(_global_call_pickle(module, name, code))
    with pytest.raises(UserError, match=f"refusing to load {module}.{name}"):
        cifar.load_cifar("cifar100", tmp_path, train=True, download=False)
    assert not marker.exists()


def test_unpickler_allows_only_what_the_official_files_need():
    """Any numpy global outside the allow-list is refused, even harmless-looking ones."""
    for module, name in [("numpy", "frombuffer"), ("numpy.core.multiarray", "array"), ("numpy.lib.npyio", "load")]:
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            cifar._SafeUnpickler(io.BytesIO(_global_call_pickle(module, name, "x")), encoding="bytes").load()


@pytest.mark.parametrize("fine", [True, False])
def test_cifar100_python_format_fine_and_coarse(tmp_path, fine):
    sub = tmp_path / "cifar-100-python"
    sub.mkdir()
    x, coarse, fine_l, _ = cifar_records(12, 100, fine=True, seed=3)
    for name in ("train", "test"):
        python_cifar_file(sub / name, x, {"fine_labels": fine_l, "coarse_labels": coarse})
    s = cifar.load_cifar("cifar100", tmp_path, train=True, fine_labels=fine, download=False)
    np.testing.assert_array_equal(s.labels, fine_l if fine else coarse)
    np.testing.assert_array_equal(s.images, x)
    assert s.classes == (100 if fine else 20)


def test_python_format_with_fewer_labels_than_images_is_refused(tmp_path):
    """Labels shorter than the data would silently shift every later file's labels."""
    sub = tmp_path / "cifar-10-batches-py"
    sub.mkdir()
    for i, name in enumerate(cifar.PYTHON_FILES["cifar10"][0] + cifar.PYTHON_FILES["cifar10"][1]):
        x, y, _, _ = cifar_records(10, 10, fine=False, seed=i)
        python_cifar_file(sub / name, x, {"labels": y[:5] if name == "data_batch_2" else y})
    with pytest.raises(UserError, match=r"data_batch_2: 5 labels for 10 images"):
        cifar.load_cifar("cifar10", tmp_path, train=True, download=False)


def test_out_of_range_label_names_the_file_that_holds_it(tmp_path):
    write_cifar10_binary(tmp_path)
    raw = bytearray((tmp_path / "data_batch_3.bin").read_bytes())
    raw[4 * 3073] = 200  # the label byte of record 5
    (tmp_path / "data_batch_3.bin").write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"data_batch_3.bin: label 200 .*outside 0\.\.9") as e:
        cifar.load_cifar("cifar10", tmp_path, train=True, download=False)
    assert "data_batch_1" not in str(e.value)


def test_stalled_download_ends_in_a_clear_error(tmp_path, monkeypatch):
    """A server that accepts and never answers: the download gives up instead of hanging."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []

    def accept_and_hold():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)  # never answer

    threading.Thread(target=accept_and_hold, daemon=True).start()
    monkeypatch.setenv("MXNET_GLUON_REPO", f"http://127.0.0.1:{server.getsockname()[1]}/")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(cifar, "DOWNLOAD_TIMEOUT", 1.0)
    outcome = []

    def load():
        try:
            cifar.load_cifar("cifar10", tmp_path / "empty", train=True)
        except Exception as e:  # noqa: BLE001 - recorded for the assertion below
            outcome.append(e)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(30)
    hung = worker.is_alive()
    server.close()
    for conn in held:
        conn.close()
    assert not hung, "the download hung on a server that never answers"
    assert len(outcome) == 1 and isinstance(outcome[0], UserError), outcome
    assert "download failed" in str(outcome[0]) and str(tmp_path / "empty") in str(outcome[0])


def test_mini_copy_is_verified_on_load(tmp_path):
    """A damaged copy of a mini set is named, not trained on."""
    import shutil

    for mini, damaged in (("cifar10-mini", "data_batch_2.bin"), ("cifar100-mini", "test.bin")):
        copy = tmp_path / mini
        shutil.copytree(cifar.ensure_mini(mini), copy)
        os.chmod(copy, 0o755)
        os.chmod(copy / damaged, 0o644)
        raw = bytearray((copy / damaged).read_bytes())
        raw[5000] ^= 0xFF  # a pixel byte: the size and labels stay valid
        (copy / damaged).write_bytes(bytes(raw))
        with pytest.raises(UserError, match=f"{damaged}: SHA-256 does not match"):
            cifar.load_cifar(mini, copy, train=damaged != "test.bin")
