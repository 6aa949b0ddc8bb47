"""Train pending runs, each in a child process of its own, and stop them with their parent.

`table --run` hands this module the runs its rows still need (`PendingRun`s); `launch`
borrows `signal_on_parent_death` for its roles. The engine is imported only inside the
functions that train, so importing this module costs nothing.
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from gluon_tricks.errors import Interrupted, UserError, shown
from gluon_tricks.paths import cores
from gluon_tricks.identity import content_hash
from gluon_tricks.recipe import Recipe

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def signal_on_parent_death(sig: int) -> bool:
    """Ask the kernel to send this process `sig` when its parent dies (Linux prctl); False where
    that is not available."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return False
    return True


@dataclass
class PendingRun:
    """One recipe (a row at one seed) that has no result yet, and where it trains."""
    label: str  # the table row it stands for
    recipe: Recipe
    recipe_hash: str
    out: Path
    resume: bool  # the run directory holds a checkpoint to continue from


def _train_row(recipe_dict: dict, expected_hash: str, out: str, resume: bool, progress: bool) -> dict:
    """One run in a fresh process: everything it allocated, on the host and on the GPU (MXNet's
    memory pool, cuDNN workspaces, kvstore buffers), is returned to the system when the process
    exits, before the next run starts there."""
    from gluon_tricks.engine import train
    from gluon_tricks.recipe import recipe_from_dict

    from gluon_tricks.devices import planned_layout

    recipe = recipe_from_dict(recipe_dict)
    # The recipe must cross the process boundary unchanged, and its devices here (the row's
    # CUDA_VISIBLE_DEVICES) must give the BatchNorm group the table planned the run's hash for.
    if content_hash(recipe, planned_layout(recipe).bn_group) != expected_hash:
        raise RuntimeError(f"recipe {recipe.name} changed on its way to the worker process")
    try:
        return train(recipe, Path(out), resume=resume, progress=progress)
    finally:
        if _parent_pid is not None and os.getppid() != _parent_pid:
            # The parent is gone: no one to report to, and the pool's queue would keep this
            # process waiting for a next run forever. The checkpoint is written; leave.
            os._exit(1)


_parent_pid: int | None = None  # in a row process: the `table` process that started it


def _start_row(parent: int, environment: dict) -> None:
    """Row processes' initializer, before anything imports MXNet: the row's environment (its
    GPUs as CUDA_VISIBLE_DEVICES, its share of the threads), then `_stop_with_parent`."""
    os.environ.update(environment)
    _stop_with_parent(parent)


def _stop_with_parent(parent: int) -> None:
    """Row processes' initializer: when `table` dies (SIGTERM from a job scheduler, even kill -9),
    the kernel sends the row SIGTERM, which the engine treats as Ctrl-C: finish the step, write
    a checkpoint, exit. Without it the row trained on as an orphan."""
    global _parent_pid
    _parent_pid = parent
    if not signal_on_parent_death(signal.SIGTERM):  # not Linux
        return
    if os.getppid() != parent:  # the parent died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True)
class Slot:
    """The devices one row of `table --run --parallel` trains on, and how its process sees them."""
    devices: tuple[str, ...]  # as --ctx names them: ("gpu:2", "gpu:3") or ("cpu:0",)

    @property
    def gpus(self) -> bool:
        return self.devices[0].startswith("gpu")

    def ctx(self) -> str:
        """The row's --ctx inside its process: its GPUs are the only ones it sees (CUDA numbers
        the visible devices from 0), so nothing, neither ImageRecordIter's pinned buffers nor a
        kvstore's, lands on another row's GPU 0."""
        if self.gpus:
            return ",".join(f"gpu:{i}" for i in range(len(self.devices)))
        return ",".join(self.devices)

    def environment(self, threads: int, visible: str | None = None) -> dict[str, str]:
        """The row process's variables; `visible` is this process's CUDA_VISIBLE_DEVICES (default:
        the environment's), through which --ctx's GPU numbers are already renumbered."""
        env = {"OMP_NUM_THREADS": str(threads)}
        if self.gpus:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "") if visible is None else visible
            names = [v.strip() for v in visible.split(",")] if visible.strip() else None
            ids = [int(d.partition(":")[2]) for d in self.devices]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(names[i] if names else str(i) for i in ids)
        return env


def all_devices(ctx_text: str) -> list[str]:
    """Every device --ctx names (auto: every GPU, else the CPU), as "gpu:3" or "cpu:0"."""
    from gluon_tricks.devices import parse_ctx

    return [f"{c.device_type}:{c.device_id}" for c in parse_ctx(ctx_text)]


def row_slots(devices: list[str], per_row: int, parallel: int) -> list[Slot]:
    """The device groups of rows trained at once: `parallel` rows (0: as many as the devices
    hold), each on `per_row` devices (the recipe's source.devices: one for a follow-up row,
    eight for a Bag of Tricks row) or on an even share when `parallel` asks for more rows.
    More rows than devices share them, one device each, round robin."""
    if parallel < 0:
        raise UserError(f"--parallel {parallel}: give the number of rows at once (0 or nothing: one per device)")
    per_row = max(1, min(per_row, len(devices)))
    rows = parallel or max(1, len(devices) // per_row)
    per_row = max(1, min(per_row, len(devices) // rows))
    if rows * per_row > len(devices):
        return [Slot((devices[i % len(devices)],)) for i in range(rows)]
    return [Slot(tuple(devices[i * per_row:(i + 1) * per_row])) for i in range(rows)]


def row_threads(rows: int, budget: int | None = None) -> int:
    """OpenMP threads per row process: the table's thread budget (OMP_NUM_THREADS, which the
    CLI defaults to every core) shared by the rows at once. Each row taking every core made
    `table demo --run --parallel 2` on 2 cores take 433 s against 256 s one row after another."""
    if budget is None:
        try:  # a nested-parallelism list such as "4,2": its outer level is the budget
            budget = int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0] or 0) or cores()
        except ValueError:
            budget = cores()
    return max(1, budget // max(1, rows))


def shared_devices_warning(slots: list[Slot]) -> str | None:
    """Rows at once beyond the devices share them: GPU memory (each process keeps its own pool)."""
    used = [d for slot in slots for d in slot.devices]
    if len(used) == len(set(used)):
        return None
    kind = "GPU memory (each row keeps its own MXNet memory pool)" if slots[0].gpus else "the CPU"
    return (f"--parallel {len(slots)} rows at once on {len(set(used))} device(s): rows share {kind}; "
            "--parallel without N runs one row per device")


def train_in_process(name: str, pending: list[PendingRun], progress: bool) -> None:
    """Train here, one run after another (for a debugger); finished runs are then released by
    garbage collection only."""
    import gc

    from gluon_tricks import engine

    for run in pending:
        if progress:
            print(f"== {name}: {shown(run.label)} (seed {run.recipe.seed}) -> {run.out}", flush=True)
        engine.train(run.recipe, run.out, resume=run.resume, progress=progress)
        gc.collect()  # Parameter <-> Trainer reference cycles hold the finished run's arrays


def row_executor(environment: dict):
    """A fresh process for one run, started with `environment` and stopped with this one."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state inherited
    return ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=_start_row,
                               initargs=(os.getpid(), environment))


def train_in_processes(name: str, pending: list[PendingRun], progress: bool = True,
                       slots: list[Slot] | None = None) -> None:
    """Train each pending run in a fresh process, one per slot at once (None: one run at a
    time on the recipe's own devices; see tables.run_table), and raise the first failure once
    the running ones have ended."""
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    slots = list(slots) if slots else [None]
    threads = row_threads(len(slots))
    if progress and slots[0] is not None:
        warning = shared_devices_warning(slots)
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    queue, running, failures = deque(pending), {}, []
    quiet_rows = len(slots) > 1  # interleaved epoch lines from several rows help nobody; metrics.jsonl has them
    try:
        while queue or running:
            while queue and slots and not failures:
                device, run = slots.pop(0), queue.popleft()
                recipe, environment = run.recipe, {}
                if device is not None:
                    recipe = replace(recipe, system=replace(recipe.system, ctx=device.ctx()))
                    environment = device.environment(threads)
                if progress:
                    where = " ".join(f"{k}={v}" for k, v in environment.items() if k == "CUDA_VISIBLE_DEVICES")
                    print(f"== {name}: {shown(run.label)} (seed {recipe.seed}) on {recipe.system.ctx}"
                          f"{f' ({where})' if where else ''} -> {run.out}", flush=True)
                executor = row_executor(environment)  # one process per run
                future = executor.submit(_train_row, recipe.to_dict(), run.recipe_hash, str(run.out), run.resume,
                                         progress and not quiet_rows)
                running[future] = (run.label, recipe, device, executor)
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                label, recipe, device, executor = running.pop(future)
                executor.shutdown(wait=True)
                slots.append(device)
                error = future.exception()
                if isinstance(error, BrokenProcessPool):  # probe 1.12: a traceback naming no row
                    error = UserError("its process died (killed by a signal: out of memory?); run the same "
                                      "command again to resume it from its last checkpoint")
                if error is not None:
                    failures.append((label, error))
                elif progress and quiet_rows:
                    result = future.result()
                    print(f"== {name}: {shown(label)} (seed {recipe.seed}) done: top-1 {result['final_top1']:.2f}",
                          flush=True)
    except KeyboardInterrupt:
        # The rows' processes got the Ctrl-C too: each checkpoints at its next step and exits.
        for *_, executor in running.values():
            executor.shutdown(wait=True)
        raise Interrupted(f"table {name} stopped; finished rows are kept and the others resume "
                          "from their checkpoints: run the same command again") from None
    _raise_first(name, failures)


def _raise_first(name: str, failures: list[tuple[str, BaseException]]) -> None:
    stopped = [label for label, error in failures if isinstance(error, Interrupted)]
    if stopped:  # Ctrl-C reached the row processes first: each saved a checkpoint
        raise Interrupted(f"table {name} stopped; {', '.join(map(repr, stopped))} checkpointed and resume "
                          "when the same command runs again; finished rows are kept")
    # Every failed row is reported (probe 1.13: a second diverged row went unmentioned); a bug
    # (not a UserError) keeps its traceback, after the others' lines.
    told = [(label, error) for label, error in failures if isinstance(error, UserError)]
    bugs = [error for _, error in failures if not isinstance(error, UserError)]
    if bugs:
        for label, error in told:
            print(f"error: row {label!r}: {error}", file=sys.stderr)
        raise bugs[0]
    if told:
        raise type(told[0][1])("; ".join(f"row {label!r}: {error}" for label, error in told))
