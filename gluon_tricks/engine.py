"""The one training loop. Every recipe of every table runs through `train`.

`train` reads as its parts: `_setup` (check every input, build the Setup), `_restore`
(the trainer and the Position to continue from), `_train_epoch` per epoch, and
`_summarize` (the result, a pure function of the metrics rows). Devices and data
parallelism live in devices.py; what watches the loop (LossWindow, StopFlag, Progress) in watch.py.

Per step (`_train_step`): a prefetched host batch (augmented images, integer labels)
gets the recipe's smoothed targets, is split over the devices, and is mixed on each
(Mixer.mix); the step-loss object (StudentLoss, or DistillStep whose teacher predicts
on exactly the mixed images) records the loss, which is back-propagated, and the
Trainer reduces gradients through the KVStore the recipe names and applies the update.

Host syncs are kept off the hot path: losses and accuracies accumulate on the
devices; the per-step losses are read together every `system.log_interval`
steps (LossWindow), which bounds how far Python runs ahead of the device and
still names the exact step of a NaN. Dynamic loss scaling is the exception: it
must know before each update whether the gradients overflowed.
"""
from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from gluon_tricks import recipe as recipe_mod
from gluon_tricks.checkpoints import check_trainer_states
from gluon_tricks.data import make_streams
from gluon_tricks.data.streams import RNG_MIX, TestStream, TrainStream, step_rng
from gluon_tricks.devices import (Dist, HostReads, Layout, device_split, eval_split, gather, is_out_of_memory,
                                  load_unsynced, make_dist, micro_slices, out_of_memory_message, parse_ctx,
                                  plan_layout, save_unsynced)
from gluon_tricks.errors import DivergenceError, Interrupted, OutOfMemory, UserError
from gluon_tricks.identity import content_hash, source_bn_group
from gluon_tricks.models import build_model, load_teacher
from gluon_tricks.recipe import Recipe
from gluon_tricks.results import RunDir, provenance
from gluon_tricks.tricks.distill import DistillStep, renormalization
from gluon_tricks.tricks.losses import StudentLoss
from gluon_tricks.tricks.mixing import Mixer
from gluon_tricks.tricks.optim import make_optimizer
from gluon_tricks.tricks.precision import LossScaler, check_dtype, checks_reduced, optimizer_step
from gluon_tricks.tricks.smoothing import smooth_targets
from gluon_tricks.watch import LossWindow, Progress, StopFlag, weights_finite


def train(recipe, run_dir: Path, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          max_steps: int | None = None, params_out: Path | None = None) -> dict:
    """Train `recipe` into `run_dir`; returns the result dict (also written to result.json).

    `max_steps` stops (with a checkpoint, as Ctrl-C does) after that many steps of this
    process. `params_out` also writes this worker's final parameters to
    params_out/worker<rank>.params (every worker of a distributed job, not only rank 0)."""
    try:
        return _train(recipe, run_dir, resume, overwrite, progress, max_steps, params_out)
    finally:
        # Parameters and the Trainer reference each other: the finished run's network, optimizer
        # states and kvstore buffers (GPU memory) would wait for a full collection otherwise.
        gc.collect()


def _train(recipe, run_dir, resume, overwrite, progress, max_steps, params_out) -> dict:
    setup = _setup(recipe, run_dir, resume, overwrite, progress)
    try:
        return _train_set_up(setup, recipe, resume, max_steps, params_out)
    except mx.base.MXNetError as e:
        if is_out_of_memory(e):  # a one-line fix instead of MXNet's multi-line report
            raise OutOfMemory(out_of_memory_message(setup.contexts, setup.layout,
                                                    source_bn_group(recipe))) from None
        raise
    finally:  # the run directory's lock (results.RunDir.lock) ends with the run
        setup.run.unlock()


def _train_set_up(setup, recipe, resume, max_steps, params_out) -> dict:
    """Train a set-up run to its end: epochs, checkpoints, the result."""
    position, trainer = _restore(setup, resume)
    if setup.dist.is_chief:
        setup.run.truncate_metrics(position.epoch)
    if setup.progress.enabled and recipe.system.ctx.strip() == "auto":  # no silent CPU run on a GPU machine
        print(f"devices: {', '.join(map(str, setup.contexts))} (--ctx auto: up to source.devices = "
              f"{recipe.source.devices} GPU(s), else the CPU)", file=sys.stderr, flush=True)
    with StopFlag(max_steps) as stop:
        for epoch in range(position.epoch, recipe.epochs):
            row = _train_epoch(setup, trainer, position, epoch, stop)
            if row["top1"] is not None and row["top1"] > position.best["top1"]:
                position.best = {"top1": row["top1"], "top5": row["top5"], "epoch": epoch}
            position.next_epoch()
            if setup.dist.is_chief:
                setup.run.append_metrics(row)
                _save(setup, trainer, position)
            setup.progress.end(row)
    rows = setup.run.read_metrics() if setup.dist.is_chief else []
    if setup.dist.is_chief:
        _check_final_row(rows, recipe.epochs, setup.run)
    result = _summarize(recipe, setup.recipe_hash, rows, position.best, setup.scaler.skipped, setup.dist.workers,
                        setup.train_images, len(setup.test_stream))
    result.update(teacher_scores(setup))
    result["layout"] = dict(setup.layout.as_dict(), source_bn_group=source_bn_group(recipe))
    result.update(provenance(setup.contexts))
    result["segments"] = position.segments
    if setup.dist.is_chief:
        setup.run.write_result(result)
    if params_out is not None:
        Path(params_out).mkdir(parents=True, exist_ok=True)
        setup.net.save_parameters(str(Path(params_out) / f"worker{setup.dist.rank}.params"))
    return result


def teacher_scores(setup: Setup) -> dict:
    """A distilling run's teacher on the run's test set, seen as it sees the training batches
    (in its own normalization): recorded in the result and printed under the table, so a weak
    or mis-normalized teacher shows beside its students. One test pass, at the end of the run."""
    step = setup.step_loss
    if not isinstance(step, DistillStep):
        return {}
    top1, top5 = evaluate(lambda x: step.teacher(step.teacher_input(x)), setup.test_stream, setup.contexts,
                          setup.recipe.model.dtype, setup.host_reads)
    return {"teacher_top1": top1, "teacher_top5": top5}


@dataclass
class Setup:
    """Everything a run fixes before its first step."""
    recipe: Recipe
    run: RunDir
    recipe_hash: str
    contexts: list[mx.Context]
    dist: Dist
    net: gluon.Block
    train_stream: TrainStream
    test_stream: TestStream
    classes: int
    train_images: int
    step_loss: StudentLoss | DistillStep
    mixer: Mixer
    scaler: LossScaler
    progress: Progress
    layout: Layout  # devices and passes per device (system.device_batch) of each optimizer step
    host_reads: HostReads = field(default_factory=HostReads)  # this run's device-to-host reads

    @property
    def steps_per_epoch(self) -> int:
        return self.train_stream.steps_per_epoch()


def _setup(recipe, run_dir: Path, resume: bool, overwrite: bool, progress: bool) -> Setup:
    """Check every input (devices, data, model, teacher), then prepare the run directory."""
    contexts = parse_ctx(recipe.system.ctx, auto_limit=recipe.source.devices)
    check_dtype(recipe.model.dtype, contexts)
    if recipe.optim.loss_scale == "dynamic" and recipe.system.kvstore.startswith("dist"):
        raise UserError("optim.loss_scale = \"dynamic\" cannot run with a distributed kvstore (the parameter "
                        "servers apply every update, so no worker can skip an overflowing step); use a static "
                        "scale such as \"1024\" (docs/gpu.md)")
    dist = make_dist(recipe.system.kvstore)
    run = RunDir(run_dir)
    layout = plan_layout(recipe.data.batch_size, dist.workers, len(contexts), recipe.system.device_batch)
    if layout.devices < len(contexts):  # a device without images would add a stale gradient to each update
        if progress and dist.is_chief:
            print(f"devices: {layout.devices} of the {len(contexts)} given (a batch of "
                  f"{recipe.data.batch_size // dist.workers} per worker has an image for {layout.devices})",
                  file=sys.stderr, flush=True)
        contexts = contexts[:layout.devices]

    streams = make_streams(recipe, dist.rank, dist.workers, contexts)
    classes = streams.classes
    recipe_hash = content_hash(recipe, layout.bn_group)  # another BatchNorm group: another run
    mx.random.seed(recipe.seed)
    np.random.seed(recipe.seed)

    net = build_model(recipe, classes, contexts)
    if layout.accumulation > 1:  # the micro-batches' gradients add up; zeroed after each optimizer step
        for p in net.collect_params().values():
            if p.grad_req != "null":
                p.grad_req = "add"
    # static_alloc only: with static_shape=True as well, MXNet 1.9.1 (CPU, with or without
    # oneDNN) trains a BatchNorm ResNet differently from the same graph without it, and saving
    # the trainer's states perturbs the following steps (measured: weights 1.2 apart after six
    # steps); static_alloc alone gives the plain graph's numbers exactly.
    net.hybridize(static_alloc=True)
    if recipe.distill.teacher:
        d = recipe.distill
        teacher_dtype = d.teacher_dtype or recipe.model.dtype
        teacher = load_teacher(d, classes, contexts, teacher_dtype)
        step_loss = DistillStep(teacher, d.temperature, d.soft_weight, teacher_dtype,
                                renormalization(recipe.data.mean, recipe.data.std, d.teacher_mean, d.teacher_std))
    else:
        step_loss = StudentLoss()

    if dist.is_chief:
        run.prepare(recipe_hash, recipe.name, recipe_mod.to_toml(recipe), resume, overwrite)

    return Setup(recipe, run, recipe_hash, contexts, dist, net, streams.train, streams.test, classes,
                 streams.train_images, step_loss, Mixer(recipe.mixup, recipe.epochs),
                 LossScaler(recipe.optim.loss_scale), Progress(progress and dist.is_chief, recipe.epochs), layout)


@dataclass
class Position:
    """Where training continues: the next epoch and step, the best epoch so far, and the
    sums of the epoch so far when it stopped mid-way (a checkpoint's `partial_epoch`)."""
    epoch: int = 0
    step: int = 0
    samples: int = 0  # images of every worker trained so far in this epoch
    loss_sum: float = 0.0  # this worker's summed loss so far in this epoch
    seconds: float = 0.0  # training time so far in this epoch
    # the checkpoint's and result's form: {"top1", "top5", "epoch"}
    best: dict = field(default_factory=lambda: {"top1": -1.0, "top5": 0.0, "epoch": -1})
    # Each stretch of training, a resume starting a new one: where it started and the [system]
    # it ran with (devices, device_batch are not part of the identity but change the arithmetic).
    segments: list = field(default_factory=list)

    def next_epoch(self) -> None:
        self.epoch, self.step, self.samples, self.loss_sum, self.seconds = self.epoch + 1, 0, 0, 0.0, 0.0

    def partial_epoch(self) -> dict:
        """The mid-epoch sums as a checkpoint stores them ({} at an epoch's start)."""
        if self.step == 0:
            return {}
        return {"samples": self.samples, "loss_sum": self.loss_sum, "seconds": self.seconds}

    def load_partial_epoch(self, partial: dict) -> None:
        self.samples = partial.get("samples", 0)
        self.loss_sum = partial.get("loss_sum", 0.0)
        self.seconds = partial.get("seconds", 0.0)


def _restore(setup: Setup, resume: bool) -> tuple[Position, gluon.Trainer]:
    """The trainer, and where to continue: from the last good checkpoint when resuming."""
    run, steps = setup.run, setup.steps_per_epoch
    ckpt = run.latest_checkpoint() if resume else None
    if resume and ckpt is None and any(run.checkpoints()):
        raise UserError(f"no usable checkpoint in {run.ckpt_root}: every one is corrupt; start again with --overwrite")
    position = Position()
    if ckpt is not None:
        position.epoch, position.step = ckpt.state["next_epoch"], ckpt.state["next_step"]
    # A distributed kvstore cannot save optimizer states (they live on the servers): there
    # the checkpoint keeps the parameters and the update count, and momentum starts afresh.
    opt_name, opt_params = make_optimizer(setup.recipe, setup.net, steps)
    if ckpt is not None and setup.dist.is_distributed:
        opt_params["begin_num_update"] = position.epoch * steps + position.step
    trainer = gluon.Trainer(setup.net.collect_params(), opt_name, opt_params, kvstore=setup.dist.kvstore,
                            update_on_kvstore=False if checks_reduced(setup.scaler, setup.contexts) else None)
    # Parameter servers receive the optimizer pickled, and MXNet drops its param_dict there
    # (Optimizer.__getstate__), i.e. every parameter's lr_mult/wd_mult (no bias decay): the same
    # multipliers keyed by index survive the pickle.
    trainer.optimizer.set_lr_mult({i: p.lr_mult for i, p in enumerate(trainer._params)})
    trainer.optimizer.set_wd_mult({i: p.wd_mult for i, p in enumerate(trainer._params)})
    if ckpt is not None:
        setup.net.load_parameters(str(ckpt.params), ctx=setup.contexts)
        if not setup.dist.is_distributed:
            check_trainer_states(ckpt.trainer_states)  # MXNet would unpickle any code in it
            trainer.load_states(str(ckpt.trainer_states))
            # after load_states: it broadcasts device 0's copy of every parameter to the others
            if ckpt.device_states is not None and ckpt.state.get("devices") == [str(c) for c in setup.contexts]:
                load_unsynced(setup.net, setup.contexts, ckpt.device_states)
        setup.scaler.load(ckpt.state["scaler"])
        position.best = ckpt.state["best"]
        position.load_partial_epoch(ckpt.state.get("partial_epoch", {}))
        position.segments = list(ckpt.state.get("segments", []))
        print(f"resuming {run.path} at epoch {position.epoch + 1}, step {position.step} from {ckpt.path.name}",
              file=sys.stderr)
    position.segments.append({"from_epoch": position.epoch, "from_step": position.step,
                              "system": setup.recipe.to_dict()["system"], "devices": [str(c) for c in setup.contexts]})
    return position, trainer


def _save(setup: Setup, trainer, position: Position):
    """A checkpoint from which training continues at `position` (the chief writes it)."""
    if not setup.dist.is_chief:
        return None

    def save_trainer(path):
        if setup.dist.is_distributed:
            Path(path).write_text("optimizer states live on the parameter servers\n")
        else:
            trainer.save_states(path)

    if not weights_finite(setup.net, setup.contexts[0], setup.host_reads):
        # The loss guard sees a step's loss, computed before its update: the update of the
        # last step before a save can still leave NaN/Inf weights. Never write those.
        last = setup.run.latest_checkpoint(quiet=True)
        where = f"last good checkpoint {last.path}" if last else "no checkpoint yet"
        at = (f"after epoch {position.epoch}" if position.step == 0
              else f"at epoch {position.epoch + 1}, step {position.step}")
        raise DivergenceError(f"the weights are NaN/Inf {at}: training diverged ({where}; nothing newer was "
                              "saved); lower optim.lr, add warm-up, or check the data")
    state = {"scaler": setup.scaler.state(), "best": position.best, "seed": setup.recipe.seed,
             "hash": setup.recipe_hash, "partial_epoch": position.partial_epoch(), "segments": position.segments,
             "devices": [str(c) for c in setup.contexts]}
    save_device_states = None
    if len(setup.contexts) > 1:
        def save_device_states(path):
            save_unsynced(setup.net, setup.contexts, path)
    return setup.run.save_checkpoint(position.epoch, position.step, state, setup.net.save_parameters, save_trainer,
                                     keep=setup.recipe.system.keep_checkpoints, save_device_states=save_device_states)


def _train_epoch(setup: Setup, trainer, position: Position, epoch: int, stop: StopFlag) -> dict:
    """Epoch `position.epoch` from `position.step` (a resumed one carries its sums in
    `position`), then evaluation; the metrics row."""
    recipe, contexts, read = setup.recipe, setup.contexts, setup.host_reads
    setup.progress.start(epoch, setup.steps_per_epoch, position.step)
    loss_sums = [mx.nd.zeros((1,), ctx=c) for c in contexts]
    window = LossWindow(recipe.system.log_interval, read)
    reads_before = read.count
    t0 = time.perf_counter()
    for step, x, labels in setup.train_stream.epoch(epoch, position.step):
        losses = _train_step(setup, trainer, x, labels, epoch, step)
        for total, loss in zip(loss_sums, losses):
            total += loss
        if window.add(step, losses[0]):
            window.check(epoch, setup.run)
        position.samples += x.shape[0] * setup.dist.workers
        setup.progress.step()
        if stop.after_step():
            window.check(epoch, setup.run)
            mx.nd.waitall()
            position.step = step + 1
            position.loss_sum += float(read(gather(loss_sums)).sum())
            position.seconds += time.perf_counter() - t0
            path = _save(setup, trainer, position)
            raise Interrupted(f"stopped at epoch {epoch + 1}, step {step + 1}; checkpoint {path}; "
                              f"continue with --resume")
    window.check(epoch, setup.run)
    mx.nd.waitall()
    seconds = position.seconds + time.perf_counter() - t0
    samples = position.samples
    # loss_sums hold this worker's images, `samples` counts every worker's
    train_loss = (position.loss_sum + float(read(gather(loss_sums)).sum())) / max(1, samples / setup.dist.workers)
    top1 = top5 = None  # not evaluated this epoch (system.eval_every)
    if evaluated_after(epoch, recipe.epochs, recipe.system.eval_every):
        top1, top5 = evaluate(setup.net, setup.test_stream, contexts, recipe.model.dtype, read)
    steps = setup.steps_per_epoch
    return {
        "epoch": epoch,
        "lr": trainer.optimizer.lr_scheduler.lr((epoch + 1) * steps - 1),  # the Schedule the updates apply
        "train_loss": train_loss,
        "top1": top1,
        "top5": top5,
        "seconds": seconds,
        "images_per_sec": samples / seconds if seconds > 0 else 0.0,
        "skipped_steps": setup.scaler.skipped,
        "mixing": setup.mixer.active(epoch),
        "host_syncs": read.count - reads_before,
    }


def evaluated_after(epoch: int, epochs: int, eval_every: int) -> bool:
    """Whether epoch `epoch` (0-based) of an `epochs`-epoch run ends with a test pass: every
    `eval_every`-th epoch, and always the last, whose row is the run's result."""
    return (epoch + 1) % eval_every == 0 or epoch == epochs - 1


def _train_step(setup: Setup, trainer, x, labels, epoch: int, step: int) -> list:
    """smooth -> split over devices -> mix -> step loss -> backward -> update.
    Returns each device's summed loss (still on the device).

    The slices may differ by an image (64 over 3 devices: 22, 21, 21; devices.device_shares):
    each device's gradient is the sum over its images and the update divides the reduced sum
    by the global batch, so only BatchNorm's per-pass statistics see the split."""
    recipe, contexts, scaler = setup.recipe, setup.contexts, setup.scaler
    targets = smooth_targets(labels, setup.classes, recipe.smoothing.eps, recipe.smoothing.form)
    images = device_split(x, contexts)
    targets = device_split(targets, contexts)
    images, targets = setup.mixer.mix(images, targets, epoch, step_rng(recipe.seed, epoch, step, RNG_MIX))
    if recipe.model.dtype != "float32":
        images = [xd.astype(recipe.model.dtype) for xd in images]
    parts = setup.layout.accumulation
    # each device's slice in `parts` passes (system.device_batch); a device one image short of
    # the first may have a pass fewer, whose gradient ("add") it then simply does not add to
    passes = [(micro_slices(xd, parts), micro_slices(yd, parts)) for xd, yd in zip(images, targets)]
    step_sums = [None] * len(passes)
    for part in range(parts):
        on = [d for d, (xp, _) in enumerate(passes) if part < len(xp)]
        losses = setup.step_loss(setup.net, [passes[d][0][part] for d in on], [passes[d][1][part] for d in on])
        scaled = losses
        if scaler.scale != 1.0:
            with autograd.record():  # the product joins the graph the step loss recorded
                scaled = [loss * scaler.scale for loss in losses]
        autograd.backward(scaled)
        for d, loss in zip(on, losses):
            step_sums[d] = loss.sum() if step_sums[d] is None else step_sums[d] + loss.sum()
    optimizer_step(trainer, scaler, contexts, recipe.data.batch_size, checks_reduced(scaler, contexts),
                   read=setup.host_reads)
    if parts > 1:
        for p in trainer._params:
            if p.grad_req != "null":
                p.zero_grad()
    return step_sums


def _check_final_row(rows: list[dict], epochs: int, run: RunDir) -> None:
    """A result is its last epoch's row: none is written without one (probe 5.9: with result.json
    and metrics.jsonl deleted and the checkpoints kept, the resumed run wrote final_top1 NaN)."""
    if epochs - 1 not in {r["epoch"] for r in rows}:
        raise UserError(f"{run.metrics_file} has no row for the last epoch ({epochs}): the metrics were lost, "
                        f"so no result can be written; train again (train --overwrite, or move {run.path} away "
                        "before table --run)")


def _summarize(recipe, recipe_hash: str, rows: list[dict], best: dict, skipped_steps: int, workers: int,
               train_images: int, test_images: int) -> dict:
    """The result of a finished run from its metrics rows (pure: no MXNet, no files)."""
    last = rows[-1] if rows else {"top1": float("nan"), "top5": float("nan")}
    return {
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
        "skipped_steps": skipped_steps,
        "seed": recipe.seed,
        "workers": workers,
        "train_images": train_images,
        "test_images": test_images,
    }


def evaluate(net, test_stream, contexts, dtype: str, read) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) on a whole test stream; one host read at the end."""
    correct1 = [mx.nd.zeros((1,), ctx=c) for c in contexts]
    correct5 = [mx.nd.zeros((1,), ctx=c) for c in contexts]
    n = 0
    for x, y in test_stream.batches():
        n += len(y)
        for i, (xd, yd) in enumerate(eval_split(x, np.asarray(y, dtype=np.float32), contexts)):
            out = net(xd.astype(dtype) if dtype != "float32" else xd).astype("float32")
            k = min(5, out.shape[1])
            top = mx.nd.topk(out, k=k, axis=1)  # (n, k) class indices, best first
            hit = top == yd.reshape((-1, 1))
            correct1[i] += hit[:, 0].sum()
            correct5[i] += hit.sum()
    c1, c5 = read(mx.nd.concat(*[mx.nd.concat(a, b, dim=0).as_in_context(contexts[0])
                                  for a, b in zip(correct1, correct5)], dim=0)).reshape(-1, 2).sum(axis=0)
    return 100.0 * c1 / n, 100.0 * c5 / n
