"""What each trick costs per training step, relative to the baseline step.

Two views, both measured here side by side:
- end to end: the engine's images/s with the trick on vs off (second epoch);
- the trick alone: the time of the mixing block (or label smoothing on the host)
  per batch vs the time of one baseline step, which is what the goal speaks of
  (a mixing trick costs under 3% of the step). Distillation costs the teacher's
  forward; we report what it costs beyond that, measured inside one loop: each
  iteration times a plain student step, a teacher forward and a distillation step
  (teacher forward + student step with the distillation loss) back to back, in a
  rotating order, and the extra is the median over iterations of
  distill - teacher - plain. Under load, timings taken in separate runs minutes apart
  differ by more than the quantity measured (one run reported 97% of a step).
"""
from __future__ import annotations

import time

import numpy as np

from common import print_table, record, seconds_per_call, tmpdir
from train_step import BATCH, network_only, ours

STUDENT, TEACHER = "cifar_resnet20_v1", "cifar_resnet56_v1"

VARIANTS = {
    "label smoothing": {"smoothing": {"eps": 0.1}},
    "interpolation mixup": {"mixup": {"kind": "interpolation"}},
    "stitch mixup": {"mixup": {"kind": "stitch_height"}},
    "tile mixup": {"mixup": {"kind": "tile"}},
}


def teacher_file() -> str:
    import mxnet as mx

    from gluon_tricks.models import build_model
    from train_step import recipe_for

    net = build_model(recipe_for(TEACHER), 10, [mx.cpu()])
    net(mx.nd.zeros((1, 3, 32, 32)))
    path = str(tmpdir() / "teacher.params")
    net.save_parameters(path)
    return path


def mixing_alone(kind: str) -> float:
    import mxnet as mx

    from gluon_tricks.recipe import MixupSpec
    from gluon_tricks.tricks.mixing import Mixer

    mixer = Mixer(MixupSpec(kind=kind), epochs=1)
    x = mx.nd.random.normal(shape=(BATCH, 3, 32, 32))
    y = mx.nd.ones((BATCH, 10)) / 10
    rng = np.random.default_rng(0)

    def once():
        mixer.mix([x], [y], 0, rng)[0][0].wait_to_read()

    return seconds_per_call(once)


def smoothing_alone() -> float:
    from gluon_tricks.tricks.smoothing import smooth_targets

    labels = np.arange(BATCH) % 10
    t0 = time.perf_counter()
    for _ in range(200):
        smooth_targets(labels, 10, 0.1)
    return (time.perf_counter() - t0) / 200


def teacher_forward(path: str) -> float:
    import mxnet as mx

    from gluon_tricks.models import load_teacher
    from gluon_tricks.recipe import DistillSpec

    net = load_teacher(DistillSpec(teacher=path, teacher_model=TEACHER), 10, [mx.cpu()])
    x = mx.nd.random.normal(shape=(BATCH, 3, 32, 32))
    return seconds_per_call(lambda: net(x).wait_to_read(), repeats=5)


def distillation_extra(path: str, iterations: int = 9) -> tuple[float, float, float]:
    """(median extra seconds of a distillation step beyond teacher forward + plain step,
    median plain step seconds, median teacher forward seconds), all from one loop."""
    import statistics

    import mxnet as mx
    from mxnet import autograd, gluon

    from gluon_tricks.models import build_model, load_teacher
    from gluon_tricks.recipe import DistillSpec
    from gluon_tricks.tricks.distill import DistillationLoss
    from gluon_tricks.tricks.losses import SoftCrossEntropy
    from train_step import recipe_for

    teacher = load_teacher(DistillSpec(teacher=path, teacher_model=TEACHER), 10, [mx.cpu()])
    net = build_model(recipe_for(STUDENT), 10, [mx.cpu()])
    net.hybridize(static_alloc=True)
    trainer = gluon.Trainer(net.collect_params(), "nag", {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-4})
    plain_loss, distill_loss = SoftCrossEntropy(), DistillationLoss(20.0, 0.5)
    for block in (plain_loss, distill_loss):
        block.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.normal(shape=(BATCH, 3, 32, 32))
    y = mx.nd.one_hot(mx.nd.array(np.arange(BATCH) % 10), 10)

    def plain():
        with autograd.record():
            loss = plain_loss(net(x), y)
        loss.backward()
        trainer.step(BATCH)

    def forward():
        teacher(x)

    def distill():
        t = teacher(x)
        with autograd.record():
            loss = distill_loss(net(x), y, t)
        loss.backward()
        trainer.step(BATCH)

    def timed(fn):
        mx.nd.waitall()
        t0 = time.perf_counter()
        fn()
        mx.nd.waitall()
        return time.perf_counter() - t0

    for fn in (plain, forward, distill):  # warm-up: graph caches, memory pools
        timed(fn)
    extras, plains, forwards = [], [], []
    for i in range(iterations):
        order = [plain, forward, distill][i % 3:] + [plain, forward, distill][:i % 3]
        t = {fn.__name__: timed(fn) for fn in order}
        extras.append(t["distill"] - t["forward"] - t["plain"])
        plains.append(t["plain"])
        forwards.append(t["forward"])
    return statistics.median(extras), statistics.median(plains), statistics.median(forwards)


def main():
    base = ours(STUDENT)
    base_step = BATCH / base["images_per_sec"]
    net_step = BATCH / network_only(STUDENT)
    rows = []
    for name, extra in VARIANTS.items():
        row = ours(STUDENT, **extra)
        step = BATCH / row["images_per_sec"]
        alone = smoothing_alone() if name == "label smoothing" else mixing_alone(extra["mixup"]["kind"])
        rows.append({"benchmark": f"+{name}: cost of the trick per step", "ours": 100 * alone / net_step,
                     "reference": None, "ratio": None, "unit": "% of a step", "goal": "< 3%",
                     "met": alone / net_step < 0.03,
                     "detail": f"end to end {100 * (step / base_step - 1):+.1f}% step time (noisy)"})
    path = teacher_file()
    extra, plain_step, t_fwd = distillation_extra(path)
    rows.append({"benchmark": "+distillation beyond the teacher's forward", "ours": 100 * extra / plain_step,
                 "reference": None, "ratio": None, "unit": "% of a step", "goal": "~0% (teacher forward only)",
                 "met": extra / plain_step < 0.05,
                 "detail": f"one loop: teacher forward {1e3 * t_fwd:.0f} ms, student step {1e3 * plain_step:.0f} ms"})
    print_table(f"Tricks overhead ({STUDENT}, batch {BATCH})", rows)
    record("tricks_overhead", rows)
    worst = max(r["ours"] for r in rows[:-1])
    print(f"ratio: the costliest mixing trick adds {worst:.2f}% of a step; distillation adds "
          f"{rows[-1]['ours']:+.1f}% beyond the teacher's forward")


if __name__ == "__main__":
    main()
