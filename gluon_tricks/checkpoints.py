"""Checkpoints that survive kills: the `checkpoints/` half of a run directory.

Each checkpoint is a directory `epoch<E>-step<S>` with net.params, trainer.states and
state.json (where to resume, SHA-256 of each file); it appears under its final name only when
complete, and one that fails its checksums is skipped at resume, with a message, in favour of
the previous one. trainer.states is unpickled with an allow-list before MXNet reads it.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from gluon_tricks.atomic import atomic_write_json, disk_error, fsync_dir, sha256_file
from gluon_tricks.errors import UserError, first_line, shown

# The names save_checkpoint gives inside checkpoints/: the only ones pruning or --overwrite
# deletes there (a user's own copy, or a scratch disk's other folders when checkpoints/ is a
# symlink to it, are not ours: red team 2, probes 9.7, 9.8).
CHECKPOINT_NAME = re.compile(r"^epoch\d{4}-step\d{7}$")
# A checkpoint's files: the network (on several devices, Gluon saves the mean of the copies) and
# the optimizer; with several devices also each device's own copy of the arrays no update keeps
# equal across devices (BatchNorm running statistics), so a resume continues each device from
# its own copy, bit for bit (red team 2, probe 2.3).
CHECKPOINT_FILES = ("net.params", "trainer.states")
DEVICE_STATES = "device_states.params"
_CHECKPOINT_LEFTOVER = re.compile(r"^\.tmp-epoch\d{4}-step\d{7}-\d+$")


def params_finite(path: Path) -> bool:
    """Every array of an MXNet .params file is finite (one pass over the file's arrays)."""
    import mxnet as mx
    import numpy as np

    try:
        arrays = mx.nd.load(str(path))
    except mx.MXNetError:
        return False
    values = arrays.values() if isinstance(arrays, dict) else arrays
    return all(np.isfinite(a.asnumpy()).all() for a in values)


# The classes a trainer.states pickle may name, besides MXNet's optimizers.
TRAINER_STATES_CLASSES = {
    ("mxnet.ndarray.ndarray", "NDArray"),
    ("gluon_tricks.tricks.schedules", "Schedule"),
    ("gluon_tricks.tricks.schedules", "PaperLR"),  # Schedule's name in checkpoints written before it
    ("builtins", "bytearray"),  # NDArray's pickled state
}


class _TrainerStatesUnpickler(pickle.Unpickler):
    """What gluon.Trainer.save_states pickles (Updater.get_states with the optimizer): dicts and
    tuples of NDArrays, the optimizer object, its lr scheduler. Any other class (a crafted file's
    os.system, probe 9.11) is refused before anything is built."""

    def find_class(self, module, name):
        if (module, name) in TRAINER_STATES_CLASSES:
            return super().find_class(module, name)
        if module == "mxnet.optimizer.optimizer":
            import mxnet as mx

            cls = getattr(mx.optimizer.optimizer, name, None)
            if isinstance(cls, type) and issubclass(cls, mx.optimizer.Optimizer):
                return cls
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def check_trainer_states(path: Path) -> None:
    """Unpickle `path` with the allow-list above; UserError when it holds anything else. MXNet's
    Trainer.load_states unpickles without restriction, so this runs first."""
    try:
        with open(path, "rb") as f:
            _TrainerStatesUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"{shown(path)} is not optimizer states written by gluon-tricks ({first_line(e, 120)}); "
                        "resume only from checkpoints this toolkit wrote, or start again with --overwrite") from None


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

    @property
    def device_states(self) -> Path | None:
        return self.path / DEVICE_STATES if DEVICE_STATES in self.state["sha256"] else None


class RunCheckpoints:
    """The checkpoints of the run directory at `self.path` (RunDir inherits this)."""
    path: Path

    @property
    def ckpt_root(self) -> Path:
        return self.path / "checkpoints"

    def save_checkpoint(self, epoch: int, step: int, state: dict, save_params, save_trainer, keep: int = 2,
                        save_device_states=None) -> Path:
        """`save_params(path)` / `save_trainer(path)` write the two MXNet files; `save_device_states(path)`,
        when given, each device's copy of what differs between devices (DEVICE_STATES)."""
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        final = self.ckpt_root / f"epoch{epoch:04d}-step{step:07d}"
        tmp = self.ckpt_root / f".tmp-{final.name}-{os.getpid()}"
        for stale in self._checkpoint_leftovers():  # left by a process killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.mkdir()
            save_params(str(tmp / "net.params"))
            save_trainer(str(tmp / "trainer.states"))
            names = CHECKPOINT_FILES
            if save_device_states is not None:
                save_device_states(str(tmp / DEVICE_STATES))
                names += (DEVICE_STATES,)
            for name in names:
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            state = dict(state, next_epoch=epoch, next_step=step, sha256={n: sha256_file(tmp / n) for n in names})
            atomic_write_json(tmp / "state.json", state)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.ckpt_root)
        except UserError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise disk_error(e, final) from None
        except Exception as e:  # MXNet reports a failed write as MXNetError
            shutil.rmtree(tmp, ignore_errors=True)
            if "No space" in str(e) or "write" in str(e).lower():
                raise UserError(f"could not write checkpoint {final} ({first_line(e, 120)}); "
                                "free space or choose another --runs directory "
                                "(the previous checkpoint is intact)") from None
            raise
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def checkpoints(self) -> list[Path]:
        """The checkpoints this run wrote, oldest first: directories named as save_checkpoint
        names them (a symlink by that name is not ours either)."""
        return self._own_entries(CHECKPOINT_NAME)

    def _checkpoint_leftovers(self) -> list[Path]:
        return self._own_entries(_CHECKPOINT_LEFTOVER)

    def _own_entries(self, pattern: re.Pattern) -> list[Path]:
        if not self.ckpt_root.is_dir():
            return []
        return sorted(p for p in self.ckpt_root.iterdir()
                      if pattern.match(p.name) and p.is_dir() and not p.is_symlink())

    def verify(self, path: Path) -> Checkpoint:
        """The checkpoint at `path`, or UserError saying what is wrong with it."""
        try:
            state = json.loads((path / "state.json").read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"checkpoint {path} has no readable state.json ({e.__class__.__name__})") from None
        digests = state.get("sha256", {}) if isinstance(state, dict) else {}
        if not isinstance(digests, dict) or not set(CHECKPOINT_FILES) <= set(digests) <= \
                set(CHECKPOINT_FILES + (DEVICE_STATES,)):
            raise UserError(f"checkpoint {path} is incomplete")
        for name, digest in digests.items():
            f = path / name
            if not f.is_file():
                raise UserError(f"checkpoint {path} lacks {name}")
            if sha256_file(f) != digest:
                raise UserError(f"checkpoint {path}/{name} is truncated or corrupt (checksum mismatch)")
        if not params_finite(path / "net.params"):  # e.g. written before the save-time guard existed
            raise UserError(f"checkpoint {path} holds weights that are not finite (NaN/Inf)")
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
