"""gluon-tricks: train the recipes of Bag of Tricks and its follow-up; print their tables.

Commands: train, eval, prepare, launch, check-records, export, recipes, tables, table,
plot, schedule, doctor (`gluon-tricks COMMAND --help` for each).

User errors end as one line on stderr and exit status 2; Ctrl-C saves a
checkpoint and exits 130. MXNet is imported only by the commands that train.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gluon_tricks.errors import shown, shown_lines
from gluon_tricks.paths import cores, find_recipe, recipes_root, runs_root


def _default_threads() -> None:
    # MXNet's OpenMP uses half the cores unless told otherwise; use all of them.
    os.environ.setdefault("OMP_NUM_THREADS", str(cores()))


def _overrides(args) -> list[str]:
    sets = list(args.set or [])
    for flag, key in (("ctx", "system.ctx"), ("epochs", "epochs"), ("dtype", "model.dtype"),
                      ("kvstore", "system.kvstore"), ("seed", "seed")):
        value = getattr(args, flag, None)
        if value is not None:
            sets.append(f"{key}={value}" if not isinstance(value, str) else f'{key}="{value}"')
    return sets


def cmd_train(args) -> int:
    from gluon_tricks.identity import run_warnings
    from gluon_tricks.recipe import explicit_keys, load_recipe
    from gluon_tricks.results import run_dir_for
    from gluon_tricks.tables import run_hash  # with the BatchNorm group these devices give

    path = find_recipe(args.recipe)
    recipe = load_recipe(path, _overrides(args))
    for warning in run_warnings(recipe, explicit_keys(path, _overrides(args))):
        print(f"gluon-tricks: warning: {shown(warning)}", file=sys.stderr)
    out = Path(args.out) if args.out else run_dir_for(recipe.name, run_hash(recipe), args.runs)
    from gluon_tricks.engine import train

    result = train(recipe, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
                   params_out=args.save_params)
    print(f"{shown(recipe.name)}: top-1 {result['final_top1']:.2f}  top-5 {result['final_top5']:.2f}  "
          f"(best {result['best_top1']:.2f} at epoch {result['best_epoch'] + 1})  -> {shown(out)}")
    return 0


def cmd_eval(args) -> int:
    import json

    from gluon_tricks.scoring import score

    result = score(args.source, model=args.model or "", data=args.data or "", overrides=list(args.set or []),
                   ctx=args.ctx or "auto")
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"{args.source}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  on {result['images']} "
              f"{result['dataset']} test images ({result['data']}, mean {result['mean']}, std {result['std']})")
    return 0


def cmd_recipes(args) -> int:
    if args.show:
        from gluon_tricks.identity import content_hash
        from gluon_tricks.recipe import load_recipe, to_toml

        recipe = load_recipe(find_recipe(args.show), _overrides(args))
        print(f"# {shown(recipe.name)}: content hash {content_hash(recipe)} (every `extends` and --set resolved)")
        print(to_toml(recipe), end="")
        return 0
    root = recipes_root()
    for p in sorted(root.rglob("*.toml")):
        if p.name != "table.toml":
            print(p.relative_to(root).with_suffix(""))
    return 0


def cmd_tables(args) -> int:
    from gluon_tricks.tables import list_tables

    for line in list_tables(recipes_root(), args.runs):
        print(shown(line))
    return 0


def cmd_table(args) -> int:
    from gluon_tricks.needs import missing_inputs
    from gluon_tricks.report import render
    from gluon_tricks.tables import load_table, run_table

    table = load_table(recipes_root(), args.name)
    if args.run:
        run_table(table, seeds=args.seeds, epochs_scale=args.epochs_scale, runs_root=args.runs,
                  overrides=_overrides(args), progress=not args.quiet, parallel=args.parallel,
                  missing_inputs=missing_inputs)
    print(shown_lines(render(table, fmt=args.format, seeds=args.seeds, epochs_scale=args.epochs_scale,
                             runs_root=args.runs, overrides=_overrides(args),
                             parallel=args.parallel)))
    return 0


def cmd_schedule(args) -> int:
    from gluon_tricks.plots import plot_schedules
    from gluon_tricks.recipe import load_recipe

    recipes = [load_recipe(find_recipe(r), list(args.set or [])) for r in args.recipes]
    path = plot_schedules(recipes, Path(args.out), iters_per_epoch=args.iters_per_epoch)
    print(path)
    return 0


def cmd_export(args) -> int:
    from gluon_tricks.errors import UserError, shown
    from gluon_tricks.atomic import atomic_copy
    from gluon_tricks.results import RunDir

    out = Path(args.out)
    if (out.exists() or out.is_symlink()) and not args.overwrite:  # probe 6.3: a teacher was replaced unasked
        raise UserError(f"{shown(out)} already exists; pass --overwrite to replace it, or choose another file")
    run = RunDir(Path(args.run_dir))
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        raise UserError(f"{shown(args.run_dir)} has no valid checkpoint to export; train it first")
    unfinished = run.unfinished(ckpt)
    if unfinished:  # probe 6.1: an interrupted run's weights went out as if final
        print(f"warning: {shown(args.run_dir)} is unfinished ({unfinished}): exporting its newest checkpoint; "
              "finish it with train --resume for the final weights", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_copy(ckpt.params, out)
    print(f"{shown(ckpt.params)} -> {shown(out)}")
    return 0


def cmd_plot(args) -> int:
    from gluon_tricks.plots import plot_table
    from gluon_tricks.report import write_markdown
    from gluon_tricks.tables import collect, load_table

    table = load_table(recipes_root(), args.name)
    runs = Path(args.runs) if args.runs else runs_root()
    out = Path(args.out) if args.out else runs / "tables" / args.name
    overrides = list(args.set or [])
    rows = collect(table, args.seeds, args.epochs_scale, runs, overrides)
    for path in plot_table(table, out, rows, iters_per_epoch=args.iters_per_epoch, epochs_scale=args.epochs_scale,
                           overrides=overrides):
        print(path)
    print(write_markdown(table, rows, out, args.seeds, args.epochs_scale))
    return 0


def cmd_prepare(args) -> int:
    from gluon_tricks.data.prepare import prepare
    from gluon_tricks.errors import shown

    info = prepare(Path(args.src), Path(args.out_prefix), resize=args.resize, quality=args.quality,
                   workers=args.workers, progress=not args.quiet)
    print(f"{info['records']} images in {info['classes']} classes -> {args.out_prefix}.rec/.idx/.lst")
    if info["skipped"]:
        print(f"skipped {len(info['skipped'])} unreadable image(s), listed in {args.out_prefix}.skipped.txt:",
              file=sys.stderr)
        for rel in info["skipped"][:20]:
            print(f"  {shown(rel)}", file=sys.stderr)
    if info["crashed"]:  # a decoder that kills its process: name the file, the OS does not
        print(f"the image decoder crashed (its process died) on {len(info['crashed'])} of them, e.g. "
              f"{shown(info['crashed'][0])}; they are skipped and listed too", file=sys.stderr)
    return 0


def check_train_command(command: list[str]) -> None:
    """Load a `train` command's recipe (and flags) once, so a bad one is one error before any
    process of a launch starts, not one error per worker."""
    if command[:1] != ["train"]:
        return
    from gluon_tricks.recipe import load_recipe

    args = build_parser().parse_args(command)
    load_recipe(find_recipe(args.recipe), _overrides(args))


def cmd_launch(args) -> int:
    from gluon_tricks.launch import run

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    check_train_command(command)
    return run(args.workers, args.servers, command, args.hostfile, args.port, args.timeout)


def cmd_check_records(args) -> int:
    from gluon_tricks.data.prepare import check_records

    info = check_records(Path(args.prefix), Path(args.repair) if args.repair else None)
    print(f"{info['records']} records, {len(info['bad'])} corrupt" +
          (f": {', '.join(map(str, info['bad'][:20]))}" if info["bad"] else ""))
    if args.repair:
        print(f"wrote the {info['records'] - len(info['bad'])} good records to {args.repair}.rec/.idx")
    return 1 if info["bad"] and not args.repair else 0


def cmd_doctor(args) -> int:
    from gluon_tricks.doctor import layout_lines, run

    if args.table:  # what each row of one table runs on here, not the whole machine check
        lines = layout_lines(args.table, _overrides(args))
        for line in lines:
            print(line)
        return 1 if any(line.status == "FAIL" for line in lines) else 0
    return run()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (the usage block is what --help is for)."""

    def error(self, message: str):
        from gluon_tricks.errors import shown

        self.exit(2, f"{self.prog}: error: {shown(message)}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gluon-tricks", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def runs_flag(sp):
        sp.add_argument("--runs", default=None, help="results directory (default: ./runs or $GLUON_TRICKS_RUNS)")

    def common(sp):
        runs_flag(sp)
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a recipe field, e.g. --set optim.lr=0.2 (repeatable)")
        sp.add_argument("--ctx", help="devices: auto (default: every GPU, else the CPU) | cpu | cpu:0,cpu:1 | gpu:0-7")
        sp.add_argument("--kvstore", help="device | local | nccl | dist_sync | dist_device_sync")
        sp.add_argument("--dtype", choices=["float32", "float16"])
        sp.add_argument("--quiet", action="store_true", help="no per-epoch lines or progress bar")

    t = sub.add_parser("train", help="train one recipe")
    t.add_argument("recipe", help="a recipe file or a name under recipes/, e.g. followup/table3/cosine")
    common(t)
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--out", help="run directory (default: runs/<name>-<content hash>)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace what the run directory holds")
    t.add_argument("--save-params", metavar="DIR", help="also write this worker's final parameters to "
                   "DIR/worker<rank>.params (every worker of a distributed job, to compare them)")
    t.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="top-1/top-5 of a run, a .params file (--model) or zoo weights on a test set")
    ev.add_argument("source", help="a run directory, a .params file (with --model), or a zoo name or name:tag")
    ev.add_argument("--model", help="the architecture of a .params file, a GluonCV zoo name (e.g. cifar_resnet20_v1)")
    ev.add_argument("--data", metavar="RECIPE", help="whose test set (default for a run: its own recipe), "
                    "e.g. demo/baseline")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a field of the data recipe, e.g. --set 'data.mean=[0.4914,0.4822,0.4465]'")
    ev.add_argument("--ctx", help="devices: auto (default) | cpu | gpu:0")
    ev.add_argument("--json", action="store_true", help="one JSON object instead of the sentence")
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser("prepare", help="image class folders -> MXNet RecordIO (.rec/.idx/.lst)")
    pr.add_argument("src", help="folder with one sub-folder per class (e.g. ImageNet's train/)")
    pr.add_argument("out_prefix", help="e.g. data/imagenet/train -> train.rec, train.idx, train.lst")
    pr.add_argument("--resize", type=int, default=0, help="resize the shorter side to this (0: keep)")
    pr.add_argument("--quality", type=int, default=95, help="JPEG quality")
    pr.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=cmd_prepare)

    la = sub.add_parser("launch", help="start an MXNet parameter-server job: scheduler, servers, workers")
    la.add_argument("-n", "--workers", type=int, required=True)
    la.add_argument("-s", "--servers", type=int, default=1)
    la.add_argument("-H", "--hostfile", help="one worker host per line (ssh); default: all on 127.0.0.1")
    la.add_argument("--port", type=int, default=0, help="scheduler port (default: a free one)")
    la.add_argument("--timeout", type=float, default=None, help="stop the job after this many seconds")
    la.add_argument("command", nargs=argparse.REMAINDER, help="-- train RECIPE [flags]")
    la.set_defaults(func=cmd_launch)

    ck = sub.add_parser("check-records", help="decode every record of a .rec; list (and with --repair skip) corrupt ones")
    ck.add_argument("prefix", help="e.g. data/imagenet/train for train.rec + train.idx")
    ck.add_argument("--repair", metavar="OUT_PREFIX", help="write the good records to a new OUT_PREFIX.rec/.idx (+ .lst, .classes.txt)")
    ck.set_defaults(func=cmd_check_records)

    ex = sub.add_parser("export", help="copy a run's newest parameters to a .params file (e.g. a teacher)")
    ex.add_argument("run_dir")
    ex.add_argument("out", help="the .params file to write (refused if it exists, unless --overwrite)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing file")
    ex.set_defaults(func=cmd_export)

    dr = sub.add_parser("doctor", help="check this machine: packages, MXNet build, CUDA libraries, GPUs, data, disk")
    dr.add_argument("--table", metavar="NAME", help="only: the devices and per-device batch each row of table "
                    "NAME gets on this machine, against its paper's")
    dr.add_argument("--ctx", help="with --table: the --ctx you will train with (default: auto)")
    dr.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --table: a --set you will train with")
    dr.set_defaults(func=cmd_doctor)

    r = sub.add_parser("recipes", help="list the shipped recipes (--show NAME: one, resolved, with its hash)")
    r.add_argument("--show", metavar="NAME", help="print this recipe resolved (extends, --set) and its content hash")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of the shown recipe")
    r.set_defaults(func=cmd_recipes)

    ts = sub.add_parser("tables", help="list the tables and how many rows have results")
    runs_flag(ts)
    ts.set_defaults(func=cmd_tables)

    tb = sub.add_parser("table", help="print a table (with --run: train its missing rows first)")
    tb.add_argument("name", help="e.g. demo, followup/table3, bot/table6")
    tb.add_argument("--run", action="store_true", help="train the rows that have no result yet")
    tb.add_argument("--seeds", type=positive_int, default=None, help="seeds per row (mean +- std); default: the table's")
    tb.add_argument("--epochs-scale", type=positive_float, default=1.0, help="shorten every row's epochs by this factor")
    tb.add_argument("--format", choices=["md", "csv", "latex"], default="md")
    tb.add_argument("--parallel", type=int, nargs="?", const=0, default=None, metavar="N",
                    help="with --run: N rows at once, each on its paper's device count of --ctx (one for a "
                         "CIFAR row) as its only visible GPUs (no N: as many rows as the devices hold)")
    common(tb)
    tb.set_defaults(func=cmd_table)

    pl = sub.add_parser("plot", help="a table's pictures (schedules, curves, ours vs paper, mixing examples) as PNG")
    pl.add_argument("name")
    pl.add_argument("--out", help="directory (default: <runs>/tables/<name>)")
    pl.add_argument("--iters-per-epoch", type=int, default=196)
    # the runs a table made with these flags are other recipes (probe 1.21): plot must be told them too
    pl.add_argument("--seeds", type=positive_int, default=None, help="seeds per row, as given to table")
    pl.add_argument("--epochs-scale", type=positive_float, default=1.0, help="as given to table")
    pl.add_argument("--set", action="append", metavar="KEY=VALUE", help="as given to table (repeatable)")
    runs_flag(pl)
    pl.set_defaults(func=cmd_plot)

    sc = sub.add_parser("schedule", help="plot the learning-rate schedule of recipes (PNG)")
    sc.add_argument("recipes", nargs="+")
    sc.add_argument("--out", default="schedule.png")
    sc.add_argument("--iters-per-epoch", type=int, default=196, help="steps per epoch (CIFAR at batch 256: 196)")
    sc.add_argument("--set", action="append", metavar="KEY=VALUE")
    sc.set_defaults(func=cmd_schedule)
    return p


def main(argv: list[str] | None = None) -> int:
    _default_threads()
    from gluon_tricks.errors import Interrupted, UserError, first_line, shown

    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, so a reader that left (`| head`) is met below, not at exit
        return status
    except BrokenPipeError:
        # `gluon-tricks table X | head -1`: the reader has what it wanted. Quiet, with the status
        # of a Unix tool ended by SIGPIPE; stdout goes to /dev/null so the exit flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except Interrupted as e:
        print(f"gluon-tricks: {shown(e)}", file=sys.stderr)
        return 130
    except UserError as e:  # shown(): a path with a newline or ESC must not split or reach the terminal
        print(f"gluon-tricks: error: {shown(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gluon-tricks: aborted", file=sys.stderr)
        return 130
    except Exception as e:
        broken = broken_install(e)  # e.g. an OSError from a CUDA library libmxnet.so cannot load
        if broken is not None:
            print(f"gluon-tricks: error: importing {broken} failed ({e.__class__.__name__}: {shown(first_line(e, 160))}); "
                  "the installed packages do not match setup.py's pins: run gluon-tricks doctor", file=sys.stderr)
            return 2
        if not isinstance(e, OSError):
            raise
        # last resort: a filesystem refusal nobody mapped (read-only, name too long...)
        where = f": {shown(e.filename)[:300]}" if e.filename else ""
        print(f"gluon-tricks: error: {e.strerror or e.__class__.__name__}{where}", file=sys.stderr)
        return 2


BROKEN_STACK = ("mxnet", "gluoncv")


def broken_install(e: BaseException) -> str | None:
    """'mxnet' or 'gluoncv' when `e` was raised while Python imported that package (numpy 1.26
    under MXNet 1.9.1: AttributeError 'numpy has no attribute bool'; gluoncv missing:
    ModuleNotFoundError; a shadowing mxnet/ that raises), else None: a bug elsewhere keeps
    its traceback (reliability-redteam-2 probes 3.3-3.5)."""
    if isinstance(e, ImportError) and (e.name or "").split(".")[0] in BROKEN_STACK:
        return e.name.split(".")[0]
    tb = e.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        package = str(frame.f_globals.get("__name__", "")).split(".")[0]
        if frame.f_code.co_name == "<module>" and package in BROKEN_STACK:  # a module's top level: its import
            return package
        tb = tb.tb_next
    return None
