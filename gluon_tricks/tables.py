"""Tables: a named list of recipes plus the numbers a paper printed for them.

A table lives in `recipes/<name>/table.toml`:

    title = "..."
    set = ["data.fine_labels=true"]   # optional: overrides for every row (e.g. a fine-label twin)
    seeds = 3                          # optional: default seeds per row
    differences = true                 # optional: each row's top-1 difference from the previous
                                       # row (or its `compare_to`) with a 95% Welch interval
    out_of_scope = "..."               # optional: listed for its numbers, never run
    provenance = "..."                 # optional: the default of every row's provenance

    [[rows]]
    label = "+ cosine decay"
    recipe = "cosine.toml"             # relative to the table file
    set = ["model.name=inceptionv3"]   # optional: overrides for this row
    paper = { csv = "followup_table3_refinements.csv", row = "+ cosine decay" }
    note = "..."                       # optional: printed under the table
    provenance = "code: <repo>@<commit> <file>"  # where the row's settings come from, one line:
                                       # the code at a commit, the paper's text, or "chosen: why"
    compare_to = "Baseline"            # optional, with `differences`: the label of the row this one's
                                       # difference is taken from (default: the row above)

A row with `listed = "why"` instead of `recipe` is another paper's number, shown but never run.

Paper numbers are never typed into a table: `paper` points at a row of a CSV in
gluon_tricks/paper_numbers/ (`row` matches the first column, or `match = {col = value}`
several), and `top1`/`top5` (default "top1"/"top5") name its columns; `top1_std`,
`top5_std` name spread columns and `top1_alt`/`top5_alt` a second printing shown beside.

Results are looked up by each row's content hash (per seed and epoch scale), so
`--run` trains only what is missing and an interrupted table resumes where it
stopped; a finished row is never trained again.
"""
from __future__ import annotations

import csv
import statistics
import sys
from gluon_tricks._compat import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gluon_tricks.errors import UserError, shown
from gluon_tricks.identity import content_hash, run_warnings, source_bn_group
from gluon_tricks.recipe import explicit_keys, load_recipe, scale_epochs
from gluon_tricks.runner import PendingRun, train_in_process, train_in_processes

PAPER_NUMBERS = Path(__file__).parent / "paper_numbers"


@dataclass
class Row:
    label: str
    recipe_path: Path | None
    paper: dict = field(default_factory=dict)  # top1, top5 (+ _std, _alt) where printed
    sets: list = field(default_factory=list)
    note: str = ""
    provenance: str = ""  # where the settings come from: code at a commit, the paper's text, or chosen
    listed: str = ""  # not run: why (e.g. another paper's model); the row shows its numbers only
    compare_to: str = ""  # with Table.differences: the label of the row the difference is from ("": the row above)


@dataclass
class Table:
    name: str
    title: str
    rows: list[Row]
    note: str = ""
    path: Path | None = None
    seeds: int = 1
    out_of_scope: str = ""
    differences: bool = False  # show each row's difference from its reference row (`reference_rows`)


def read_csv(name: str) -> list[dict]:
    path = PAPER_NUMBERS / name
    if not path.is_file():
        raise UserError(f"paper numbers file {name} not found in {PAPER_NUMBERS}")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(text):
    """A CSV cell: a float, a printed range such as "72.63-75.12" kept as text, or None."""
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text.strip()


def paper_numbers(ref: dict, where: str) -> dict:
    rows = read_csv(ref["csv"])
    match = dict(ref.get("match", {}))
    if "row" in ref:
        match[next(iter(rows[0]))] = ref["row"]
    found = [r for r in rows if all(r.get(k) == str(v) for k, v in match.items())]
    if len(found) != 1:
        raise UserError(f"{where}: paper = {ref} matches {len(found)} rows of {ref['csv']} (needs exactly one)")
    row = found[0]
    out = {}
    for metric in ("top1", "top5"):
        for suffix in ("", "_std", "_alt"):
            col = ref.get(metric + suffix, metric if suffix == "" else None)
            if not col:  # absent, or "" for a table that prints no such column
                continue
            if col not in row:
                raise UserError(f"{where}: column {col!r} not in {ref['csv']}")
            value = _number(row[col])
            if value is not None:  # an empty cell: the paper printed nothing there
                out[metric + suffix] = value
    return out


def table_names(root: Path) -> list[str]:
    return sorted(str(p.parent.relative_to(root)) for p in root.rglob("table.toml"))


def load_table(root: Path, name: str) -> Table:
    path = root / name / "table.toml"
    if not path.is_file():
        raise UserError(f"no table {name!r}; known tables: {', '.join(table_names(root)) or 'none'}")
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not valid TOML ({e})") from None
    _check_table_types(raw, path)
    common = list(raw.get("set", []))
    out_of_scope = raw.get("out_of_scope", "")
    rows = []
    for i, r in enumerate(raw.get("rows", [])):
        where = f"{path} row {i + 1}"
        if "label" not in r or ("recipe" not in r and not out_of_scope and not r.get("listed")):
            raise UserError(f"{where}: needs `label` and `recipe` (or `listed = \"why it is not run\"`)")
        if "recipe" in r and r.get("listed"):
            raise UserError(f"{where}: a row is either run (`recipe`) or `listed`, not both")
        paper = paper_numbers(r["paper"], where) if "paper" in r else {}
        recipe = path.parent / r["recipe"] if "recipe" in r else None
        rows.append(Row(r["label"], recipe, paper, common + list(r.get("set", [])), r.get("note", ""),
                        r.get("provenance", "" if r.get("listed") else raw.get("provenance", "")), r.get("listed", ""),
                        r.get("compare_to", "")))
    table = Table(name, raw.get("title", name), rows, raw.get("note", ""), path, int(raw.get("seeds", 1)),
                  out_of_scope, raw.get("differences", False))
    reference_rows(table)  # a compare_to naming no row is an error now, not when the table prints
    return table


def reference_rows(table: Table) -> list[int | None]:
    """For each row, the index of the row its difference is taken from: its `compare_to` (a label
    of another row), else the row above (None for the first row, or when the table shows no
    differences)."""
    if not table.differences:
        return [None] * len(table.rows)
    labels = [r.label for r in table.rows]
    out = []
    for i, row in enumerate(table.rows):
        if not row.compare_to:
            out.append(i - 1 if i else None)
            continue
        if labels.count(row.compare_to) != 1 or row.compare_to == row.label:
            raise UserError(f"{shown(table.path)}: row '{shown(row.label)}' has compare_to = "
                            f"'{shown(row.compare_to)}', which is not the label of exactly one other row")
        out.append(labels.index(row.compare_to))
    return out


_TEXT_KEYS = ("title", "note", "out_of_scope", "provenance")
_ROW_TEXT_KEYS = ("label", "recipe", "note", "provenance", "listed", "compare_to")


def _check_table_types(raw: dict, path: Path) -> None:
    """Every key a table file may hold has the type the code reads it as; else one line naming
    the file and the key (red team 2, probes 1.15-1.18: `rows = 5`, `seeds = "x"`, `seeds = 0`,
    `paper = "x.csv"` gave tracebacks, or a table that trains nothing)."""
    def fail(key, want, value):
        raise UserError(f"{shown(path)}: {key} must be {want}, got {shown(repr(value))[:80]}")

    def strings(key, value):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail(key, 'a list of "key=value" strings', value)

    for key in _TEXT_KEYS:
        if key in raw and not isinstance(raw[key], str):
            fail(key, "a string", raw[key])
    seeds = raw.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        fail("seeds", "a whole number >= 1", seeds)
    if not isinstance(raw.get("differences", False), bool):
        fail("differences", "true or false", raw["differences"])
    if "set" in raw:
        strings("set", raw["set"])
    rows = raw.get("rows", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        fail("rows", "a list of [[rows]] tables", rows)
    for i, r in enumerate(rows):
        for key in _ROW_TEXT_KEYS:
            if key in r and not isinstance(r[key], str):
                fail(f"row {i + 1} {key}", "a string", r[key])
        if "set" in r:
            strings(f"row {i + 1} set", r["set"])
        paper = r.get("paper", {})
        if not isinstance(paper, dict) or "paper" in r and not isinstance(paper.get("csv"), str) \
                or not isinstance(paper.get("match", {}), dict):
            fail(f"row {i + 1} paper", '{ csv = "<file in gluon_tricks/paper_numbers>", row = "<first column>" }',
                 paper)


def row_recipes(row: Row, seeds: int, epochs_scale: float, overrides=()) -> list:
    """The recipes a row stands for: one per seed, with epochs scaled."""
    if row.recipe_path is None:
        return []
    sets = row.sets + list(overrides)
    base = load_recipe(row.recipe_path, sets)
    return [scale_epochs(load_recipe(row.recipe_path, sets + [f"seed={base.seed + i}"]), epochs_scale)
            for i in range(seeds)]


def run_hash(recipe, devices: int | None = None) -> str:
    """The hash a run of `recipe` gets here: with the BatchNorm group of its layout on this
    machine (its --ctx, or `devices` for a --parallel row), so a faithful row finds the
    faithful result and a row on other devices its own (identity.content_hash)."""
    from gluon_tricks.devices import planned_layout

    return content_hash(recipe, planned_layout(recipe, devices).bn_group)


def parallel_slots(table: Table, parallel: int | None, epochs_scale: float = 1.0, overrides=()):
    """`--parallel`'s device groups (runner.row_slots), sized by the table's first row: None
    without --parallel (each row on its recipe's own devices, one row at a time)."""
    from gluon_tricks.runner import all_devices, row_slots

    if parallel is None:
        return None
    first = next((r for row in table.rows for r in row_recipes(row, 1, epochs_scale, overrides)), None)
    if first is None:
        return None
    return row_slots(all_devices(first.system.ctx), first.source.devices, parallel)


def pending_runs(table: Table, seeds: int | None = None, epochs_scale: float = 1.0, runs_root=None,
                 overrides=(), devices: int | None = None) -> list[PendingRun]:
    """The runs of the table's rows (and seeds) that have no result yet, each recipe once;
    `devices`: each run's device count when --parallel decides it."""
    from gluon_tricks.results import RunDir, find_result, run_dir_for

    pending: list[PendingRun] = []
    for row in table.rows:
        for recipe in row_recipes(row, seeds or table.seeds, epochs_scale, overrides):
            h = run_hash(recipe, devices)
            if find_result(h, runs_root) is not None or any(p.recipe_hash == h for p in pending):
                continue  # finished (perhaps as another row or table: same recipe, same result)
            out = run_dir_for(recipe.name, h, runs_root)
            pending.append(PendingRun(row.label, recipe, h, out, RunDir(out).latest_checkpoint(quiet=True) is not None))
    return pending


def run_table(table: Table, seeds: int | None = None, epochs_scale: float = 1.0, runs_root=None, overrides=(),
              progress: bool = True, parallel: int | None = None, in_process: bool = False,
              missing_inputs=None) -> None:
    """Train every row (and seed) that has no result yet.

    Each row trains in its own process, so a finished row's memory (16 GB V100s hold one
    ImageNet row, not two) is back before the next starts. `parallel=None` trains the rows
    one after another, each on the recipe's (or --ctx's) devices; `--ctx auto` gives a row
    at most its source.devices GPUs, so a follow-up row trains on one GPU of eight, as its
    paper did. `parallel=N` trains N rows at once (0: as many as the devices hold), each on
    source.devices of them (one for a CIFAR row) with those as its only visible GPUs: eight
    follow-up rows on a p3.16xlarge at once. Results are found by content hash, which
    includes the BatchNorm group only where it differs from the paper's, so both ways give
    the same rows. `in_process` trains here instead (for a debugger); finished rows are then
    released by garbage collection only.

    `missing_inputs(recipes)` lists what the pending runs need and lack (needs.missing_inputs):
    the table is refused before anything trains, not when the row that needs it starts, hours
    later (probe 1.14)."""
    if table.out_of_scope:
        raise UserError(f"table {table.name} is out of scope ({table.out_of_scope}): it lists the paper's numbers only")
    slots = None if in_process else parallel_slots(table, parallel, epochs_scale, overrides)
    pending = pending_runs(table, seeds, epochs_scale, runs_root, overrides,
                           devices=len(slots[0].devices) if slots else None)
    if not pending:
        return
    missing = missing_inputs([p.recipe for p in pending]) if missing_inputs else []
    if missing:
        raise UserError(f"table {table.name} cannot run: missing {'; '.join(shown(m) for m in missing)} "
                        "(nothing was trained)")
    for warning in pending_warnings(table, pending, overrides):
        print(f"gluon-tricks: warning: {shown(warning)}", file=sys.stderr)
    if in_process:
        train_in_process(table.name, pending, progress)
    else:
        train_in_processes(table.name, pending, progress, slots)


def pending_warnings(table: Table, pending: list[PendingRun], overrides=()) -> list[str]:
    """`train`'s warnings (identity.run_warnings) for the rows about to train, once per row
    (its seeds differ only in the seed), each naming its row: a table shortened with
    --epochs-scale or changed with --set says what its rows will not do, as `train` does."""
    first_recipe = {}
    for p in pending:
        first_recipe.setdefault(p.label, p.recipe)
    out = []
    for row in table.rows:
        if row.label in first_recipe:
            explicit = explicit_keys(row.recipe_path, row.sets + list(overrides))
            out += [f"{row.label}: {w}" for w in run_warnings(first_recipe[row.label], explicit)]
    return out


def _stat(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _bn_group(recipe, devices: int | None) -> int | None:
    """The BatchNorm group a run of `recipe` has here; None when its --ctx names devices this
    machine lacks (a table printed on a laptop with --ctx gpu:0-7): then the paper's."""
    from gluon_tricks.devices import planned_layout

    try:
        return planned_layout(recipe, devices).bn_group
    except UserError:
        return None


def collect(table: Table, seeds: int | None = None, epochs_scale: float = 1.0, runs_root=None,
            overrides=(), parallel: int | None = None) -> list[dict]:
    """One dict per row: ours (mean/std over the seeds that have results) and the paper's;
    ours are the runs with the BatchNorm group this machine (and --ctx, --parallel) gives."""
    from gluon_tricks.results import RunDir, lookup_result, version_differences

    seeds = seeds or table.seeds
    slots = parallel_slots(table, parallel, epochs_scale, overrides)
    devices = len(slots[0].devices) if slots else None
    out = []
    for row in table.rows:
        results, runs, hashes, missing, groups, distill, versions = [], [], [], [], [], None, []
        top1_by_seed = {}  # seed -> final top-1, for each seed with a result
        for recipe in row_recipes(row, seeds, epochs_scale, overrides):
            distill = recipe.distill
            groups.append((_bn_group(recipe, devices), source_bn_group(recipe)))
            hashes.append(content_hash(recipe, groups[-1][0]))
            path, result, problem = lookup_result(hashes[-1], runs_root)
            if result is not None:
                runs.append(path)
                results.append(result)
                top1_by_seed[recipe.seed] = result["final_top1"]
                versions += [f"seed {recipe.seed}: {d}" for d in version_differences(result)]
                continue
            if problem:  # a file that is there but cannot be used is named, never skipped silently
                print(f"warning: {problem}; row '{shown(row.label)}' shown without it", file=sys.stderr)
            missing.append(f"seed {recipe.seed}: " + (problem or ("unfinished, " + shown(path) if path else "not run")))
        top1, top1_sd = _stat(list(top1_by_seed.values()))
        top5, top5_sd = _stat([r["final_top5"] for r in results])
        out.append({
            "label": row.label, "runs": len(results), "seeds": seeds, "run_dirs": [str(p) for p in runs],
            "top1_values": list(top1_by_seed.values()),  # one per seed with a result
            "top1_by_seed": top1_by_seed,
            "top1": top1, "top1_std": top1_sd, "top5": top5, "top5_std": top5_sd,
            **{f"paper_{k}": v for k, v in row.paper.items()},
            "seconds_per_epoch": _stat([r["seconds_per_epoch"] for r in results])[0],
            "epochs": results[0]["epochs"] if results else None,
            "epochs_scale": epochs_scale,
            "hardware": results[0]["hardware"] if results else None,
            "note": row.note,
            "provenance": row.provenance,
            "listed": row.listed,
            "hashes": hashes,
            # (ours, the paper's) images per BatchNorm group, where they differ
            "bn_group": next(((ours, paper) for ours, paper in groups if ours is not None and ours != paper), None),
            "recipe": str(row.recipe_path) if row.recipe_path else "",
            "metrics": [RunDir(p).read_metrics(warn=True) for p in runs],
            "missing": missing,  # one line per seed without a usable result
            "versions": versions,  # what a seed was trained with that differs from what is installed
            **_teacher_scores(distill, results),
        })
    return out


def _teacher_scores(distill, results: list[dict]) -> dict:
    """A distilling row's teacher and its accuracy on the row's test set: as the students' runs
    measured it, else (runs from before that record) the result of the recipe that made it."""
    from gluon_tricks.paths import PROJECT
    from gluon_tricks.results import find_result

    out = {"teacher": distill.teacher if distill else "", "teacher_top1": None, "teacher_top5": None,
           "teacher_measured_by": "", "test_images": results[0].get("test_images") if results else None}
    if not out["teacher"] or not results:
        return out
    measured = [r for r in results if "teacher_top1" in r]
    if measured:
        out.update(teacher_top1=_stat([r["teacher_top1"] for r in measured])[0],
                   teacher_top5=_stat([r["teacher_top5"] for r in measured])[0], teacher_measured_by="its students' runs")
    elif distill.teacher_recipe and (PROJECT / distill.teacher_recipe).is_file():
        found = find_result(content_hash(load_recipe(PROJECT / distill.teacher_recipe)))
        if found:
            out.update(teacher_top1=found[1]["final_top1"], teacher_top5=found[1]["final_top5"],
                       teacher_measured_by=f"the run of {distill.teacher_recipe}", test_images=found[1].get("test_images"))
    return out


def list_tables(root: Path, runs_root=None) -> list[str]:
    """One line per table; a table that cannot be read is one line saying why (probe 1.15: one
    bad file broke the listing of every table)."""
    out = []
    for name in table_names(root):
        try:
            t = load_table(root, name)
            line = _listing(name, t, runs_root)
        except UserError as e:
            line = f"{name:<24} error: {shown(e)}"
        out.append(line)
    return out


def _listing(name: str, t: Table, runs_root) -> str:
    if t.out_of_scope:
        return f"{name:<24} out of scope       {t.title}"
    done = sum(1 for r in collect(t, runs_root=runs_root) if r["runs"])
    runnable = sum(1 for r in t.rows if r.recipe_path is not None)
    return f"{name:<24} {done}/{runnable} rows run  {t.title}"
