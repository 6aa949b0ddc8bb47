"""Tables: a named list of recipes plus the numbers a paper printed for them.

A table lives in `recipes/<name>/table.toml`:

    title = "..."
    [[rows]]
    label = "+ cosine decay"
    recipe = "cosine.toml"          # relative to the table file
    paper_top1 = 75.99              # optional: what the paper printed
    paper_top5 = 95.55

Results are looked up by each row's content hash (per seed and epoch scale), so
`--run` trains only what is missing and an interrupted table resumes where it
stopped; a finished row is never trained again.
"""
from __future__ import annotations

import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gluon_tricks.errors import UserError
from gluon_tricks.recipe import content_hash, load_recipe, scale_epochs


@dataclass
class Row:
    label: str
    recipe_path: Path
    paper: dict = field(default_factory=dict)  # {"top1": 75.99, "top5": 95.55} where printed
    note: str = ""


@dataclass
class Table:
    name: str
    title: str
    rows: list[Row]
    note: str = ""
    path: Path | None = None


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
    rows = []
    for i, r in enumerate(raw.get("rows", [])):
        if "recipe" not in r or "label" not in r:
            raise UserError(f"{path}: row {i + 1} needs `label` and `recipe`")
        paper = {k[len("paper_"):]: v for k, v in r.items() if k.startswith("paper_")}
        rows.append(Row(r["label"], path.parent / r["recipe"], paper, r.get("note", "")))
    return Table(name, raw.get("title", name), rows, raw.get("note", ""), path)


def row_recipes(row: Row, seeds: int, epochs_scale: float, overrides=()) -> list:
    """The recipes a row stands for: one per seed, with epochs scaled."""
    base = load_recipe(row.recipe_path, list(overrides))
    out = []
    for i in range(seeds):
        r = load_recipe(row.recipe_path, list(overrides) + [f"seed={base.seed + i}"])
        out.append(scale_epochs(r, epochs_scale))
    return out


def run_table(table: Table, seeds: int = 1, epochs_scale: float = 1.0, runs_root=None, overrides=(),
              progress: bool = True) -> None:
    from gluon_tricks.engine import train
    from gluon_tricks.results import RunDir, find_result, run_dir_for

    for row in table.rows:
        for recipe in row_recipes(row, seeds, epochs_scale, overrides):
            h = content_hash(recipe)
            if find_result(h, runs_root) is not None:
                continue
            out = run_dir_for(recipe.name, h, runs_root)
            resume = RunDir(out).latest_checkpoint(quiet=True) is not None
            if progress:
                print(f"== {table.name}: {row.label} (seed {recipe.seed}) -> {out}", flush=True)
            train(recipe, out, resume=resume, progress=progress)


def _stat(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(table: Table, seeds: int = 1, epochs_scale: float = 1.0, runs_root=None, overrides=()) -> list[dict]:
    """One dict per row: ours (mean/std over the seeds that have results) and the paper's."""
    from gluon_tricks.results import find_result

    out = []
    for row in table.rows:
        results = []
        for recipe in row_recipes(row, seeds, epochs_scale, overrides):
            found = find_result(content_hash(recipe), runs_root)
            if found:
                results.append(found[1])
        top1, top1_sd = _stat([r["final_top1"] for r in results])
        top5, top5_sd = _stat([r["final_top5"] for r in results])
        out.append({
            "label": row.label, "runs": len(results), "seeds": seeds,
            "top1": top1, "top1_std": top1_sd, "top5": top5, "top5_std": top5_sd,
            "paper_top1": row.paper.get("top1"), "paper_top5": row.paper.get("top5"),
            "seconds_per_epoch": _stat([r["seconds_per_epoch"] for r in results])[0],
            "epochs": results[0]["epochs"] if results else None,
            "epochs_scale": epochs_scale,
            "hardware": results[0]["hardware"] if results else None,
            "note": row.note,
        })
    return out


def _fmt(mean, std, runs) -> str:
    if mean is None:
        return "not run"
    return f"{mean:.2f}" if runs < 2 else f"{mean:.2f} ± {std:.2f}"


def _diff(ours, paper) -> str:
    return "" if ours is None or paper is None else f"{ours - paper:+.2f}"


def render(table: Table, fmt: str = "md", seeds: int = 1, epochs_scale: float = 1.0, runs_root=None,
           overrides=()) -> str:
    rows = collect(table, seeds, epochs_scale, runs_root, overrides)
    head = ["row", "top-1", "paper top-1", "Δ top-1", "top-5", "paper top-5", "Δ top-5", "s/epoch"]
    body = []
    for r in rows:
        body.append([
            r["label"], _fmt(r["top1"], r["top1_std"], r["runs"]),
            "" if r["paper_top1"] is None else f"{r['paper_top1']:.2f}", _diff(r["top1"], r["paper_top1"]),
            _fmt(r["top5"], r["top5_std"], r["runs"]),
            "" if r["paper_top5"] is None else f"{r['paper_top5']:.2f}", _diff(r["top5"], r["paper_top5"]),
            "" if r["seconds_per_epoch"] is None else f"{r['seconds_per_epoch']:.1f}",
        ])
    hw = next((r["hardware"] for r in rows if r["hardware"]), None)
    notes = []
    if epochs_scale != 1.0:
        notes.append(f"epochs scaled by {epochs_scale:g}: not comparable with the paper's full-length runs")
    if hw:
        notes.append(f"ran on {', '.join(hw['ctx'])} ({hw['machine']}, {hw['cpus']} CPUs)")
    if seeds > 1:
        notes.append(f"mean ± std over {seeds} seeds")
    if table.note:
        notes.append(table.note)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["row", "top1", "top1_std", "paper_top1", "top5", "top5_std", "paper_top5",
                    "seconds_per_epoch", "runs", "epochs_scale"])
        for r in rows:
            w.writerow([r["label"], r["top1"], r["top1_std"], r["paper_top1"], r["top5"], r["top5_std"],
                        r["paper_top5"], r["seconds_per_epoch"], r["runs"], r["epochs_scale"]])
        return buf.getvalue().rstrip("\n")
    if fmt == "latex":
        def esc(s):
            return str(s).replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("%", r"\%").replace("_", r"\_")

        lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
                 r"\toprule", " & ".join(esc(h) for h in head) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in row) + r" \\" for row in body]
        lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + esc(table.title) + "}", r"\end{table}"]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = [f"### {table.title}", "",
             "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |" for b in body]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def list_tables(root: Path, runs_root=None) -> list[str]:
    out = []
    for name in table_names(root):
        t = load_table(root, name)
        done = sum(1 for r in collect(t, runs_root=runs_root) if r["runs"])
        out.append(f"{name:<24} {done}/{len(t.rows)} rows with results  {t.title}")
    return out
