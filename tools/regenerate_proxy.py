"""Regenerate the proxy tables (recipes/proxy/) from scratch on real CIFAR-100 images.

    python tools/regenerate_proxy.py                                     # the suite (resumable)
    python tools/regenerate_proxy.py --epochs-scale 0.1 --seeds 1 --runs /tmp/smoke  # smoke test

Two processes, one per label set (coarse, fine), one thread each. Each trains, in order: the
proxy teacher (the shipped teacher recipe at proxy scale), exported with `gluon-tricks export`
to the .params file the distillation row loads; the distillation row; the first seed of every
other row; then the other seeds, row by row, shortest rows first. So an interrupted suite has
every row as early as possible, and running this again resumes it (an unfinished run from its
last checkpoint). At full scale it then
copies the finished runs (no checkpoints) into results/, where a fresh clone finds them,
writes the suite's wall and CPU time to docs/proxy/suite.json, prints the table and draws
the pictures into docs/proxy/.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEACHERS = {"coarse": "teacher.toml", "fine": "teacher-fine.toml"}


def gluon_tricks(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "gluon_tricks", *args], check=True, cwd=ROOT)


def train_half(labels: str, seeds: int, scale: float, runs: Path) -> None:
    from gluon_tricks.paths import recipes_root
    from gluon_tricks.engine import train
    from gluon_tricks.recipe import load_recipe, scale_epochs, with_changes
    from gluon_tricks.results import RunDir, find_result, run_dir_for
    from gluon_tricks.tables import load_table, row_recipes, run_hash

    def run(recipe) -> Path:
        h = run_hash(recipe)  # the hash train() gives it on these devices
        found = find_result(h, runs)
        if found:
            return found[0]
        out = run_dir_for(recipe.name, h, runs)
        print(f"{labels}: {recipe.name} seed {recipe.seed} -> {out}", flush=True)
        train(recipe, out, resume=RunDir(out).latest_checkpoint(quiet=True) is not None, progress=False)
        return out

    table = load_table(recipes_root(), f"proxy/{labels}")
    per_row = [row_recipes(row, seeds, scale) for row in table.rows]
    teacher_file = next(rs[0].distill.teacher for rs in per_row if rs[0].distill.teacher)
    if scale != 1:  # a smoke test must not replace the suite's teacher file
        teacher_file = str(runs / f"proxy-teacher-{labels}-scaled.params")
        per_row = [[with_changes(r, [f'distill.teacher="{teacher_file}"']) if r.distill.teacher else r for r in rs]
                   for rs in per_row]
    # The longest chain first: teacher, its export, the distillation row; then the other rows.
    teacher = scale_epochs(load_recipe(ROOT / "recipes" / "proxy" / TEACHERS[labels]), scale)
    teacher_run = run(teacher)
    gluon_tricks("export", str(teacher_run), teacher_file, "--overwrite")  # regenerating replaces it
    for rs in sorted(per_row, key=lambda rs: not rs[0].distill.teacher):
        run(rs[0])
    # Then the other seeds row by row, shortest rows first: as many rows as possible reach
    # every seed if the suite is stopped early.
    for rs in sorted(per_row, key=lambda rs: rs[0].epochs):
        for recipe in rs[1:]:
            run(recipe)


def copy_results(runs: Path) -> int:
    from gluon_tricks.paths import recipes_root
    from gluon_tricks.results import copy_record
    from gluon_tricks.tables import collect, load_table

    dirs = set()
    for name in ("proxy/coarse", "proxy/fine", "proxy/teachers"):
        for row in collect(load_table(recipes_root(), name), runs_root=runs):
            dirs.update(Path(d) for d in row["run_dirs"])
    for d in sorted(dirs):
        copy_record(d, ROOT / "results")
    return len(dirs)


def coarse_beside_fine(runs: Path | None = None) -> str:
    """Markdown: each row's top-1 and top-5 on coarse labels beside fine labels (mean ± std, seeds)."""
    from gluon_tricks.paths import recipes_root
    from gluon_tricks.plots import twin_rows
    from gluon_tricks.tables import collect, load_table

    table = load_table(recipes_root(), "proxy")
    rows = collect(table, runs_root=runs)

    def cell(r, metric):
        if r[metric] is None:
            return "not run"
        text = f"{r[metric]:.2f}" if r["runs"] < 2 else f"{r[metric]:.2f} ± {r[metric + '_std']:.2f}"
        return f"{text} ({r['runs']})"

    lines = ["| row | coarse top-1 | fine top-1 | coarse top-5 | fine top-5 |", "|---|---|---|---|---|"]
    for label, c, f in twin_rows(table):
        lines.append(f"| {label} | {cell(rows[c], 'top1')} | {cell(rows[f], 'top1')} | "
                     f"{cell(rows[c], 'top5')} | {cell(rows[f], 'top5')} |")
    return "\n".join(lines) + "\n\n(n) = seeds with a result; mean ± std over them.\n"


def report(timing: dict | None, runs: Path) -> None:
    """Copy the finished runs into results/ and write docs/proxy/: timing, tables, pictures."""
    os.environ["GLUON_TRICKS_RESULTS"] = ""  # copy from the runs root only
    print(f"{copy_results(runs)} runs copied into results/")
    del os.environ["GLUON_TRICKS_RESULTS"]
    docs = ROOT / "docs" / "proxy"
    docs.mkdir(parents=True, exist_ok=True)
    if timing:
        (docs / "suite.json").write_text(json.dumps(timing, indent=2) + "\n")
    gluon_tricks("table", "proxy")
    gluon_tricks("table", "proxy/teachers")
    # 1,117 images at batch 64: 18 steps per epoch
    gluon_tricks("plot", "proxy", "--out", str(docs), "--iters-per-epoch", "18")
    for unused in ("ours_vs_paper.png", "mixing_examples.png"):  # no paper numbers at proxy scale
        (docs / unused).unlink(missing_ok=True)
    (docs / "coarse_beside_fine.md").write_text(coarse_beside_fine())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs-scale", type=float, default=1.0)
    p.add_argument("--runs", default=os.environ.get("GLUON_TRICKS_RUNS", "runs"))
    p.add_argument("--half", choices=sorted(TEACHERS), help=argparse.SUPPRESS)
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: copy what has finished into results/ and redraw docs/proxy/")
    args = p.parse_args()
    runs = Path(args.runs)
    if not runs.is_absolute():
        runs = ROOT / runs
    if args.report_only:
        report(None, runs)
        return 0
    # Train into the runs root even where committed results exist: they are what this replaces.
    os.environ["GLUON_TRICKS_RESULTS"] = ""
    if args.half:
        train_half(args.half, args.seeds, args.epochs_scale, runs)
        return 0

    runs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MXNET_ENGINE_TYPE=os.environ.get("MXNET_ENGINE_TYPE", "NaiveEngine"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start, load_start = time.time(), os.getloadavg()
    halves = []
    for labels in sorted(TEACHERS):
        log = open(runs / f"proxy-{labels}.log", "a")
        cmd = [sys.executable, __file__, "--half", labels, "--seeds", str(args.seeds),
               "--epochs-scale", str(args.epochs_scale), "--runs", str(runs)]
        halves.append((labels, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)))
    failed = [labels for labels, proc in halves if proc.wait() != 0]
    wall = time.time() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing = {"wall_seconds": round(wall), "cpu_seconds": round(usage.ru_utime + usage.ru_stime),
              "processes": 2, "threads_each": 1, "cpus": os.cpu_count(),
              "load_average_1min_start": round(load_start[0], 1), "load_average_1min_end": round(os.getloadavg()[0], 1)}
    print(f"proxy suite: {wall / 60:.1f} min wall, {timing['cpu_seconds'] / 60:.1f} CPU-min", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}; see {runs}/proxy-<labels>.log", file=sys.stderr)
        return 1
    if args.epochs_scale != 1:
        return 0
    report(timing, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
