"""Wall time of `table --run --parallel N` against the same rows one after another, on the CPU.

Each row trains in a process of its own either way. In parallel, the rows share the table's
OpenMP threads (runner.row_threads); before they did, every row process started OpenMP with
every core and `table demo --run --parallel 2` on 2 cores took 433 s against 256 s one row
after another. Goal: parallel no slower (>= 1.0x). The rows are demo-like (ResNet-20 on
cifar10-mini, no augmentation); `--images` and `--epochs` shrink them for a smoke run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from common import cores, print_table, record, tmpdir

ROW = ('epochs = {epochs}\n[data]\ndataset = "cifar10-mini"\naugment = "none"\nbatch_size = 64\n'
       'train_limit = {images}\ntest_limit = {test}\n[model]\nname = "cifar_resnet20_v1"\n'
       '[schedule]\nkind = "cosine"\n')
EXTRA = ["", '[smoothing]\neps = 0.1\n', '[mixup]\nkind = "interpolation"\n', '[optim]\nlr = 0.05\n']


def write_table(root, rows: int, images: int, epochs: int) -> None:
    table = root / "bench"
    table.mkdir(parents=True)
    lines = ['title = "parallel bench"']
    for i in range(rows):
        (table / f"r{i}.toml").write_text(f'name = "r{i}"\n' + ROW.format(epochs=epochs, images=images,
                                                                         test=images // 4) + EXTRA[i % len(EXTRA)])
        lines += ["[[rows]]", f'label = "r{i}"', f'recipe = "r{i}.toml"']
    (table / "table.toml").write_text("\n".join(lines) + "\n")


def wall_seconds(recipes, runs, *flags: str) -> float:
    env = dict(os.environ, GLUON_TRICKS_RECIPES=str(recipes), GLUON_TRICKS_RESULTS="")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gluon_tricks", "table", "bench", "--run", "--quiet", "--ctx", "cpu",
                    "--runs", str(runs), *flags], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--images", type=int, default=1024, help="training images per row")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    root = tmpdir()
    write_table(root / "recipes", args.rows, args.images, args.epochs)
    sequential = wall_seconds(root / "recipes", root / "seq")
    parallel = wall_seconds(root / "recipes", root / "par", "--parallel", str(args.rows))
    rows = [{"benchmark": f"table --run --parallel {args.rows} vs one row after another "
                          f"({args.rows} rows x {args.epochs} epochs x {args.images} images, CPU)",
             "ours": parallel, "reference": sequential, "ratio": sequential / parallel, "unit": "s",
             "goal": ">= 1.0x", "met": sequential / parallel >= 1.0,
             "detail": f"wall time; {cores()} cores, OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS')} shared "
                       f"by the rows at once"}]
    print_table("Parallel table rows", rows)
    record("parallel_table", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
