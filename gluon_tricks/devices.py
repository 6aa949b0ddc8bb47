"""Devices and data parallelism: the contexts a run uses, where this process stands in a
distributed job, how each device's share of a batch is cut, and the one counted way the
training loop reads a device value on the host.
"""
from __future__ import annotations

from dataclasses import dataclass

import mxnet as mx
import numpy as np
from mxnet import gluon

from gluon_tricks.errors import UserError, first_line


def parse_ctx(text: str, auto_limit: int | None = None) -> list[mx.Context]:
    """`auto`, `cpu`, `cpu:0,cpu:1`, `gpu:0,gpu:1` or `gpu:0-7` -> contexts; GPUs must exist.
    `auto` is every GPU MXNet sees, at most `auto_limit` of them (a recipe's source.devices:
    a row its paper trained on one GPU gets one, whatever the machine has), or the CPU when
    MXNet sees none (the CPU wheel, no driver)."""
    if text.strip() == "auto":
        gpus = mx.context.num_gpus()
        if auto_limit is not None:
            gpus = min(gpus, auto_limit)
        return [mx.gpu(i) for i in range(gpus)] if gpus else [mx.cpu()]
    out = []
    for part in text.replace(" ", "").split(","):
        kind, _, ids = part.partition(":")
        if kind not in ("cpu", "gpu"):
            raise UserError(f"--ctx {text!r}: use auto, cpu, cpu:0,cpu:1 or gpu:0,...,gpu:7")
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


@dataclass
class Dist:
    """Where this process stands in a data-parallel job."""
    kvstore: object = None  # a kvstore name, or the dist_* KVStore object
    rank: int = 0
    workers: int = 1
    is_distributed: bool = False  # a dist_* kvstore: parameter servers hold the optimizer states

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def make_dist(kvstore_name: str) -> Dist:
    if not kvstore_name.startswith("dist"):
        return Dist(kvstore=kvstore_name)
    kv = mx.kv.create(kvstore_name)
    return Dist(kvstore=kv, rank=kv.rank, workers=kv.num_workers, is_distributed=True)


def device_shares(images: int, devices: int) -> list[int]:
    """Images per device when `images` are cut over `devices`: as equal as possible, the first
    ones one more (MXNet's split_data with even_split=False: 64 over 3 -> 22, 21, 21), and no
    device without an image (2 images on 3 devices use 2). An even split is every device's
    equal share, the slices `split_and_load` has always made."""
    used = max(1, min(devices, images))
    each, extra = divmod(images, used)
    return [each + 1] * extra + [each] * (used - extra)


def check_worker_split(batch_size: int, workers: int) -> None:
    """Each worker's data stream reads an equal share of the global batch (data/loader.py)."""
    if batch_size % workers:
        raise UserError(f"data.batch_size {batch_size} does not split evenly over {workers} workers; "
                        f"choose a batch they divide (e.g. {batch_size - batch_size % workers or workers})")


def micro_batches(batch_size: int, workers: int, devices: int, device_batch: int) -> int:
    """Passes each device makes per optimizer step so that it never holds more than
    `device_batch` images at once (0: no cap); the recipe's global batch is kept. The cap
    must divide the first (largest) device's share; a device with one image fewer (an uneven
    split) cuts its share into as many passes, as equal as they can be."""
    shares = device_shares(batch_size // workers, devices)
    per_device = shares[0]
    if not device_batch or per_device <= device_batch:
        return 1
    if per_device % device_batch:
        divisor = max(d for d in range(1, device_batch + 1) if per_device % d == 0)
        which = "each device gets" if len(set(shares)) == 1 else "the first device gets"
        raise UserError(f"system.device_batch {device_batch} does not divide the {per_device} images {which} "
                        f"per step (data.batch_size {batch_size} over {workers} worker(s) x {devices} "
                        f"device(s)); use a divisor such as {divisor}")
    return per_device // device_batch


@dataclass(frozen=True)
class Layout:
    """How a run spreads its global batch: over `workers` x `devices` devices, each device in
    `accumulation` passes per optimizer step. The images of one pass are what BatchNorm
    normalizes over (its group), so the layout is part of what a run trains (identity.identity)."""
    batch_size: int
    workers: int
    devices: int  # per worker
    accumulation: int = 1

    @property
    def shares(self) -> list[int]:
        """Images each device of a worker gets per optimizer step (device_shares)."""
        return device_shares(self.batch_size // self.workers, self.devices)

    @property
    def device_batch(self) -> int:
        """Images each device gets per optimizer step: the first (largest) share."""
        return self.shares[0]

    @property
    def bn_group(self) -> int:
        """Images in one forward pass of one device: BatchNorm's batch statistics."""
        return self.device_batch // self.accumulation

    @property
    def shares_text(self) -> str:
        """The per-device images as people read them: "32", or "22/21/21" for an uneven split."""
        shares = self.shares
        return str(shares[0]) if len(set(shares)) == 1 else "/".join(map(str, shares))

    def as_dict(self) -> dict:
        out = {"workers": self.workers, "devices": self.devices, "device_batch": self.device_batch,
               "accumulation": self.accumulation, "bn_group": self.bn_group}
        if len(set(self.shares)) > 1:  # an uneven split: every device's share, the first one largest
            out["device_batches"] = self.shares
        return out


def plan_layout(batch_size: int, workers: int, devices: int, device_batch_cap: int) -> Layout:
    """The layout a run takes (system.device_batch caps the images of one pass). A worker's batch
    smaller than its device count trains on as many devices as it has images (`devices` of the
    Layout: the contexts the run keeps)."""
    check_worker_split(batch_size, workers)
    used = len(device_shares(batch_size // workers, devices))
    return Layout(batch_size, workers, used, micro_batches(batch_size, workers, used, device_batch_cap))


def planned_layout(recipe, devices: int | None = None, workers: int = 1) -> Layout:
    """The layout `engine.train` gives `recipe` on this machine: its system.ctx resolved (auto:
    up to source.devices GPUs), or `devices` per worker when the caller decides (a `--parallel`
    row's share). Tables find results by the hash this implies before training them."""
    if devices is None:
        devices = len(parse_ctx(recipe.system.ctx, auto_limit=recipe.source.devices))
    return plan_layout(recipe.data.batch_size, workers, devices, recipe.system.device_batch)


# How MXNet 1.9.1 reports an allocation it could not make, at the first host read after it
# (its engine runs ahead): src/storage/pooled_storage_manager.h logs "Memory allocation failed "
# followed by cudaGetErrorString(cudaErrorMemoryAllocation), i.e. "out of memory" (1.5-1.7:
# "cudaMalloc retry failed: out of memory"); cuDNN and cuBLAS workspaces fail as *_ALLOC_FAILED.
OUT_OF_MEMORY = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, mx.base.MXNetError) and any(m in str(error) for m in OUT_OF_MEMORY)


def smaller_device_batch(layout: Layout, source_bn_group: float) -> int | None:
    """A system.device_batch that should fit where `layout` did not: the source's BatchNorm
    group when it is smaller and divides the device's share (it keeps the row faithful),
    else the largest divisor of the share at most half the images per pass (activations
    grow about linearly with them: an estimate, not a measurement). None: one image per
    pass already."""
    if source_bn_group < layout.bn_group and source_bn_group == int(source_bn_group) \
            and layout.device_batch % int(source_bn_group) == 0:
        return int(source_bn_group)
    return next((d for d in range(layout.bn_group // 2, 0, -1) if layout.device_batch % d == 0), None)


def out_of_memory_message(contexts, layout: Layout, source_bn_group: float) -> str:
    where = str(contexts[0]) if len(contexts) == 1 else f"one of {', '.join(map(str, contexts))}"
    said = (f"out of memory on {where} at {layout.bn_group} images per pass "
            f"({layout.device_batch} per device and step, {layout.accumulation} pass(es))")
    fit = smaller_device_batch(layout, source_bn_group)
    if fit is None:
        return f"{said}: even one image per pass does not fit; use a smaller model or a GPU with more memory"
    faithful = " (the paper's BatchNorm group)" if fit == source_bn_group else \
        " (an estimate: about half the activation memory; halve again if it still does not fit)"
    return f"{said}; try --set system.device_batch={fit}{faithful}, or more GPUs"


def device_split(array, contexts) -> list:
    """A batch (numpy or NDArray, images on the first axis) cut over the devices as
    device_shares says, one slice per used device and never an empty one."""
    used = contexts[:len(device_shares(array.shape[0], len(contexts)))]
    return gluon.utils.split_and_load(array, used, even_split=False)


def eval_split(x, y, contexts) -> list[tuple]:
    """A test batch cut into one (images, labels) slice per device, never an empty one: a last
    batch smaller than the device count (Food-101's 5,250 test images at batch 32 leave 2)
    goes to its first len(x) devices. Each image is scored once wherever it lands, so the
    accuracy does not depend on the split."""
    return list(zip(device_split(x, contexts), device_split(y, contexts)))


def micro_slices(array, parts: int) -> list:
    """A device's slice (its first axis) in `parts` passes, cut as device_shares cuts a batch:
    equal passes when `parts` divides it, else the first ones one image more, and no empty
    pass (a share of 21 in 22 passes makes 21)."""
    if parts == 1:
        return [array]
    bounds = np.cumsum([0] + device_shares(array.shape[0], parts)).tolist()
    return [array[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def gather(arrays):
    """Concatenate small per-device arrays on the first one's device (one read instead of many)."""
    first = arrays[0].context
    return mx.nd.concat(*[a.reshape((-1,)).as_in_context(first) for a in arrays], dim=0)


class HostReads:
    """The one way the loop reads device values: `reads(array)` is `array.asnumpy()`, counted,
    so the syncs per epoch (the metrics' host_syncs, bench/train_step.py) are known."""

    def __init__(self):
        self.count = 0

    def __call__(self, array) -> np.ndarray:
        self.count += 1
        return array.asnumpy()


def unsynced_params(net) -> dict:
    """The parameters no optimizer step keeps equal across devices (grad_req "null": BatchNorm's
    running mean and variance), by their structural names (as save_parameters names them)."""
    return {name: p for name, p in net._collect_params_with_prefix().items() if p.grad_req == "null"}


def save_unsynced(net, contexts, path) -> None:
    """Each device's own copy of the unsynced parameters, into one .params file."""
    mx.nd.save(str(path), {f"{i}/{name}": p.data(ctx) for name, p in unsynced_params(net).items()
                           for i, ctx in enumerate(contexts)})


def load_unsynced(net, contexts, path) -> None:
    """Give each device back its own copy of the unsynced parameters. load_parameters gave every
    device the mean of the copies (what Gluon saves), which a resumed run would continue from: the
    BatchNorm statistics then differed from an uninterrupted run's by 1-4 ulp (probe 2.3)."""
    saved = mx.nd.load(str(path))
    for name, p in unsynced_params(net).items():
        for i, ctx in enumerate(contexts):
            key = f"{i}/{name}"
            if key in saved:
                p.data(ctx)[:] = saved[key]


def convolution_check(ctx, dtype: str = "float32") -> str | None:
    """One small 3x3 convolution's forward and backward pass on `ctx` in `dtype`, checked
    against numpy: None when it runs and agrees, else one line of what went wrong. A GPU's
    first convolution is where a cuDNN that cannot load, a kernel the driver cannot run or a
    faulty device first fails; `doctor` runs this so that shows before a run, not at its first
    step. The oracle is direct: y[n,o] = sum over i and the 3x3 window of x_pad * w, and the
    gradient of sum(y) by w[o,i,a,b] is the sum of x_pad[n,i] shifted by (a, b), for every o."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8))
    w = rng.standard_normal((4, 4, 3, 3)) / 6
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), (2, 3))
    want_y = np.einsum("nihwab,oiab->nohw", windows, w)
    want_grad = np.broadcast_to(windows.sum(axis=(0, 2, 3)), w.shape)
    try:
        xs, ws = mx.nd.array(x, ctx=ctx, dtype=dtype), mx.nd.array(w, ctx=ctx, dtype=dtype)
        ws.attach_grad()
        with mx.autograd.record():
            y = mx.nd.Convolution(xs, ws, kernel=(3, 3), pad=(1, 1), num_filter=4, no_bias=True)
        y.backward()
        got_y, got_grad = y.asnumpy().astype(np.float64), ws.grad.asnumpy().astype(np.float64)
    except mx.base.MXNetError as e:
        try:  # the engine keeps a failed operation's error and raises it again at the next
            mx.nd.waitall()  # wait or at exit: take it here, where it is reported
        except mx.base.MXNetError:
            pass
        return f"a convolution on {ctx} in {dtype} failed: {first_line(e)}"
    tolerance = 1e-2 if dtype == "float16" else 1e-4  # relative to the largest value
    for name, got, want in (("output", got_y, want_y), ("weight gradient", got_grad, want_grad)):
        error = float(np.abs(got - want).max() / np.abs(want).max())
        if not error <= tolerance:  # NaN too
            return f"a convolution on {ctx} in {dtype} computes a wrong {name} (off by {error:.1e} of its largest value)"
    return None
