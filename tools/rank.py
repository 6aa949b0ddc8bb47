"""The rank table (issue 25, docs/rank.md): its pilot, and the table itself.

    tools/rank.py pilot --epochs 40                  # baseline and mixup, 2 seeds, 2 at once
    tools/rank.py pilot --epochs 60 --rows baseline,mixup,distill
    tools/rank.py pilot --epochs 40 --report-only    # print what has finished, train nothing
    tools/rank.py table                              # train what is missing, 2 at once; copy the
                                                     # finished runs into results/; draw docs/rank/
    tools/rank.py table --report-only                # copy, draw and print only

`pilot`: is a length long enough for the tricks to differ from the baseline by more than their
seeds do? It trains the chosen rows of `rank/cifar10-mini` (default: the step-decay baseline and
interpolation mixup) at `--epochs` (every epoch count of the recipes scaled with it, as
`table --epochs-scale` does) with `--seeds` seeds, two processes at once with one OpenMP
thread each, then prints for each row its difference from the first row and whether it
exceeds twice the pooled seed standard deviation of the two rows (the issue's criterion).
The runs are the table's own: at the table's length they are its first seeds, never
trained twice.

`table`: `gluon-tricks table rank/cifar10-mini --run --parallel 2` with one thread per process,
then each finished run's run.json, recipe.toml, metrics.jsonl and result.json (no checkpoints)
into results/, where a fresh clone finds them, and the pictures and table.md into docs/rank/.

Run either alone on the machine: two processes are meant to fill two cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

# Before MXNet is imported here or in the row processes (they inherit the environment): one
# OpenMP thread per process, two processes at once (rank-pilot.md: ~22-31 s per epoch each; an
# exported OMP_NUM_THREADS=2, as the Makefile's, would put 4 threads on 2 cores), and
# NaiveEngine, ~5% faster for small CPU models (Makefile, demo).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("MXNET_ENGINE_TYPE", "NaiveEngine")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gluon_tricks.errors import UserError, shown, shown_lines  # noqa: E402
from gluon_tricks.paths import recipes_root  # noqa: E402
from gluon_tricks.report import render, write_markdown  # noqa: E402
from gluon_tricks.results import copy_record  # noqa: E402
from gluon_tricks.stats import pooled_std, welch_difference  # noqa: E402
from gluon_tricks.tables import collect, load_table, row_recipes, run_table  # noqa: E402

TABLE = "rank/cifar10-mini"


def pilot_table(rows: list[str]):
    """The rank table cut to the rows whose recipe files are named (stems, e.g. "baseline")."""
    table = load_table(recipes_root(), TABLE)
    by_stem = {r.recipe_path.stem: r for r in table.rows if r.recipe_path is not None}
    unknown = [r for r in rows if r not in by_stem]
    if unknown or len(rows) < 2:
        raise UserError(f"--rows {','.join(rows)}: give at least two of {', '.join(by_stem)} (the first is the "
                        "reference)")
    return dataclasses.replace(table, rows=[by_stem[r] for r in rows], differences=False)


def epochs_scale(table, epochs: int) -> float:
    """The factor that makes the table's rows `epochs` long (they share one length)."""
    lengths = {row_recipes(r, 1, 1.0)[0].epochs for r in table.rows}
    if len(lengths) != 1:
        raise UserError(f"the rows of {TABLE} have different lengths {sorted(lengths)}; the pilot needs one")
    return epochs / lengths.pop()


def report(rows: list[dict], epochs: int) -> list[str]:
    """One line per row after the first: its mean top-1 difference from the first row, the two
    rows' pooled seed std, and whether |difference| > 2 x pooled std."""
    ref = rows[0]
    lines = [f"pilot at {epochs} epochs; reference: {ref['label']}: "
             + (f"{ref['top1']:.2f} over {ref['runs']} seeds {ref['top1_values']}" if ref["runs"] else "no results")]
    for r in rows[1:]:
        a, b = ref["top1_values"], r["top1_values"]
        if len(a) < 2 or len(b) < 2:
            lines.append(f"{r['label']}: {len(b)} seeds with results (and {len(a)} for the reference): "
                         "needs 2 a side")
            continue
        diff, pooled = r["top1"] - ref["top1"], pooled_std(a, b)
        w = welch_difference(a, b)
        verdict = "EXCEEDS" if abs(diff) > 2 * pooled else "does not exceed"
        lines.append(f"{r['label']}: {r['top1']:.2f} {b}; difference {diff:+.2f}, pooled seed std {pooled:.2f}: "
                     f"{verdict} 2 x pooled std ({2 * pooled:.2f}); Welch 95% interval [{w.low:+.2f}, {w.high:+.2f}]")
    return lines


def pilot(args) -> list[str]:
    if args.epochs < 1 or args.seeds < 2:
        raise UserError("--epochs must be >= 1 and --seeds >= 2 (a seed std needs two)")
    table = pilot_table([r.strip() for r in args.rows.split(",") if r.strip()])
    scale = epochs_scale(table, args.epochs)
    if not args.report_only:
        run_table(table, seeds=args.seeds, epochs_scale=scale, runs_root=args.runs, parallel=args.parallel)
    return report(collect(table, seeds=args.seeds, epochs_scale=scale, runs_root=args.runs), args.epochs)


def copy_results(table, runs, results: Path) -> int:
    """Each finished run of the table found in the runs root (not among the committed results,
    which are what it would copy onto) into results/<run directory name>/."""
    committed = os.environ.get("GLUON_TRICKS_RESULTS")
    os.environ["GLUON_TRICKS_RESULTS"] = ""
    try:
        dirs = {Path(d) for r in collect(table, runs_root=runs) for d in r["run_dirs"]}
    finally:
        if committed is None:
            del os.environ["GLUON_TRICKS_RESULTS"]
        else:
            os.environ["GLUON_TRICKS_RESULTS"] = committed
    for d in sorted(dirs):
        copy_record(d, results)
    return len(dirs)


def table_command(args) -> list[str]:
    from gluon_tricks.plots import plot_table

    table = load_table(recipes_root(), TABLE)
    if not args.report_only:
        run_table(table, runs_root=args.runs, parallel=args.parallel)
    copied = copy_results(table, args.runs, Path(args.results))
    rows = collect(table, runs_root=args.runs)
    written = plot_table(table, Path(args.docs), rows) + [write_markdown(table, rows, Path(args.docs))]
    return [render(table, rows=rows), "",
            f"{copied} runs copied into {args.results}; {len(written)} files written into {args.docs}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("pilot", help="chosen rows at a length, 2 seeds: do they differ by more than their seeds?")
    pp.add_argument("--epochs", type=int, default=40, help="the length to pilot (default 40, the table's)")
    pp.add_argument("--seeds", type=int, default=2)
    pp.add_argument("--rows", default="baseline,mixup", help="recipe names in recipes/rank/cifar10-mini/, "
                    "the first is the reference (default: baseline,mixup)")
    tp = sub.add_parser("table", help="train what the table lacks; copy its runs into results/; draw docs/rank/")
    tp.add_argument("--results", default=str(ROOT / "results"), help="where finished runs are copied (default: "
                    "the project's results/, which a fresh clone reads)")
    tp.add_argument("--docs", default=str(ROOT / "docs" / "rank"), help="pictures and table.md (default: docs/rank/)")
    for sp in (pp, tp):
        sp.add_argument("--parallel", type=int, default=2, help="processes at once (default 2: one per core)")
        sp.add_argument("--runs", default=None, help="runs directory (default: ./runs or $GLUON_TRICKS_RUNS)")
        sp.add_argument("--report-only", action="store_true", help="train nothing; report the finished runs")
    args = p.parse_args(argv)
    try:
        lines = pilot(args) if args.command == "pilot" else table_command(args)
    except UserError as e:
        print(f"rank: error: {shown(e)}", file=sys.stderr)
        return 2
    for line in lines:
        print(shown_lines(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
