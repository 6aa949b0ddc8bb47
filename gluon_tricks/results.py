"""Run directories: atomic files, checkpoints that survive kills, results by content hash.

A run directory holds
  recipe.toml      the resolved recipe (what ran)
  run.json         the recipe's content hash and name
  metrics.jsonl    one JSON line per finished epoch
  result.json      written once, when the run has finished
  checkpoints/     the last `keep` checkpoints, each a directory with net.params,
                   trainer.states and state.json (where to resume, SHA-256 of both files)

Every file is written to a temporary name, fsynced and renamed, so a kill at any
moment leaves either the old or the new version; a checkpoint directory appears
under its final name only when complete. A checkpoint that fails its checksums
is skipped at resume, with a message, in favour of the previous one.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from gluon_tricks.errors import UserError


def default_runs_root() -> Path:
    return Path(os.environ.get("GLUON_TRICKS_RUNS", "runs"))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_error(e: OSError, what: Path) -> UserError:
    reason = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror or str(e)
    return UserError(f"could not write {what}: {reason}; free space or choose another --runs directory "
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
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _disk_error(e, path) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Checkpoint:
    path: Path
    state: dict

    @property
    def params(self) -> Path:
        return self.path / "net.params"

    @property
    def trainer_states(self) -> Path:
        return self.path / "trainer.states"


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    # -- files -------------------------------------------------------------------------
    @property
    def result_file(self) -> Path:
        return self.path / "result.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def ckpt_root(self) -> Path:
        return self.path / "checkpoints"

    def run_info(self) -> dict | None:
        try:
            return json.loads((self.path / "run.json").read_text())
        except (OSError, ValueError):
            return None

    def result(self) -> dict | None:
        try:
            return json.loads(self.result_file.read_text())
        except (OSError, ValueError):
            return None

    # -- start / guard -------------------------------------------------------------------
    def prepare(self, recipe_hash: str, name: str, recipe_toml: str, resume: bool, overwrite: bool) -> None:
        """Create the directory or check that it holds this same recipe's run."""
        info = self.run_info()
        occupied = self.path.exists() and any(self.path.iterdir())
        if occupied and overwrite:
            if info is None:  # never delete a directory that is not a gluon-tricks run
                raise UserError(f"{self.path} holds files that are not a gluon-tricks run; "
                                "--overwrite only replaces runs: choose another --out")
            shutil.rmtree(self.path)
            occupied, info = False, None
        if occupied:
            if info is None or info.get("hash") != recipe_hash:
                other = info.get("name") if info else "files that are not a gluon-tricks run"
                raise UserError(f"{self.path} already holds a different run ({other}); "
                                "choose another --out, or pass --overwrite to replace it")
            if self.result() is not None and not resume:
                raise UserError(f"{self.path} already holds the finished run of this recipe; "
                                "pass --overwrite to train it again")
            if not resume and self.latest_checkpoint(quiet=True) is not None:
                raise UserError(f"{self.path} holds an unfinished run of this recipe; "
                                "pass --resume to continue it or --overwrite to start again")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "recipe.toml", recipe_toml)
        atomic_write_json(self.path / "run.json", {"hash": recipe_hash, "name": name})

    # -- metrics ---------------------------------------------------------------------------
    def read_metrics(self) -> list[dict]:
        rows = []
        try:
            lines = self.metrics_file.read_text().splitlines()
        except OSError:
            return rows
        for line in lines:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a kill mid-write
        return rows

    def truncate_metrics(self, before_epoch: int) -> None:
        """Keep one line per epoch before `before_epoch` (resume replays the rest)."""
        seen, kept = set(), []
        for row in self.read_metrics():
            if row.get("epoch", 1 << 30) < before_epoch and row["epoch"] not in seen:
                seen.add(row["epoch"])
                kept.append(row)
        atomic_write_text(self.metrics_file, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def append_metrics(self, row: dict) -> None:
        try:
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _disk_error(e, self.metrics_file) from None

    def write_result(self, result: dict) -> None:
        atomic_write_json(self.result_file, result)

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int, step: int, state: dict, save_params, save_trainer, keep: int = 2) -> Path:
        """`save_params(path)` / `save_trainer(path)` write the two MXNet files."""
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        final = self.ckpt_root / f"epoch{epoch:04d}-step{step:07d}"
        tmp = self.ckpt_root / f".tmp-{final.name}-{os.getpid()}"
        for stale in self.ckpt_root.glob(".tmp-*"):  # left by a process killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.mkdir()
            save_params(str(tmp / "net.params"))
            save_trainer(str(tmp / "trainer.states"))
            for name in ("net.params", "trainer.states"):
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            state = dict(state, next_epoch=epoch, next_step=step,
                         sha256={n: sha256_file(tmp / n) for n in ("net.params", "trainer.states")})
            atomic_write_json(tmp / "state.json", state)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.ckpt_root)
        except UserError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _disk_error(e, final) from None
        except Exception as e:  # MXNet reports a failed write as MXNetError
            shutil.rmtree(tmp, ignore_errors=True)
            if "No space" in str(e) or "write" in str(e).lower():
                raise UserError(f"could not write checkpoint {final} ({str(e).splitlines()[0][:120]}); "
                                "free space or choose another --runs directory "
                                "(the previous checkpoint is intact)") from None
            raise
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def checkpoints(self) -> list[Path]:
        if not self.ckpt_root.is_dir():
            return []
        return sorted(p for p in self.ckpt_root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def verify(self, path: Path) -> Checkpoint:
        """The checkpoint at `path`, or UserError saying what is wrong with it."""
        try:
            state = json.loads((path / "state.json").read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"checkpoint {path} has no readable state.json ({e.__class__.__name__})") from None
        for name, digest in state.get("sha256", {}).items():
            f = path / name
            if not f.is_file():
                raise UserError(f"checkpoint {path} lacks {name}")
            if sha256_file(f) != digest:
                raise UserError(f"checkpoint {path}/{name} is truncated or corrupt (checksum mismatch)")
        if set(state.get("sha256", {})) != {"net.params", "trainer.states"}:
            raise UserError(f"checkpoint {path} is incomplete")
        return Checkpoint(path, state)

    def latest_checkpoint(self, quiet: bool = False) -> Checkpoint | None:
        """The newest checkpoint that passes its checksums; corrupt ones are reported and skipped."""
        for path in reversed(self.checkpoints()):
            try:
                return self.verify(path)
            except UserError as e:
                if not quiet:
                    print(f"warning: {e}; falling back to the previous checkpoint", file=sys.stderr)
        return None


def committed_results_root() -> Path | None:
    """Finished runs committed with the project (run.json, recipe.toml, metrics.jsonl,
    result.json; no checkpoints), searched after the runs root so a fresh clone prints them.
    $GLUON_TRICKS_RESULTS names another directory; set it empty to ignore them (e.g. to retrain)."""
    env = os.environ.get("GLUON_TRICKS_RESULTS")
    if env is not None:
        return Path(env) if env else None
    return Path(__file__).resolve().parent.parent / "results"


def find_result(recipe_hash: str, root: Path | None = None) -> tuple[Path, dict] | None:
    """The finished run of a recipe, wherever its directory is named: in the runs root first,
    then among the committed results."""
    root = Path(root) if root else default_runs_root()
    for base in (root, committed_results_root()):
        if base is None or not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            rd = RunDir(d)
            if d.is_dir() and d.name.endswith(recipe_hash) or (rd.run_info() or {}).get("hash") == recipe_hash:
                res = rd.result()
                if res is not None and (rd.run_info() or {}).get("hash") == recipe_hash:
                    return d, res
    return None


def run_dir_for(recipe_name: str, recipe_hash: str, root: Path | None = None) -> Path:
    root = Path(root) if root else default_runs_root()
    return root / f"{recipe_name}-{recipe_hash}"
