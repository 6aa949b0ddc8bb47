"""What each trick costs per training step, relative to the baseline step.

Two views, both measured here side by side:
- end to end: the engine's images/s with the trick on vs off (second epoch);
- the trick alone: the time of the mixing block (or label smoothing on the host)
  per batch vs the time of one baseline step, which is what the goal speaks of
  (a mixing trick costs under 3% of the step). Distillation costs the teacher's
  forward; we report what it costs beyond that.
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
    from gluon_tricks.tricks.mixing import Mixer, mix_block

    mixer = Mixer(MixupSpec(kind=kind), epochs=1)
    block = mix_block(mixer.sources)
    block.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.normal(shape=(BATCH, 3, 32, 32))
    y = mx.nd.ones((BATCH, 10)) / 10
    rng = np.random.default_rng(0)

    def once():
        plan = mixer.plan(BATCH, 32, 32, 0, rng)
        block(x, y, mx.nd.array(plan.index), mx.nd.array(plan.masks), mx.nd.array(plan.weights))[0].wait_to_read()

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
    row = ours(STUDENT, distill={"teacher": path, "teacher_model": TEACHER})
    step = BATCH / row["images_per_sec"]
    t_fwd = teacher_forward(path)
    extra = step - base_step - t_fwd
    rows.append({"benchmark": "+distillation beyond the teacher's forward", "ours": 100 * extra / base_step,
                 "reference": None, "ratio": None, "unit": "% of a step", "goal": "~0% (teacher forward only)",
                 "met": extra / base_step < 0.05,
                 "detail": f"teacher forward {1e3 * t_fwd:.0f} ms, student step {1e3 * base_step:.0f} ms"})
    print_table(f"Tricks overhead ({STUDENT}, batch {BATCH})", rows)
    record("tricks_overhead", rows)
    worst = max(r["ours"] for r in rows[:-1])
    print(f"ratio: the costliest mixing trick adds {worst:.2f}% of a step; distillation adds "
          f"{rows[-1]['ours']:+.1f}% beyond the teacher's forward")


if __name__ == "__main__":
    main()
