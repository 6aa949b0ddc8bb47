"""Run directories: their files, the marker and lock, metrics, results found by content hash.

A run directory holds
  recipe.toml      the resolved recipe (what ran; a resume with other [system] settings keeps it,
                   result.json's "segments" list each stretch's [system])
  run.json         the marker: {"tool": "gluon-tricks", "format": 1}, the recipe's content hash and name
  metrics.jsonl    one JSON line per finished epoch
  result.json      written once, when the run has finished
  checkpoints/     the last `keep` checkpoints (checkpoints.py)

Every file is written atomically (atomic.py): a kill at any moment leaves either the old or
the new version.

Only a directory whose run.json carries the marker is a run: `--overwrite` replaces only
such a directory, and deletes only the files listed above. A process that trains into a
directory holds an flock on `<run>/.lock` until the run ends (or the process dies); a second
one is refused.
"""
from __future__ import annotations

import json
import fcntl
import functools
import os
import re
import shutil
import sys
from pathlib import Path

from gluon_tricks._compat import tomllib
from gluon_tricks.atomic import atomic_write_json, atomic_write_text, disk_error, open_own_file
from gluon_tricks.checkpoints import Checkpoint, RunCheckpoints
from gluon_tricks.errors import UserError, shown
from gluon_tricks.paths import committed_results_root, runs_root

TOOL = "gluon-tricks"
FORMAT = 1
# What a run writes into its directory: the only names `--overwrite` deletes.
RUN_FILES = ("recipe.toml", "run.json", "metrics.jsonl", "result.json")
RUN_DIRS = ("checkpoints",)
LOCK_FILE = ".lock"
# Temporary files of atomic_write_bytes (".<name>.tmp<pid>"), left by a kill mid-write.
_LEFTOVER = re.compile(r"^\.(recipe\.toml|run\.json|metrics\.jsonl|result\.json)\.tmp\d+$")
# flock'd file descriptors, held open (and so locked) until the process exits.
_HELD_LOCKS: dict[str, int] = {}


def provenance(contexts) -> dict:
    """What produced a result: package versions (gluon-tricks and its code revision
    included), and the hardware it ran on."""
    import platform

    versions = {**installed_versions(), "code_revision": code_revision(), "python": platform.python_version()}
    hardware = {"machine": platform.machine(), "cpus": os.cpu_count(), "ctx": [str(c) for c in contexts],
                "omp_threads": os.environ.get("OMP_NUM_THREADS", "")}
    if os.environ.get("CUDA_VISIBLE_DEVICES"):  # a --parallel row's GPUs: its gpu(0) is the first of these
        hardware["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return {"versions": versions, "hardware": hardware}


@functools.lru_cache(maxsize=None)
def installed_versions() -> dict:
    """The versions of gluon-tricks and the packages a result depends on, as installed here:
    what provenance records and what a table compares a result with (read once per process:
    a table compares every seed's result)."""
    from importlib import metadata

    from gluon_tricks import __version__

    versions = {"gluon-tricks": __version__}
    for dist in ("mxnet", "mxnet-cu112", "gluoncv", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def version_differences(result: dict) -> list[str]:
    """What a result was trained with that differs from what is installed here: package
    versions, and code with uncommitted changes ("+dirty"). A table prints these beside the row
    (red team 2, probe 5.10: an edited or old result was shown as current)."""
    recorded = result.get("versions") if isinstance(result.get("versions"), dict) else {}
    installed = installed_versions()
    out = []
    for dist, then in sorted(recorded.items()):
        if dist in ("python", "code_revision"):
            continue
        now = installed.get(dist, "not installed")
        if str(then) != now:
            out.append(f"{dist} {then} (installed: {now})")
    if str(recorded.get("code_revision", "")).endswith("+dirty"):
        out.append(f"code {recorded['code_revision']} (uncommitted changes)")
    return out


def code_revision() -> str:
    """The checkout's short commit hash, "+dirty" when tracked files differ from it;
    "unknown" outside git (an installed wheel, no git binary)."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunDir(RunCheckpoints):
    """A run directory: its files, its start and lock, its metrics and result; its checkpoints/
    (RunCheckpoints)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # -- files -------------------------------------------------------------------------
    @property
    def result_file(self) -> Path:
        return self.path / "result.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def run_info(self) -> dict | None:
        """run.json if this directory holds a gluon-tricks run, else None."""
        try:
            info = json.loads((self.path / "run.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or not isinstance(info.get("hash"), str):
            return None
        return info if info.get("tool") == TOOL and isinstance(info.get("format"), int) else None

    def _damaged_run_json(self) -> str:
        """Why run.json cannot be read, when this directory still looks like one of our runs
        (recipe.toml beside it); "" otherwise."""
        if not (self.path / "recipe.toml").is_file() or not (self.path / "run.json").is_file():
            return ""
        try:
            json.loads((self.path / "run.json").read_text())
        except (OSError, ValueError) as e:
            return "not valid JSON" if isinstance(e, ValueError) else e.__class__.__name__
        return ""

    def unfinished(self, ckpt: Checkpoint) -> str:
        """How far an unfinished run got ("1 of 3 epochs done, no result.json"), or "" when it finished."""
        result, problem = self.read_result()
        if result is not None:
            return ""
        try:
            epochs = tomllib.loads((self.path / "recipe.toml").read_text()).get("epochs")
        except (OSError, ValueError):
            epochs = None
        total = f" of {epochs}" if isinstance(epochs, int) else ""
        step = ckpt.state.get("next_step") or 0
        return (f"{ckpt.state.get('next_epoch')}{total} epochs" + (f" and {step} steps" if step else "") +
                " done" + (f"; {problem}" if problem else ", no result.json"))

    def result(self) -> dict | None:
        """result.json when it is a valid result of this run, else None (see read_result)."""
        return self.read_result()[0]

    def read_result(self) -> tuple[dict | None, str]:
        """(result, "") for a valid result.json of this run; (None, why not) otherwise, the reason
        "" when there is no result.json at all. A result is read back only through here: a
        cut, hand-edited or copied file (red team 2, probes 5.3-5.5, 5.11) is never used."""
        try:
            text = self.result_file.read_text()
        except FileNotFoundError:
            return None, ""
        except (OSError, UnicodeDecodeError) as e:
            return None, f"{shown(self.result_file)} is unreadable ({e.__class__.__name__})"
        try:
            res = json.loads(text)
        except ValueError:
            return None, f"{shown(self.result_file)} is not valid JSON (cut by a kill or edited?)"
        problem = result_problem(res, (self.run_info() or {}).get("hash"))
        return (None, f"{shown(self.result_file)} {problem}") if problem else (res, "")

    # -- start / guard -------------------------------------------------------------------
    def _foreign_files(self) -> list[str]:
        """Names in the directory other than the lock and leftover temporary files of a killed start."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return [n for n in names if n != LOCK_FILE and not _LEFTOVER.match(n)]

    def lock(self) -> None:
        """Hold an exclusive flock on <run>/.lock until `unlock` or this process's end (a kill releases it too).
        The lock file is never followed: a `.lock` that is a symlink (a copied or downloaded run
        directory) would have had its target truncated and overwritten with our pid (probe 9.6)."""
        key = str(self.path.resolve())
        if key in _HELD_LOCKS:
            return
        fd = open_own_file(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{shown(self.path)} is being trained by another process (pid {holder}); "
                            "wait for it to finish, or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD_LOCKS[key] = fd

    def unlock(self) -> None:
        """Release the lock (at the end of a run, so a library caller does not hold it on)."""
        fd = _HELD_LOCKS.pop(str(self.path.resolve()), None)
        if fd is not None:
            os.close(fd)

    def _remove_run_files(self) -> None:
        for name in os.listdir(self.path):
            p = self.path / name
            if name in RUN_FILES or _LEFTOVER.match(name):
                p.unlink()
        for ckpt in self.checkpoints() + self._checkpoint_leftovers():
            shutil.rmtree(ckpt)
        if self.ckpt_root.is_dir() and not self.ckpt_root.is_symlink() and not os.listdir(self.ckpt_root):
            self.ckpt_root.rmdir()

    def prepare(self, recipe_hash: str, name: str, recipe_toml: str, resume: bool, overwrite: bool) -> None:
        """Create the directory or check that it holds this same recipe's run, and lock it."""
        try:
            self._prepare(recipe_hash, name, recipe_toml, resume, overwrite)
        except BaseException as e:
            self.unlock()  # refused: the directory is not ours to hold
            if not isinstance(e, OSError):
                raise
            # read-only filesystem, name too long, a file where a directory should be
            raise UserError(f"cannot use {shown(self.path)} as a run directory: {e.strerror or e}; "
                            "choose another --out or --runs") from None

    def _prepare(self, recipe_hash, name, recipe_toml, resume, overwrite) -> None:
        if self._foreign_files() and self.run_info() is None:
            # Refuse before creating anything (no .lock) in a directory that is not ours.
            damaged = self._damaged_run_json()
            if damaged:  # probe 5.12: a cut run.json hid a finished run behind "choose another --out"
                raise UserError(f"{shown(self.path / 'run.json')} is damaged ({damaged}), so this directory is "
                                "not recognised as a run; restore the file, or move the directory away to train "
                                "again")
            if overwrite:
                raise UserError(f"{shown(self.path)} holds files that are not a gluon-tricks run; "
                                "--overwrite only replaces runs: choose another --out")
            raise UserError(f"{shown(self.path)} already holds files that are not a gluon-tricks run; "
                            "choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        info = self.run_info()  # again, now that no other process can change it
        occupied = bool(self._foreign_files())
        if occupied and info is None:
            raise UserError(f"{shown(self.path)} holds files that are not a gluon-tricks run; choose another --out")
        if occupied and overwrite:
            self._remove_run_files()
            occupied, info = False, None
        if occupied:
            if info.get("hash") != recipe_hash:
                raise UserError(f"{shown(self.path)} already holds a different run ({shown(info.get('name'))}); "
                                "choose another --out, or pass --overwrite to replace it")
            if self.result() is not None and not resume:
                raise UserError(f"{shown(self.path)} already holds the finished run of this recipe; "
                                "pass --overwrite to train it again")
            if not resume and self.latest_checkpoint(quiet=True) is not None:
                raise UserError(f"{shown(self.path)} holds an unfinished run of this recipe; "
                                "pass --resume to continue it or --overwrite to start again")
        for leftover in os.listdir(self.path):
            if _LEFTOVER.match(leftover):
                (self.path / leftover).unlink()
        # run.json (the marker) first: a kill between the two writes leaves a recognisable run.
        atomic_write_json(self.path / "run.json", {"tool": TOOL, "format": FORMAT, "hash": recipe_hash, "name": name})
        if not (resume and self.checkpoints() and (self.path / "recipe.toml").is_file()):
            # A resume keeps the recipe.toml the run started with: [system] (devices, device_batch)
            # may change at a resume, and result.json lists each segment's (probe 2.10).
            atomic_write_text(self.path / "recipe.toml", recipe_toml)

    # -- metrics ---------------------------------------------------------------------------
    def read_metrics(self, warn: bool = False) -> list[dict]:
        """The valid epoch rows of metrics.jsonl. A line cut by a kill mid-write, or one that is not
        an epoch row (probes 5.14, 5.15), is skipped; `warn` says so on stderr, naming the file."""
        rows, bad = [], 0
        try:
            lines = self.metrics_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return rows
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if metrics_row_problem(row):
                bad += 1
            else:
                rows.append(row)
        if bad and warn:
            print(f"warning: {shown(self.metrics_file)}: skipped {bad} line(s) that are not epoch rows",
                  file=sys.stderr)
        return rows

    def truncate_metrics(self, before_epoch: int) -> None:
        """Keep one line per epoch before `before_epoch` (resume replays the rest)."""
        seen, kept = set(), []
        for row in self.read_metrics():
            if row["epoch"] < before_epoch and row["epoch"] not in seen:
                seen.add(row["epoch"])
                kept.append(row)
        atomic_write_text(self.metrics_file, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def append_metrics(self, row: dict) -> None:
        try:
            with os.fdopen(open_own_file(self.metrics_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise disk_error(e, self.metrics_file) from None

    def write_result(self, result: dict) -> None:
        atomic_write_json(self.result_file, result)


def copy_record(run_dir: Path, results_root: Path) -> Path:
    """A finished run's files (RUN_FILES: its record, not its checkpoints) into
    results_root/<its directory name>/, where a fresh clone finds them (committed_results_root).
    An older copy of the same run is replaced as a whole: the copy is made in a temporary folder
    and renamed into place, so a kill leaves the old copy or the new one, never half of one."""
    run_dir, results_root = Path(run_dir), Path(results_root)
    out, tmp = results_root / run_dir.name, results_root / f".{run_dir.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in RUN_FILES:
        shutil.copy2(run_dir / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def find_result(recipe_hash: str, root: Path | None = None) -> tuple[Path, dict] | None:
    """The finished run of a recipe, wherever its directory is named: in the runs root first,
    then among the committed results."""
    path, result, _ = lookup_result(recipe_hash, root)
    return (path, result) if result is not None else None


def lookup_result(recipe_hash: str, root: Path | None = None) -> tuple[Path | None, dict | None, str]:
    """(run directory, valid result, "") for a finished run of the recipe. Else (None, None, "")
    when no directory holds the recipe, (its directory, None, "") when the run is unfinished (no
    result.json), and (its directory, None, what is wrong) when a file of it is unreadable."""
    root = Path(root) if root else runs_root()
    first: tuple[Path | None, str] = (None, "")
    for base in (root, committed_results_root()):
        if base is None or not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            rd = RunDir(d)
            info = rd.run_info() or {}
            if info.get("hash") == recipe_hash:
                res, problem = rd.read_result()
                if res is not None:
                    return d, res, ""
            elif d.name.endswith(f"-{recipe_hash}") and rd._damaged_run_json():
                problem = f"{shown(d / 'run.json')} is damaged ({rd._damaged_run_json()})"
            else:
                continue
            if first[0] is None or (problem and not first[1]):  # an unreadable file is worth naming first
                first = (d, problem)
    return first[0], None, first[1]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# What the tables, plots and the result summary read from a metrics row.
METRICS_ROW_KEYS = ("top1", "top5", "train_loss", "lr", "seconds", "images_per_sec")
# Null in the rows of epochs without a test pass (system.eval_every); a number in the others.
TEST_KEYS = ("top1", "top5")


def metrics_row_problem(row) -> str:
    """Why `row` (one parsed metrics.jsonl line) is not an epoch row; "" when it is. Values may be
    NaN (a diverged epoch is still a row)."""
    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("epoch"), int) or isinstance(row["epoch"], bool) or row["epoch"] < 0:
        return "no epoch number"
    missing = [k for k in METRICS_ROW_KEYS if not _is_number(row.get(k))
               and not (k in TEST_KEYS and k in row and row[k] is None)]
    return f"no number for {', '.join(missing)}" if missing else ""


def result_problem(res, run_hash: str | None) -> str:
    """Why `res` (a parsed result.json) cannot be shown as the result of the run whose run.json
    holds `run_hash`; "" when it can."""
    import math

    if not isinstance(res, dict):
        return "is not a JSON object"
    bad = [k for k in ("final_top1", "final_top5", "seconds_per_epoch")
           if not _is_number(res.get(k)) or not math.isfinite(res[k])]
    if bad:
        return f"has no finite number for {', '.join(bad)}"
    if not isinstance(res.get("epochs"), int) or not isinstance(res.get("hardware"), dict):
        return "lacks epochs or hardware"
    if res.get("hash") != run_hash:  # probe 5.11: another run's result copied into this directory
        return f"belongs to another run (its hash {shown(res.get('hash'))}, the run's {shown(run_hash)})"
    return ""


def run_dir_for(recipe_name: str, recipe_hash: str, root: Path | None = None) -> Path:
    """<root>/<name>-<hash>: always directly inside the runs root (recipe loading refuses other names;
    this guards a Recipe built without it)."""
    root = Path(root) if root else runs_root()
    path = root / f"{recipe_name}-{recipe_hash}"
    if path.parent != root or path.name in (".", ".."):
        raise UserError(f"recipe name '{shown(recipe_name)[:80]}' is not a plain file name: its run directory "
                        f"would not be inside {shown(root)}")
    return path
