"""What watches a run from beside its step: the loss guard (LossWindow), the weights check
before a checkpoint, the stop flag (Ctrl-C, SIGTERM, max_steps) and the progress shown on
the terminal. The engine's loop calls these; none of them changes what is trained.
"""
from __future__ import annotations

import signal
import sys

import mxnet as mx
import numpy as np

from gluon_tricks.devices import gather
from gluon_tricks.errors import DivergenceError


def weights_finite(net, ctx, read) -> bool:
    """Every parameter (BatchNorm statistics included) is finite: one flag per array on
    the device, one host read."""
    flags = [mx.nd.contrib.isfinite(p.data(ctx)).min().reshape((1,)) for p in net.collect_params().values()]
    return bool(read(mx.nd.concat(*flags, dim=0)).min()) if flags else True


class LossWindow:
    """The last few steps' losses, kept on the device and read in one go.

    Reading a loss every step would make the host wait for the device each step;
    reading every `interval` steps keeps the device fed, bounds how far Python runs
    ahead of it (queued inputs hold memory), and still names the exact step whose
    loss first became NaN/Inf."""

    def __init__(self, interval: int, read):
        self.interval = max(1, interval)
        self.read = read  # the run's counted host reader (devices.HostReads)
        self.steps, self.losses = [], []

    def add(self, step: int, loss) -> bool:
        self.steps.append(step)
        self.losses.append(loss.reshape((1,)))
        return len(self.steps) >= self.interval

    def check(self, epoch: int, run) -> None:
        if not self.steps:
            return
        values = self.read(gather(self.losses))
        steps, self.steps, self.losses = self.steps, [], []
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            last = run.latest_checkpoint(quiet=True)
            where = f"last good checkpoint {last.path}" if last else "no checkpoint yet"
            raise DivergenceError(f"loss is {values[bad[0]]} at epoch {epoch + 1}, step {steps[bad[0]]}: "
                                  f"training diverged ({where}); lower optim.lr, add warm-up, or check the data")


class StopFlag:
    """When to stop early with a checkpoint. First Ctrl-C (or SIGTERM): finish the step,
    checkpoint, exit; second: exit at once. `max_steps` stops the same way after that
    many steps of this process (tests interrupt a run at a known point with it)."""

    def __init__(self, max_steps: int | None = None):
        self.requested = False
        self.max_steps, self.steps_done = max_steps, 0
        self._old = None

    def __enter__(self):
        if threading_main():
            self._old = signal.signal(signal.SIGINT, self._handle)
            signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # The main thread soon waits inside MXNet (waitall, asnumpy) for every queued step,
        # where no Python handler can run: the default action makes a second signal end the
        # process at once (a kill mid-save leaves the previous checkpoint, see results.py).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print("\nstopping after this step (Ctrl-C again to abort at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def after_step(self) -> bool:
        """Count one step; True when training must stop now."""
        self.steps_done += 1
        return self.requested or (self.max_steps is not None and self.steps_done >= self.max_steps)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class Progress:
    """A bar per epoch on a terminal; plain lines otherwise (CI, nohup, tests)."""

    def __init__(self, enabled: bool, total_epochs: int):
        self.enabled, self.total = enabled, total_epochs
        self.tty = enabled and sys.stderr.isatty()
        self.bar = None

    def start(self, epoch: int, steps: int, done: int):
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch + 1}/{self.total}", leave=False,
                            unit="step", dynamic_ncols=True)

    def step(self):
        if self.bar is not None:
            self.bar.update(1)

    def end(self, row: dict):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled:
            tested = "not tested" if row["top1"] is None else f"top1 {row['top1']:.2f}  top5 {row['top5']:.2f}"
            print(f"epoch {row['epoch'] + 1:>3}/{self.total}  loss {row['train_loss']:.4f}  "
                  f"{tested}  lr {row['lr']:.5f}  "
                  f"{row['seconds']:.1f}s  {row['images_per_sec']:.0f} img/s", flush=True)
