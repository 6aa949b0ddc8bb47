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
from gluon_tricks.recipe import Recipe, content_hash

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

    recipe = recipe_from_dict(recipe_dict)
    if content_hash(recipe) != expected_hash:  # the recipe must cross the process boundary unchanged
        raise RuntimeError(f"recipe {recipe.name} changed on its way to the worker process")
    try:
        return train(recipe, Path(out), resume=resume, progress=progress)
    finally:
        if _parent_pid is not None and os.getppid() != _parent_pid:
            # The parent is gone: no one to report to, and the pool's queue would keep this
            # process waiting for a next run forever. The checkpoint is written; leave.
            os._exit(1)


_parent_pid: int | None = None  # in a row process: the `table` process that started it


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


def _row_devices(ctx_text: str) -> list[str]:
    from gluon_tricks.devices import parse_ctx

    return [f"{c.device_type}:{c.device_id}" for c in parse_ctx(ctx_text)]


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


def _slots(pending: list[PendingRun], parallel: int | None) -> list[str | None]:
    """The device each concurrent run gets: None (the recipe's own devices, one run at a time),
    or one device of the first recipe's ctx per run."""
    if parallel is None:
        return [None]
    devices = _row_devices(pending[0].recipe.system.ctx)
    if parallel < 0:
        raise UserError(f"--parallel {parallel}: give the number of rows at once (0 or nothing: one per device)")
    return [devices[i % len(devices)] for i in range(parallel or len(devices))]


def train_in_processes(name: str, pending: list[PendingRun], progress: bool = True,
                       parallel: int | None = None) -> None:
    """Train each pending run in a fresh process, `parallel` at once (see tables.run_table), and
    raise the first failure once the running ones have ended."""
    import multiprocessing
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    slots = _slots(pending, parallel)
    queue, running, failures = deque(pending), {}, []
    quiet_rows = len(slots) > 1  # interleaved epoch lines from several rows help nobody; metrics.jsonl has them
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state inherited
    try:
        while queue or running:
            while queue and slots and not failures:
                device, run = slots.pop(0), queue.popleft()
                recipe = run.recipe
                if device is not None:
                    recipe = replace(recipe, system=replace(recipe.system, ctx=device))
                if progress:
                    print(f"== {name}: {shown(run.label)} (seed {recipe.seed}) on {recipe.system.ctx} -> {run.out}", flush=True)
                executor = ProcessPoolExecutor(max_workers=1, mp_context=spawn,  # one process per run
                                               initializer=_stop_with_parent, initargs=(os.getpid(),))
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
