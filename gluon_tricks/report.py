"""A table's collected rows (tables.collect) as text: markdown, CSV or LaTeX.

Every cell and note is computed once into a `Sheet`; each format in FORMATTERS only lays it
out. The notes under a table say what its numbers are: seeds, partial seeds "(k/n)", where
they ran, a scaled epoch count, the Welch and paired differences of a rank table, shared trainings and
the teachers' accuracy.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from gluon_tricks.tables import Table, collect, reference_rows


def _fmt(mean, std, runs, seeds: int = 1, listed: str = "") -> str:
    """A cell: mean ± std, and "(runs/seeds)" when some seeds have no result, so a 2-seed mean is
    never read as the 3-seed one the notes announce (red team 2, probes 5.1, 5.2)."""
    if listed:
        return "listed"
    if mean is None:
        return "not run"
    text = f"{mean:.2f}" if runs < 2 else f"{mean:.2f} ± {std:.2f}"
    return text + (f" ({runs}/{seeds})" if runs < seeds else "")


def _paper(r: dict, metric: str) -> str:
    v = r.get(f"paper_{metric}")
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    text = f"{v:.2f}"
    if r.get(f"paper_{metric}_std") is not None:
        text += f" ± {r[f'paper_{metric}_std']:.2f}"
    if r.get(f"paper_{metric}_alt") is not None:
        text += f" ({r[f'paper_{metric}_alt']:.2f})"
    return text


def _diff(ours, paper) -> str:
    return "" if ours is None or not isinstance(paper, float) else f"{ours - paper:+.2f}"


def bn_group_text(r: dict) -> str:
    """"BN group 32, paper 256" for a row whose runs normalize over other groups than its paper."""
    if not r.get("bn_group"):
        return ""
    ours, paper = r["bn_group"]
    return f"BN group {ours}, paper {paper:g}"


def row_differences(table: Table, rows: list[dict]) -> list[dict | None]:
    """Per row of `collect`: None (no reference row), else {"reference": its label, "difference":
    the Welch `Difference` of this row's seeds' top-1 from the reference's, or None when either
    has fewer than 2 results, "paired": the paired one over the seeds both rows ran}."""
    from gluon_tricks.stats import paired_difference, welch_difference

    out = []
    for r, ref in zip(rows, reference_rows(table)):
        if ref is None or r["listed"] or rows[ref]["listed"]:
            out.append(None)
            continue
        out.append({"reference": rows[ref]["label"],
                    "difference": welch_difference(rows[ref]["top1_values"], r["top1_values"]),
                    "paired": paired_difference(rows[ref]["top1_by_seed"], r["top1_by_seed"])})
    return out


def _difference_cell(d: dict | None, kind: str = "difference") -> str:
    if d is None:
        return ""
    x = d[kind]
    if x is None:
        return "n < 2"
    return f"{x.diff:+.2f} [{x.low:+.2f}, {x.high:+.2f}]" + (" *" if x.excludes_zero else "")


DIFFERENCES_NOTE = ("Δ top-1 [95% CI]: the row's mean top-1 minus that of the row under 'from', with a 95% "
                    "interval from Welch's t over the seeds (unequal variances, Welch-Satterthwaite degrees of "
                    "freedom); * marks an interval that excludes 0, a step larger than its seed noise; "
                    "n < 2: fewer than 2 seeds with results on a side, no interval; paired: the mean of the "
                    "per-seed differences (the seeds both rows ran; a seed fixes the initial weights, image "
                    "order and augmentation of every row) with a 95% interval from Student's paired t")


@dataclass
class Sheet:
    """A table's cells and notes, computed once; each format in FORMATTERS only lays them out."""
    title: str
    head: list[str]  # the printed columns (md, latex)
    body: list[list[str]]
    data_head: list[str]  # csv: the numbers unrounded
    data: list[list]
    notes: list[str]  # under the table
    row_notes: list[str]  # one per row that has a note, listed after the notes


def sheet(table: Table, rows: list[dict], seeds: int, epochs_scale: float) -> Sheet:
    """`rows` (from `collect`) as cells and notes."""
    differences = row_differences(table, rows) if table.differences else []
    head, body = _printed_cells(table, rows, seeds, differences)
    data_head, data = _data_cells(rows, differences)
    return Sheet(table.title, head, body, data_head, data, table_notes(table, rows, seeds, epochs_scale, differences),
                 row_notes(rows))


def has_paper_numbers(rows: list[dict]) -> bool:
    """Whether any row of `collect` has a number the paper printed."""
    return any(r.get("paper_top1") is not None or r.get("paper_top5") is not None for r in rows)


def _printed_cells(table: Table, rows: list[dict], seeds: int, differences: list) -> tuple[list, list]:
    head = ["row", "top-1", "paper top-1", "Δ top-1", "top-5", "paper top-5", "Δ top-5", "s/epoch"]
    body = []
    for r in rows:
        group = bn_group_text(r)
        body.append([
            r["label"] + (f" ({group})" if group else ""),
            "" if table.out_of_scope else _fmt(r["top1"], r["top1_std"], r["runs"], seeds, r["listed"]),
            _paper(r, "top1"), _diff(r["top1"], r.get("paper_top1")),
            "" if table.out_of_scope else _fmt(r["top5"], r["top5_std"], r["runs"], seeds, r["listed"]),
            _paper(r, "top5"), _diff(r["top5"], r.get("paper_top5")),
            "" if r["seconds_per_epoch"] is None else f"{r['seconds_per_epoch']:.1f}",
        ])
    if differences:  # the seed count and the step from the reference row beside each mean
        head[2:2] = ["n", "Δ top-1 [95% CI]", "paired Δ [95% CI]", "from"]
        for b, r, d in zip(body, rows, differences):
            b[2:2] = [str(r["runs"]), _difference_cell(d), _difference_cell(d, "paired"), d["reference"] if d else ""]
    if not has_paper_numbers(rows):  # the demo, the rank table: no empty paper columns
        drop = {"paper top-1", "Δ top-1", "paper top-5", "Δ top-5"}
        keep = [i for i, h in enumerate(head) if h not in drop]
        head, body = [head[i] for i in keep], [[b[i] for i in keep] for b in body]
    return head, body


def _data_cells(rows: list[dict], differences: list) -> tuple[list, list]:
    head = ["row", "top1", "top1_std", "paper_top1", "top5", "top5_std", "paper_top5",
            "seconds_per_epoch", "runs", "epochs_scale", "note", "provenance"]
    head += ["reference", "diff_top1", "diff_low", "diff_high", "welch_df",
             "paired_diff", "paired_low", "paired_high", "paired_df"] if differences else []
    data = []
    for i, r in enumerate(rows):
        note = "; ".join(x for x in (f"listed: {r['listed']}" if r["listed"] else "", bn_group_text(r), r["note"])
                         if x)
        extra = []
        if differences:
            d = differences[i]
            extra = [d["reference"] if d else ""]
            for x in (d["difference"] if d else None, d["paired"] if d else None):
                extra += [x.diff, x.low, x.high, x.df] if x else [None] * 4
        data.append([r["label"], r["top1"], r["top1_std"], r.get("paper_top1"), r["top5"], r["top5_std"],
                     r.get("paper_top5"), r["seconds_per_epoch"], r["runs"], r["epochs_scale"], note,
                     r["provenance"]] + extra)
    return head, data


def table_notes(table: Table, rows: list[dict], seeds: int, epochs_scale: float, differences: list) -> list[str]:
    """The lines under the table: what its numbers are, where they ran, what is missing."""
    hw = next((r["hardware"] for r in rows if r["hardware"]), None)
    notes = []
    if table.out_of_scope:
        notes.append(f"out of scope: {table.out_of_scope}; the paper's numbers only")
    if epochs_scale != 1.0:
        notes.append(f"epochs scaled by {epochs_scale:g}: not comparable with the paper's full-length runs")
    if hw:
        notes.append(f"ran on {', '.join(map(str, hw.get('ctx', [])))} ({hw.get('machine')}, {hw.get('cpus')} CPUs)")
    if seeds > 1:
        notes.append(f"ours: mean ± std over {seeds} seeds; (k/{seeds}): only k seeds have results")
    notes += [f"{r['label']}: {r['runs']} of {seeds} seeds have results; missing {'; '.join(r['missing'])}"
              for r in rows if r["runs"] and r["missing"]]
    notes += [f"{r['label']}: trained with {'; '.join(r['versions'])}" for r in rows if r.get("versions")]
    if any(r.get("paper_top1_alt") is not None for r in rows):
        notes.append("paper: CVPR mean ± std over 4 runs (arXiv v2 single run in parentheses)")
    if differences:
        notes.append(DIFFERENCES_NOTE)
    if table.note:
        notes.append(table.note)
    return notes + shared_result_notes(rows) + teacher_notes(rows)


def _markdown(s: Sheet) -> str:
    widths = [max(len(h), *(len(b[i]) for b in s.body)) for i, h in enumerate(s.head)]
    lines = [f"### {s.title}", "",
             "| " + " | ".join(h.ljust(w) for h, w in zip(s.head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |" for b in s.body]
    if s.notes:
        lines += [""] + [f"- {n}" for n in s.notes]
    if s.row_notes:
        lines += ["", "Rows: notes and where their settings come from", ""]
        lines += [f"- {n}" for n in s.row_notes]
    return "\n".join(lines)


def _csv(s: Sheet) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(s.data_head)
    w.writerows(s.data)
    return buf.getvalue().rstrip("\n")


def _latex(s: Sheet) -> str:
    def esc(text):
        return str(text).replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("%", r"\%").replace("_", r"\_")

    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(s.head) - 1) + "}",
             r"\toprule", " & ".join(esc(h) for h in s.head) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in s.body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [r"\par\smallskip{\footnotesize " + esc(n) + "}" for n in s.notes + s.row_notes]
    lines += [r"\caption{" + esc(s.title) + "}", r"\end{table}"]
    return "\n".join(lines)


FORMATTERS = {"md": _markdown, "csv": _csv, "latex": _latex}


def render(table: Table, fmt: str = "md", seeds: int | None = None, epochs_scale: float = 1.0, runs_root=None,
           overrides=(), parallel: int | None = None, rows: list[dict] | None = None) -> str:
    """The table in `fmt` (a key of FORMATTERS); `rows`: `collect`'s, when the caller has them already."""
    seeds = seeds or table.seeds
    if rows is None:
        rows = collect(table, seeds, epochs_scale, runs_root, overrides, parallel)
    return FORMATTERS[fmt](sheet(table, rows, seeds, epochs_scale))


def write_markdown(table: Table, rows: list[dict], out_dir: Path, seeds: int | None = None,
                   epochs_scale: float = 1.0) -> Path:
    """table.md beside a table's pictures."""
    path = Path(out_dir) / "table.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(table, "md", seeds, epochs_scale, rows=rows) + "\n")
    return path


def row_notes(rows: list[dict]) -> list[str]:
    """One line per row that has a note; where every row has the same provenance (a table whose
    settings were all chosen for one reason) it is said once, first, not on every row."""
    shared = {r["provenance"] for r in rows}
    if len(rows) > 1 and len(shared) == 1 and "" not in shared:
        return [f"every row: settings: {shared.pop()}"] + [n for r in rows if (n := row_note({**r, "provenance": ""}))]
    return [n for n in map(row_note, rows) if n]


def row_note(r: dict) -> str:
    """One line per row: its label, why it is not run, its note, and its provenance."""
    parts = [f"listed, not run: {r['listed']}" if r["listed"] else "", r["note"],
             f"settings: {r['provenance']}" if r["provenance"] else ""]
    parts = [p for p in parts if p]
    return f"{r['label']}: " + "; ".join(parts) if parts else ""


def shared_result_notes(rows: list[dict]) -> list[str]:
    """Rows whose recipes resolve to one training share one result; the paper printed a number
    for each, so together they give two runs of one configuration: its run-to-run spread."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["hashes"]:
            groups.setdefault(tuple(r["hashes"]), []).append(r)
    notes = []
    for same in groups.values():
        if len(same) < 2:
            continue
        printed = [" / ".join(x for x in (_paper(r, "top1"), _paper(r, "top5")) if x) for r in same]
        text = " and ".join(f'"{r["label"]}"' for r in same) + " are one training (one result)"
        if sum(1 for p in printed if p) >= 2:
            text += "; the paper printed " + " and ".join(p for p in printed if p) + \
                    " for it: two runs of one configuration, i.e. its run-to-run spread"
        notes.append(text)
    return notes


def teacher_notes(rows: list[dict]) -> list[str]:
    """Under a table whose rows distill: each teacher's accuracy on the test set."""
    notes, seen = [], set()
    for r in rows:
        if not r["teacher"] or not r["runs"] or r["teacher"] in seen:
            continue
        seen.add(r["teacher"])
        if r["teacher_top1"] is None:
            notes.append(f"teacher {r['teacher']}: accuracy not recorded (its students' runs predate the record)")
        else:
            notes.append(f"teacher {r['teacher']}: top-1 {r['teacher_top1']:.2f}, top-5 {r['teacher_top5']:.2f} "
                         f"on the {r['test_images']} test images (measured by {r['teacher_measured_by']})")
    return notes
