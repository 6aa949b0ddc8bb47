"""Files a kill cannot cut: each is written to a temporary name, fsynced and renamed, so a kill
at any moment leaves either the old or the new version. Also the SHA-256 of a file, and a
run's own files opened without following a symlink by their name (probe 9.6)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

from gluon_tricks.errors import UserError, shown


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_error(e: OSError, what: Path) -> UserError:
    reason = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror or str(e)
    return UserError(f"could not write {shown(what)}: {reason}; free space or choose another --runs directory "
                     "(the previous checkpoint and results are intact)")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        _discard(tmp)
        raise disk_error(e, path) from None


def _discard(tmp: Path) -> None:
    """Remove a temporary file after a failed write; a second error (e.g. a read-only
    filesystem) is dropped: the first one is the one to report."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` the way atomic_write_bytes writes: a kill mid-copy leaves the old `dst`
    (or none), never a cut one."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    except OSError as e:
        _discard(tmp)
        if isinstance(e, IsADirectoryError):
            raise
        raise disk_error(e, dst) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file, read in 1 MiB chunks (hashlib.file_digest needs Python 3.11)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")



def open_own_file(path: Path, flags: int) -> int:
    """A file descriptor of a run's own regular file, never of what a symlink by its name points to."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        fd = None
    if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    if fd is not None:
        os.close(fd)
    raise UserError(f"{shown(path)} is a symlink or not a regular file; a run directory's own files are never "
                    "followed elsewhere: remove it (or copy the run without links) and run again")
