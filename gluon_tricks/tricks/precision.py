"""float16 training: fp16 network with fp32 BatchNorm, fp32 master weights, loss scaling.

- `net.cast("float16")`: Gluon's BatchNorm keeps its parameters in float32 when
  cast to float16 (cuDNN's fp16 BN takes fp32 scale/shift), so casting the whole
  network is enough;
- the optimizer gets `multi_precision=True`: it keeps an fp32 copy of every fp16
  weight, applies the update to that copy and casts it back;
- the loss is computed in fp32 (the loss blocks cast logits first);
- loss scaling (not in GluonCV): multiply the loss by S before backward and divide
  the gradients by S in the update (`rescale_grad`). Static: S fixed. Dynamic: a
  step whose gradients overflow is skipped and S halves; after `growth_interval`
  good steps S doubles.
The MXNet CPU wheel has no float16 GEMM, so float16 is refused on CPU contexts.
"""
from __future__ import annotations

from gluon_tricks.errors import UserError


class LossScaler:
    def __init__(self, mode: str = "none", init_scale: float = 2.0 ** 16, growth_interval: int = 2000,
                 factor: float = 2.0, min_scale: float = 1.0):
        self.dynamic = mode == "dynamic"
        if mode == "none":
            self.scale = 1.0
        elif self.dynamic:
            self.scale = init_scale
        else:
            self.scale = float(mode)
        self.growth_interval, self.factor, self.min_scale = growth_interval, factor, min_scale
        self.good_steps = 0
        self.skipped = 0

    def update(self, overflow: bool) -> bool:
        """Record one step's outcome; returns True if the step's update must be applied."""
        if not self.dynamic:
            return not overflow
        if overflow:
            self.scale = max(self.min_scale, self.scale / self.factor)
            self.good_steps = 0
            self.skipped += 1
            return False
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.factor
            self.good_steps = 0
        return True

    def state(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def load(self, state: dict) -> None:
        self.scale, self.good_steps, self.skipped = state["scale"], state["good_steps"], state["skipped"]


def check_dtype(dtype: str, contexts) -> None:
    if dtype == "float16" and any(c.device_type == "cpu" for c in contexts):
        raise UserError(
            "--dtype float16 needs GPU contexts: the MXNet CPU build has no float16 matrix multiply; "
            "use model.dtype=float32 on CPU, or --ctx gpu:0 on a GPU machine (docs/gpu.md)"
        )


# MXNet 1.9.1's multi_all_finite takes at most 200 arrays of ONE dtype per call: 201
# arrays crash the process (segfault, measured) and a float16 + float32 mix fails its
# type check, which is exactly the case of an fp16 net with fp32 BatchNorm. So the
# gradients are checked per (device, dtype) in chunks of 200, as mxnet.contrib.amp does.
FINITE_CHUNK = 200


def finite_flags(params, ctx_list):
    """One (1,) float array per device on ctx_list[0]: 1 if all its gradients are finite."""
    import mxnet as mx

    flags = []
    for c in ctx_list:
        by_dtype = {}
        for p in params:
            if p.grad_req != "null":
                g = p.grad(c)
                by_dtype.setdefault(g.dtype, []).append(g)
        if not by_dtype:
            continue
        flag = mx.nd.ones((1,), ctx=c)
        for grads in by_dtype.values():
            for i in range(0, len(grads), FINITE_CHUNK):
                chunk = grads[i:i + FINITE_CHUNK]
                mx.nd.multi_all_finite(*chunk, num_arrays=len(chunk), init_output=False, out=flag)
        flags.append(flag.as_in_context(ctx_list[0]))
    return flags


def grads_finite(params, ctx_list, read=None) -> bool:
    """True if every gradient on every device is finite: fused checks on the devices and
    one host read for all of them (`read`: the caller's counted reader, devices.HostReads)."""
    import mxnet as mx

    flags = finite_flags(params, ctx_list)
    if not flags:
        return True
    both = mx.nd.concat(*flags, dim=0)
    values = read(both) if read is not None else both.asnumpy()
    return bool(values.min() > 0)


def checks_reduced(scaler: LossScaler, contexts) -> bool:
    """Dynamic loss scaling must judge the gradient the update will use: the sum over the
    devices, where float16 overflows first. So with several devices the reduction runs apart
    from the update (as MXNet's AMP does; the Trainer needs update_on_kvstore=False), and every
    device sees the same sum and takes the same decision."""
    return scaler.dynamic and len(contexts) > 1


def optimizer_step(trainer, scaler: LossScaler, contexts, global_batch: int, check_reduced: bool,
                   read=None) -> bool:
    """One update from the (loss-scaled) gradients of `global_batch` images; False when dynamic
    loss scaling skips it. With `check_reduced` (see checks_reduced) the overflow check runs on
    the summed gradient, which every device holds after the reduction. `read` is the caller's
    counted host reader for the overflow verdict (devices.HostReads)."""
    if not scaler.dynamic:
        trainer.step(global_batch * scaler.scale)
        return True
    if check_reduced:
        trainer.allreduce_grads()
        overflow = not grads_finite(trainer._params, contexts[:1], read=read)
    else:
        overflow = not grads_finite(trainer._params, contexts, read=read)
    if not scaler.update(overflow=overflow):
        return False
    if check_reduced:
        trainer.update(global_batch * scaler.scale)
    else:
        trainer.step(global_batch * scaler.scale)
    return True
