"""The one training loop. Every recipe of every table runs through `train`.

Per step: a prefetched host batch (augmented images, smoothed targets) is split
over the devices; on each device the batch is mixed (MixBlock), the teacher (if
any) predicts on exactly the mixed images in inference mode, the student's loss
is recorded and back-propagated, and the Trainer reduces gradients through the
KVStore the recipe names and applies the update.

Host syncs are kept off the hot path: losses and accuracies accumulate on the
devices; the per-step losses are read together every `system.log_interval`
steps (LossWindow), which bounds how far Python runs ahead of the device and
still names the exact step of a NaN. Dynamic loss scaling is the exception: it
must know before each update whether the gradients overflowed.
"""
from __future__ import annotations

import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from gluon_tricks import recipe as recipe_mod
from gluon_tricks.data import make_streams
from gluon_tricks.data.loader import MIX_STREAM, step_rng
from gluon_tricks.errors import DivergenceError, Interrupted, UserError
from gluon_tricks.models import build_model, load_teacher
from gluon_tricks.results import RunDir
from gluon_tricks.tricks.losses import DistillationLoss, SoftCrossEntropy
from gluon_tricks.tricks.mixing import Mixer, mix_block
from gluon_tricks.tricks.precision import LossScaler, check_dtype, grads_finite
from gluon_tricks.tricks.schedules import PaperLR, lr_at, schedule_args

MOMENTUM_OPTIMIZERS = {"nag", "sgd"}


def parse_ctx(text: str) -> list[mx.Context]:
    """`cpu`, `cpu:0,cpu:1`, `gpu:0,gpu:1` or `gpu:0-7` -> contexts; GPUs must exist."""
    out = []
    for part in text.replace(" ", "").split(","):
        kind, _, ids = part.partition(":")
        if kind not in ("cpu", "gpu"):
            raise UserError(f"--ctx {text!r}: use cpu, cpu:0,cpu:1 or gpu:0,...,gpu:7")
        lo, _, hi = (ids or "0").partition("-")
        try:
            numbers = range(int(lo), int(hi or lo) + 1)
        except ValueError:
            raise UserError(f"--ctx {text!r}: device numbers must be integers, e.g. gpu:0,gpu:1 or gpu:0-7") from None
        out += [mx.Context(kind, i) for i in numbers]
    gpus = [c for c in out if c.device_type == "gpu"]
    if gpus:
        available = mx.context.num_gpus()
        if max(c.device_id for c in gpus) >= available:
            raise UserError(f"--ctx {text!r}: this machine has {available} GPU(s) visible to MXNet "
                            "(a CPU-only mxnet wheel sees none); use --ctx cpu or install mxnet-cu112 (docs/gpu.md)")
    return out


def make_optimizer(recipe, iters_per_epoch: int) -> tuple[str, dict]:
    o = recipe.optim
    params = {
        "learning_rate": schedule_args(recipe)["base_lr"],
        "wd": o.wd,
        "lr_scheduler": PaperLR(iters_per_epoch, **schedule_args(recipe)),
        "multi_precision": recipe.model.dtype == "float16",
    }
    if o.name in MOMENTUM_OPTIMIZERS:
        params["momentum"] = o.momentum
    if o.epsilon:  # 0 keeps MXNet's per-optimizer default (1e-8 Adam/Nadam/RMSProp, 1e-5 AdaDelta)
        params["epsilon"] = o.epsilon
    return o.name, params


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("mxnet", "mxnet-cu112", "gluoncv", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware(contexts) -> dict:
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "ctx": [str(c) for c in contexts],
            "omp_threads": os.environ.get("OMP_NUM_THREADS", "")}


@dataclass
class Dist:
    """Where this process stands in a data-parallel job."""
    kvstore: object = None
    rank: int = 0
    workers: int = 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def make_dist(kvstore_name: str) -> Dist:
    if not kvstore_name.startswith("dist"):
        return Dist(kvstore=kvstore_name)
    kv = mx.kv.create(kvstore_name)
    return Dist(kvstore=kv, rank=kv.rank, workers=kv.num_workers)


class _StopFlag:
    """First Ctrl-C: finish the step, checkpoint, exit. Second: exit at once."""

    def __init__(self):
        self.requested = False
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
        print("\nstopping after this step (Ctrl-C again to abort at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@dataclass
class EpochStats:
    loss_sum: list = field(default_factory=list)  # device NDArrays
    samples: int = 0
    seconds: float = 0.0


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

    def step(self, n: int = 1, **info):
        if self.bar is not None:
            self.bar.update(n)
            if info:
                self.bar.set_postfix(info, refresh=False)

    def end(self, row: dict):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled:
            print(f"epoch {row['epoch'] + 1:>3}/{self.total}  loss {row['train_loss']:.4f}  "
                  f"top1 {row['top1']:.2f}  top5 {row['top5']:.2f}  lr {row['lr']:.5f}  "
                  f"{row['seconds']:.1f}s  {row['images_per_sec']:.0f} img/s", flush=True)


def evaluate(net, test_stream, contexts, dtype: str) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) on a whole test stream; one host read at the end."""
    correct1 = [mx.nd.zeros((1,), ctx=c) for c in contexts]
    correct5 = [mx.nd.zeros((1,), ctx=c) for c in contexts]
    n = 0
    for x, y in test_stream.batches():
        n += len(y)
        xs = gluon.utils.split_and_load(x, contexts, even_split=False)
        ys = gluon.utils.split_and_load(np.asarray(y, dtype=np.float32), contexts, even_split=False)
        for i, (xd, yd) in enumerate(zip(xs, ys)):
            out = net(xd.astype(dtype) if dtype != "float32" else xd).astype("float32")
            k = min(5, out.shape[1])
            top = mx.nd.topk(out, k=k, axis=1)  # (n, k) class indices, best first
            hit = top == yd.reshape((-1, 1))
            correct1[i] += hit[:, 0].sum()
            correct5[i] += hit.sum()
    c1, c5 = host_read(mx.nd.concat(*[mx.nd.concat(a, b, dim=0).as_in_context(contexts[0])
                                       for a, b in zip(correct1, correct5)], dim=0)).reshape(-1, 2).sum(axis=0)
    return 100.0 * c1 / n, 100.0 * c5 / n


def train(recipe, run_dir: Path, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          max_steps: int | None = None) -> dict:
    """Train `recipe` into `run_dir`; returns the result dict (also written to result.json).

    `max_steps` stops (with a checkpoint, as Ctrl-C does) after that many steps of this
    process: tests use it to interrupt a run at a known point."""
    contexts = parse_ctx(recipe.system.ctx)
    check_dtype(recipe.model.dtype, contexts)
    dist = make_dist(recipe.system.kvstore)
    run = RunDir(run_dir)
    recipe_hash = recipe_mod.content_hash(recipe)

    stream, test_stream, classes, train_images = make_streams(recipe, dist.rank, dist.workers)
    if dist.workers > 1 or len(contexts) > 1:
        parts = dist.workers * len(contexts)
        if recipe.data.batch_size % parts:
            raise UserError(f"data.batch_size {recipe.data.batch_size} does not split evenly over "
                            f"{dist.workers} worker(s) x {len(contexts)} device(s)")
    mx.random.seed(recipe.seed)
    np.random.seed(recipe.seed)

    net = build_model(recipe, classes, contexts)
    # static_alloc only: with static_shape=True as well, MXNet 1.9.1 (CPU, with or without
    # oneDNN) trains a BatchNorm ResNet differently from the same graph without it, and saving
    # the trainer's states perturbs the following steps (measured: weights 1.2 apart after six
    # steps); static_alloc alone gives the plain graph's numbers exactly.
    net.hybridize(static_alloc=True)
    dtype = recipe.model.dtype
    teacher = None
    if recipe.distill.teacher:
        teacher = load_teacher(recipe.distill, classes, contexts, dtype)
        loss_fn = DistillationLoss(recipe.distill.temperature, recipe.distill.soft_weight)
    else:
        loss_fn = SoftCrossEntropy()
    loss_fn.hybridize(static_alloc=True, static_shape=True)

    # Every input is checked (devices, data, model, teacher) before the run directory is touched.
    if dist.is_chief:
        run.prepare(recipe_hash, recipe.name, recipe_mod.to_toml(recipe), resume, overwrite)

    mixer = Mixer(recipe.mixup, recipe.epochs)
    mixblock = mix_block(mixer.sources) if mixer.enabled else None
    if mixblock is not None:
        mixblock.hybridize(static_alloc=True, static_shape=True)

    steps_per_epoch = stream.steps_per_epoch()
    scaler = LossScaler(recipe.optim.loss_scale)
    lr_args = schedule_args(recipe)
    global_batch = recipe.data.batch_size

    start_epoch, start_step, carried = 0, 0, {}
    best = {"top1": -1.0, "top5": 0.0, "epoch": -1}
    ckpt = run.latest_checkpoint() if resume else None
    if resume and ckpt is None and any(run.checkpoints()):
        raise UserError(f"no usable checkpoint in {run.ckpt_root}: every one is corrupt; start again with --overwrite")
    if ckpt is not None:
        start_epoch, start_step = ckpt.state["next_epoch"], ckpt.state["next_step"]
    # A distributed kvstore cannot save optimizer states (they live on the servers): there
    # the checkpoint keeps the parameters and the update count, and momentum starts afresh.
    distributed = dist.workers > 1 or str(recipe.system.kvstore).startswith("dist")
    opt_name, opt_params = make_optimizer(recipe, steps_per_epoch)
    if ckpt is not None and distributed:
        opt_params["begin_num_update"] = start_epoch * steps_per_epoch + start_step
    trainer = gluon.Trainer(net.collect_params(), opt_name, opt_params, kvstore=dist.kvstore)
    if ckpt is not None:
        net.load_parameters(str(ckpt.params), ctx=contexts)
        if not distributed:
            trainer.load_states(str(ckpt.trainer_states))
        scaler.load(ckpt.state["scaler"])
        best = ckpt.state["best"]
        carried = ckpt.state.get("partial_epoch", {})
        print(f"resuming {run.path} at epoch {start_epoch + 1}, step {start_step} from {ckpt.path.name}",
              file=sys.stderr)

    def save_trainer(path):
        if distributed:
            Path(path).write_text("optimizer states live on the parameter servers\n")
        else:
            trainer.save_states(path)

    if dist.is_chief:
        run.truncate_metrics(start_epoch)

    def save(epoch, step, partial=None):
        if not dist.is_chief:
            return None
        state = {"scaler": scaler.state(), "best": best, "seed": recipe.seed, "hash": recipe_hash,
                 "partial_epoch": partial or {}}
        return run.save_checkpoint(epoch, step, state, net.save_parameters, save_trainer,
                                   keep=recipe.system.keep_checkpoints)

    show = Progress(progress and dist.is_chief, recipe.epochs)
    steps_done = 0
    epoch_seconds = []
    with _StopFlag() as stop:
        for epoch in range(start_epoch, recipe.epochs):
            first = start_step if epoch == start_epoch else 0
            show.start(epoch, steps_per_epoch, first)
            loss_sums = [mx.nd.zeros((1,), ctx=c) for c in contexts]
            samples = carried.get("samples", 0) if epoch == start_epoch else 0
            seconds = carried.get("seconds", 0.0) if epoch == start_epoch else 0.0
            carried_loss = carried.get("loss_sum", 0.0) if epoch == start_epoch else 0.0
            window = LossWindow(recipe.system.log_interval)
            reads_before = HOST_READS["count"]
            t0 = time.perf_counter()
            for step, x, y, _ in stream.epoch(epoch, first):
                xs = gluon.utils.split_and_load(x, contexts)
                ys = gluon.utils.split_and_load(y, contexts)
                plan = mixer.plan(xs[0].shape[0], x.shape[2], x.shape[3], epoch,
                                  step_rng(recipe.seed, epoch, step, MIX_STREAM)) if mixblock else None
                if plan is not None:
                    mixed = [mixblock(xd, yd, mx.nd.array(plan.index, ctx=xd.context),
                                      mx.nd.array(plan.masks, ctx=xd.context),
                                      mx.nd.array(plan.weights, ctx=xd.context)) for xd, yd in zip(xs, ys)]
                    xs, ys = [m[0] for m in mixed], [m[1] for m in mixed]
                if dtype != "float32":
                    xs = [xd.astype(dtype) for xd in xs]
                teacher_out = [teacher(xd) for xd in xs] if teacher is not None else None
                with autograd.record():
                    outs = [net(xd) for xd in xs]
                    if teacher_out is None:
                        losses = [loss_fn(o, yd) for o, yd in zip(outs, ys)]
                    else:
                        losses = [loss_fn(o, yd, t) for o, yd, t in zip(outs, ys, teacher_out)]
                    scaled = [l * scaler.scale for l in losses] if scaler.scale != 1.0 else losses
                autograd.backward(scaled)
                apply = True
                if scaler.dynamic:
                    apply = scaler.update(overflow=not grads_finite(trainer._params, contexts))
                if apply:
                    trainer.step(global_batch * scaler.scale)
                step_loss = [l.sum() for l in losses]
                for acc, l in zip(loss_sums, step_loss):
                    acc += l
                if window.add(step, step_loss[0]):
                    window.check(epoch, run)
                samples += x.shape[0] * dist.workers
                steps_done += 1
                show.step()
                if stop.requested or (max_steps is not None and steps_done >= max_steps):
                    window.check(epoch, run)
                    mx.nd.waitall()
                    loss_now = carried_loss + float(host_read(_gather(loss_sums)).sum())
                    path = save(epoch, step + 1, {"samples": samples, "loss_sum": loss_now,
                                                  "seconds": seconds + time.perf_counter() - t0})
                    raise Interrupted(f"stopped at epoch {epoch + 1}, step {step + 1}; checkpoint {path}; "
                                      f"continue with --resume")
            window.check(epoch, run)
            mx.nd.waitall()
            seconds += time.perf_counter() - t0
            train_loss = (carried_loss + float(host_read(_gather(loss_sums)).sum())) / max(1, samples)
            top1, top5 = evaluate(net, test_stream, contexts, dtype)
            row = {
                "epoch": epoch,
                "lr": lr_at((epoch + 1) * steps_per_epoch - 1, iters_per_epoch=steps_per_epoch, **lr_args),
                "train_loss": train_loss,
                "top1": top1,
                "top5": top5,
                "seconds": seconds,
                "images_per_sec": samples / seconds if seconds > 0 else 0.0,
                "skipped_steps": scaler.skipped,
                "mixing": mixer.active(epoch),
                "host_syncs": HOST_READS["count"] - reads_before,
            }
            if top1 > best["top1"]:
                best = {"top1": top1, "top5": top5, "epoch": epoch}
            if dist.is_chief:
                run.append_metrics(row)
                save(epoch + 1, 0)
            show.end(row)
            epoch_seconds.append(seconds)

    rows = run.read_metrics() if dist.is_chief else []
    last = rows[-1] if rows else {"top1": float("nan"), "top5": float("nan")}
    result = {
        "name": recipe.name,
        "hash": recipe_hash,
        "final_top1": last["top1"],
        "final_top5": last["top5"],
        "best_top1": best["top1"],
        "best_top5": best["top5"],
        "best_epoch": best["epoch"],
        "epochs": recipe.epochs,
        "epochs_scale": recipe.epochs_scale,
        "seconds_per_epoch": float(np.mean([r["seconds"] for r in rows])) if rows else 0.0,
        "images_per_sec": float(np.mean([r["images_per_sec"] for r in rows])) if rows else 0.0,
        "skipped_steps": scaler.skipped,
        "seed": recipe.seed,
        "versions": versions(),
        "hardware": hardware(contexts),
        "workers": dist.workers,
        "train_images": train_images,
        "test_images": len(test_stream),
    }
    if dist.is_chief:
        run.write_result(result)
    dump = os.environ.get("GLUON_TRICKS_WORKER_PARAMS_DIR")
    if dump:  # for tests of distributed runs: every worker's final parameters
        Path(dump).mkdir(parents=True, exist_ok=True)
        net.save_parameters(str(Path(dump) / f"worker{dist.rank}.params"))
    return result


HOST_READS = {"count": 0}  # every device-to-host read of the loop, for metrics and bench/


def host_read(array) -> np.ndarray:
    """The one way the loop reads device values: counted, so syncs per epoch are known."""
    HOST_READS["count"] += 1
    return array.asnumpy()


def _gather(arrays):
    """Concatenate small per-device arrays on the first one's device (one read instead of many)."""
    first = arrays[0].context
    return mx.nd.concat(*[a.reshape((-1,)).as_in_context(first) for a in arrays], dim=0)


class LossWindow:
    """The last few steps' losses, kept on the device and read in one go.

    Reading a loss every step would make the host wait for the device each step;
    reading every `interval` steps keeps the device fed, bounds how far Python runs
    ahead of it (queued inputs hold memory), and still names the exact step whose
    loss first became NaN/Inf."""

    def __init__(self, interval: int):
        self.interval = max(1, interval)
        self.steps, self.losses = [], []

    def add(self, step: int, loss) -> bool:
        self.steps.append(step)
        self.losses.append(loss.reshape((1,)))
        return len(self.steps) >= self.interval

    def check(self, epoch: int, run) -> None:
        if not self.steps:
            return
        values = host_read(_gather(self.losses))
        steps, self.steps, self.losses = self.steps, [], []
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            last = run.latest_checkpoint(quiet=True)
            where = f"last good checkpoint {last.path}" if last else "no checkpoint yet"
            raise DivergenceError(f"loss is {values[bad[0]]} at epoch {epoch + 1}, step {steps[bad[0]]}: "
                                  f"training diverged ({where}); lower optim.lr, add warm-up, or check the data")
