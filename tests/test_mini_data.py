"""The mini sets are not shipped: they are found in $GLUON_TRICKS_DATA or the cache under
$MXNET_HOME, or cut from the official archive. Here the "official" files are generated: the
real subset (from $GLUON_TRICKS_DATA) followed by records that are not part of it, packed the
way the official archives are, so the cut must give the subset back byte for byte."""
import hashlib
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gluon_tricks.data import cifar
from gluon_tricks.errors import UserError

EXTRA = 7  # records after the subset's, which the cut must drop


@pytest.fixture
def no_data_dir(tmp_path, monkeypatch):
    """Real subsets read once from the data directory, then a machine without one: an empty
    MXNET_HOME and no GLUON_TRICKS_DATA."""
    real = {name: cifar.ensure_mini(name) for name in cifar.MINI_RECORDS}
    monkeypatch.delenv("GLUON_TRICKS_DATA", raising=False)
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet"))
    return real


def _longer(raw: bytes, record: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return raw + rng.integers(0, 10, EXTRA * record, dtype=np.uint8).tobytes()


def official_binary_archive(real: Path, dataset: str, path: Path) -> str:
    """An archive laid out as MXNet's cifar-10-binary.tar.gz (cifar-10-batches-bin/...): every
    file the subset's records plus EXTRA more; returns its SHA-1."""
    fmt = cifar.FORMAT_OF[dataset]
    folder = cifar.SUBDIRS[fmt][1]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for i, name in enumerate(cifar.MINI_RECORDS[dataset]):
            src = path.parent / f"src-{name}"
            src.write_bytes(_longer((real / name).read_bytes(), cifar.RECORD_BYTES[fmt], i))
            tar.add(src, arcname=f"{folder}/{name}")
            src.unlink()
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _use_local_archive(monkeypatch, sha1: str) -> None:
    """The archive already in the cache is the official one (its SHA-1 is what MXNet names)."""
    real = cifar._official_archive
    monkeypatch.setattr(cifar, "_official_archive", lambda d, r: real(d, r)[:2] + (sha1,))

    def offline(*args):
        raise AssertionError("downloaded although the archive was there")

    monkeypatch.setattr(cifar, "_fetch", offline)


def _same_bytes(a: Path, b: Path, dataset: str) -> None:
    for name in cifar.MINI_RECORDS[dataset]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("dataset", ["cifar10-mini", "cifar100-mini"])
def test_cut_of_an_official_binary_archive_is_the_subset_byte_for_byte(no_data_dir, dataset, monkeypatch, tmp_path):
    fmt = cifar.FORMAT_OF[dataset]
    archive = tmp_path / "mxnet" / "datasets" / fmt / ("cifar-10-binary.tar.gz" if fmt == "cifar10"
                                                       else "cifar-100-binary.tar.gz")
    _use_local_archive(monkeypatch, official_binary_archive(no_data_dir[dataset], dataset, archive))
    s = cifar.load_cifar(dataset, train=False)
    cache = tmp_path / "mxnet" / "datasets" / dataset
    _same_bytes(cache, no_data_dir[dataset], dataset)
    assert len(s) == cifar.MINI_RECORDS[dataset][cifar.BINARY_FILES[fmt][1][0]]
    assert not [n for n in os.listdir(cache.parent) if ".tmp" in n]  # temporary folders are gone


def test_cut_of_the_official_python_files_is_the_subset_byte_for_byte(no_data_dir, tmp_path):
    """CIFAR-100's python-format files (dicts of fine and coarse labels and N x 3072 rows, as
    the mini set's README defines the cut) give the same bytes as the binary records."""
    real = no_data_dir["cifar100-mini"]
    folder = tmp_path / "mxnet" / "datasets" / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    for i, split in enumerate(("train", "test")):
        rec = np.frombuffer(_longer((real / f"{split}.bin").read_bytes(), 3074, i), np.uint8).reshape(-1, 3074)
        d = {b"filenames": [b"x.png"] * len(rec), b"batch_label": b"batch", b"fine_labels": rec[:, 1].tolist(),
             b"coarse_labels": rec[:, 0].tolist(), b"data": np.ascontiguousarray(rec[:, 2:])}
        with open(folder / split, "wb") as f:
            pickle.dump(d, f, protocol=2)
    cifar.load_cifar("cifar100-mini", train=True)
    _same_bytes(tmp_path / "mxnet" / "datasets" / "cifar100-mini", real, "cifar100-mini")


def test_a_wrong_official_file_is_refused_by_the_shipped_checksums(no_data_dir, monkeypatch, tmp_path):
    """Records in another order are not the subset: nothing is put in place."""
    real = no_data_dir["cifar10-mini"]
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for name in cifar.MINI_RECORDS["cifar10-mini"]:
        rec = np.fromfile(real / name, np.uint8).reshape(-1, 3073)
        rec[[0, 1]] = rec[[1, 0]]
        (shuffled / name).write_bytes(rec.tobytes())
    archive = tmp_path / "mxnet" / "datasets" / "cifar10" / "cifar-10-binary.tar.gz"
    _use_local_archive(monkeypatch, official_binary_archive(shuffled, "cifar10-mini", archive))
    with pytest.raises(UserError, match=r"cifar10-mini is not on this machine .*SHA-256 does not match") as e:
        cifar.load_cifar("cifar10-mini", train=True)
    assert "GLUON_TRICKS_DATA" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "mxnet" / "datasets" / "cifar10-mini").exists()


def test_a_killed_preparations_half_folder_is_neither_used_nor_kept(no_data_dir, monkeypatch, tmp_path):
    """A kill mid-cut leaves only a temporary folder: the next run cuts afresh and removes it."""
    archive = tmp_path / "mxnet" / "datasets" / "cifar10" / "cifar-10-binary.tar.gz"
    _use_local_archive(monkeypatch, official_binary_archive(no_data_dir["cifar10-mini"], "cifar10-mini", archive))
    half = tmp_path / "mxnet" / "datasets" / ".cifar10-mini.tmp99999"
    half.mkdir(parents=True)
    (half / "data_batch_1.bin").write_bytes(b"x" * 3073)
    assert len(cifar.load_cifar("cifar10-mini", train=False)) == 846
    assert not half.exists()


def test_offline_and_missing_is_one_line_naming_both_ways(no_data_dir, monkeypatch):
    def no_network(*args):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(cifar, "_fetch", no_network)
    with pytest.raises(UserError) as e:
        cifar.load_cifar("cifar10-mini", train=True)
    text = str(e.value)
    assert "\n" not in text
    assert "set GLUON_TRICKS_DATA to a data directory holding cifar10-mini/" in text
    assert "download" in text and "ConnectionError" in text


def test_the_data_directory_comes_before_the_cache(no_data_dir, monkeypatch, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(no_data_dir["cifar10-mini"], data / "cifar10-mini")
    monkeypatch.setenv("GLUON_TRICKS_DATA", str(data))
    assert cifar.default_root("cifar10-mini") == data / "cifar10-mini"
    assert len(cifar.load_cifar("cifar10-mini", train=False)) == 846
    assert not (tmp_path / "mxnet" / "datasets" / "cifar10-mini").exists()


RACER = textwrap.dedent("""
    import os, sys, time
    from gluon_tricks.data import cifar

    sha1, log = sys.argv[1], sys.argv[2]
    real = cifar._official_archive
    cifar._official_archive = lambda d, r: real(d, r)[:2] + (sha1,)

    def counted(name, fn):
        def wrapper(*args):
            with open(log, "a") as f:
                f.write(name + "\\n")
            time.sleep(0.5)  # widen the window in which an unlocked second process would join in
            return fn(*args)
        return wrapper

    cifar._unpack = counted("unpack", cifar._unpack)
    cifar.cut_mini = counted("cut", cifar.cut_mini)
    s = cifar.load_cifar("cifar10-mini", train=True)
    print(len(s), int(s.labels.sum()))
""")


def test_four_processes_preparing_at_once_prepare_once(no_data_dir, tmp_path):
    """Rows of `table --run --parallel` on a fresh machine: one unpacks and cuts, the others wait
    for it and read the same files."""
    archive = tmp_path / "mxnet" / "datasets" / "cifar10" / "cifar-10-binary.tar.gz"
    sha1 = official_binary_archive(no_data_dir["cifar10-mini"], "cifar10-mini", archive)
    log = tmp_path / "calls.log"
    env = dict(os.environ, MXNET_HOME=str(tmp_path / "mxnet"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    env.pop("GLUON_TRICKS_DATA", None)
    procs = [subprocess.Popen([sys.executable, "-c", RACER, sha1, str(log)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in outs]
    assert len({out for out, _ in outs}) == 1 and outs[0][0].split()[0] == "4660"
    assert sorted(log.read_text().split()) == ["cut", "unpack"]
    _same_bytes(tmp_path / "mxnet" / "datasets" / "cifar10-mini", no_data_dir["cifar10-mini"], "cifar10-mini")
