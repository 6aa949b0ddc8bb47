"""PNG pictures (matplotlib, headless): schedules, mixing examples, curves, bars."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# matplotlib's default cycle has 10 colours: past 10 lines they repeat. Colour and dash
# pattern together give 40 distinct styles.
_COLOURS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
_DASHES = ["-", "--", ":", "-."]


def _style(i: int) -> dict:
    return {"color": _COLOURS[i % len(_COLOURS)], "linestyle": _DASHES[(i // len(_COLOURS)) % len(_DASHES)]}


def plot_schedules(recipes, out: Path, iters_per_epoch: int = 196, labels=None) -> Path:
    """Every recipe's learning rate per iteration over its whole run: one panel per schedule
    kind; recipes with the same curve share one line (its legend names them all), so no
    curve hides another, and every line has its own colour and dash pattern."""
    from gluon_tricks.tricks.schedules import lr_curve

    labels = labels or [r.name for r in recipes]
    curves: dict[tuple, list[str]] = {}  # (kind, curve) -> labels, in first-seen order
    for r, label in zip(recipes, labels):
        curves.setdefault((r.schedule.kind, tuple(lr_curve(r, iters_per_epoch))), []).append(label)
    kinds = list(dict.fromkeys(kind for kind, _ in curves))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for i, ((k, lrs), names) in enumerate((key, v) for key, v in curves.items() if key[0] == kind):
            label = "\n".join(textwrap.wrap(", ".join(names), 48))  # long lists stay inside the figure
            ax.plot(np.arange(len(lrs)) / iters_per_epoch, lrs, label=label, **_style(i))
        ax.set_title(f"{kind} schedule", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_mixing_examples(out: Path, pairs: int = 4, seed: int = 0) -> Path:
    """Real cifar10-mini images mixed every way the toolkit can: each column a pair (or
    four images for tile), rows: the two sources, interpolation, top/bottom stitch,
    left/right stitch, tile (like the follow-up paper's Fig. 1)."""
    from gluon_tricks.data.cifar import CIFAR10_CLASSES, load_cifar
    from gluon_tricks.tricks import mixing

    data = load_cifar("cifar10-mini", train=False)
    rng = np.random.default_rng(seed)
    n = 2 * pairs
    idx = rng.choice(len(data), n, replace=False)
    x = data.images[idx].transpose(0, 3, 1, 2).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[data.labels[idx]]
    partner = np.arange(n)[::-1]
    lam = 0.6
    plans = {
        "interpolation (lam 0.6)": mixing.interpolation_plan(n, 32, 32, lam, partner),
        "stitch_height (top/bottom)": mixing.stitch_plan(n, 32, 32, lam, partner, "height"),
        "stitch_width (left/right)": mixing.stitch_plan(n, 32, 32, lam, partner, "width"),
        "tile (2x2)": mixing.tile_plan(n, 32, 32, 0.5, 0.6, mixing.partners(n, "reversed", rng, 3)),
    }
    fig, axes = plt.subplots(2 + len(plans), pairs, figsize=(1.8 * pairs, 1.9 * (2 + len(plans))))
    for j in range(pairs):
        for row, k in ((0, j), (1, partner[j])):
            axes[row, j].imshow(x[k].transpose(1, 2, 0).astype(np.uint8))
            axes[row, j].set_title(CIFAR10_CLASSES[data.labels[idx][k]], fontsize=7)
        for i, (name, plan) in enumerate(plans.items()):
            xm, ym = mixing.mix_numpy(x, y, plan)
            axes[2 + i, j].imshow(np.clip(xm[j], 0, 255).transpose(1, 2, 0).astype(np.uint8))
            top = np.argsort(ym[j])[::-1][:2]
            axes[2 + i, j].set_title(" / ".join(f"{CIFAR10_CLASSES[t][:5]} {ym[j][t]:.2f}" for t in top), fontsize=6)
            if j == 0:
                axes[2 + i, j].set_ylabel(name, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=7)
    axes[1, 0].set_ylabel("partner", fontsize=7)
    return _save(fig, out)


def seed_curve(runs: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values[seed, epoch]) of `key` over the epochs every seed has a number for: the
    epochs all seeds finished, less those without a test pass (null top1/top5 under
    system.eval_every). Epochs count from 1."""
    n = min(len(m) for m in runs)
    values = np.array([[np.nan if row[key] is None else row[key] for row in m[:n]] for m in runs], dtype=float)
    have = ~np.isnan(values).any(axis=0)
    return np.arange(1, n + 1)[have], values[:, have]


def plot_curves(rows: list[dict], out: Path, title: str = "") -> Path:
    """Test top-1 and train loss per epoch of each row that has results: the mean over its
    seeds, with the band between the lowest and highest seed; one style per row. Top-1 is drawn
    at the epochs that were tested (every one, or every system.eval_every-th and the last)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, r in enumerate(rows):
        runs = [m for m in (r.get("metrics") or []) if m]
        if not runs:
            continue
        for ax, key in ((a1, "top1"), (a2, "train_loss")):
            epochs, values = seed_curve(runs, key)
            ax.plot(epochs, values.mean(0), label=r["label"] if ax is a1 else None,
                    marker="." if len(epochs) < 25 else None, **_style(i))
            if len(runs) > 1:
                ax.fill_between(epochs, values.min(0), values.max(0), color=_style(i)["color"], alpha=0.12)
    a1.set_xlabel("epoch")
    a1.set_ylabel("test top-1 (%)")
    a2.set_xlabel("epoch")
    a2.set_ylabel("train loss")
    a1.legend(fontsize=6)
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return _save(fig, out)


def plot_bars(rows: list[dict], out: Path, title: str = "") -> Path:
    """Ours vs the paper's top-1 per row (rows without a number show no bar)."""
    labels = [r["label"] for r in rows]
    ours = [r["top1"] if r["top1"] is not None else np.nan for r in rows]
    paper = [r.get("paper_top1") if isinstance(r.get("paper_top1"), float) else np.nan for r in rows]
    pos = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    ax.bar(pos - 0.2, ours, 0.4, label="ours")
    ax.bar(pos + 0.2, paper, 0.4, label="paper")
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("top-1 (%)")
    finite = [v for v in ours + paper if np.isfinite(v)]
    if finite:
        ax.set_ylim(max(0, min(finite) - 10), min(100, max(finite) + 5))
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save(fig, out)


def plot_differences(rows: list[dict], differences: list[dict | None], out: Path, title: str = "") -> Path:
    """Each row's top-1 difference from its reference row (report.row_differences) as a bar with
    its 95% Welch interval, and beside it (orange) the interval paired by seed; rows without an
    interval (the first, fewer than 2 seeds) are left empty. A bar whose Welch interval
    excludes 0 is drawn solid, the others hatched."""
    pos = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4.5))
    for p, d in zip(pos, differences):
        x = d["difference"] if d else None
        if x is None:
            continue
        ax.bar(p, x.diff, 0.6, color=_COLOURS[0] if x.excludes_zero else "none", edgecolor=_COLOURS[0],
               hatch=None if x.excludes_zero else "//")
        ax.errorbar(p, x.diff, yerr=[[x.diff - x.low], [x.high - x.diff]], color="black", capsize=4)
        ax.annotate(f"{x.diff:+.2f}", (p, x.high), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                    textcoords="offset points")
        paired = d.get("paired")
        if paired is not None:
            ax.errorbar(p + 0.2, paired.diff, yerr=[[paired.diff - paired.low], [paired.high - paired.diff]],
                        color=_COLOURS[1], capsize=3, marker="o", markersize=3)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xticks(pos)
    ax.set_xticklabels([r["label"] + (f"\nvs {d['reference']}" if d else "") for r, d in zip(rows, differences)],
                       rotation=30, ha="right", fontsize=6)
    ax.set_ylabel("Δ test top-1 (points), 95% Welch interval")
    if any(d and d.get("paired") for d in differences):
        from matplotlib.lines import Line2D

        ax.legend(handles=[Line2D([], [], color=_COLOURS[1], marker="o", markersize=3, label="paired by seed, 95%")],
                  fontsize=7, loc="best")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=9)
    return _save(fig, out)


def twin_rows(table) -> list[tuple[str, int, int]]:
    """(label, coarse row index, fine row index) for each recipe a table runs on both CIFAR-100
    label sets: the same recipe file, once with coarse and once with fine labels."""
    from gluon_tricks.tables import row_recipes

    by_recipe: dict = {}
    for i, row in enumerate(table.rows):
        if row.recipe_path is None:
            continue
        recipe = row_recipes(row, 1, 1.0)[0]
        if recipe.data.dataset in ("cifar100", "cifar100-mini"):
            by_recipe.setdefault(row.recipe_path.resolve(), {})[recipe.data.fine_labels] = i
    out = []
    for pair in by_recipe.values():
        if set(pair) == {False, True}:
            label = table.rows[pair[False]].label
            for suffix in (" (coarse)", " (faithful)", " (coarse, faithful)"):
                label = label.removesuffix(suffix)
            out.append((label, pair[False], pair[True]))
    return sorted(out, key=lambda t: t[1])


def plot_coarse_vs_fine(rows: list[dict], twins, out: Path, title: str = "") -> Path:
    """Top-1 on the 20 coarse labels beside top-1 on the 100 fine labels, same recipe, images
    and network; error bars are the std over seeds."""
    labels = [t[0] for t in twins]
    pos = np.arange(len(twins))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(twins)), 4.2))
    for offset, which, name in ((-0.2, 1, "coarse labels (20 classes; the paper's numbers)"),
                                (0.2, 2, "fine labels (100 classes)")):
        rs = [rows[t[which]] for t in twins]
        mean = [r["top1"] if r["top1"] is not None else np.nan for r in rs]
        std = [r["top1_std"] or 0.0 for r in rs]
        bars = ax.bar(pos + offset, mean, 0.4, yerr=std, capsize=3, label=name)
        for b, m in zip(bars, mean):
            if np.isfinite(m):
                ax.annotate(f"{m:.1f}", (b.get_x() + b.get_width() / 2, m), ha="center", va="bottom",
                            fontsize=6, xytext=(0, 2), textcoords="offset points")
    for chance, style, name in ((100 / 20, "--", "chance, coarse (1/20)"), (100 / 100, ":", "chance, fine (1/100)")):
        ax.axhline(chance, color="grey", linestyle=style, linewidth=1, label=name)
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=9)
    return _save(fig, out)


def plot_table(table, out_dir: Path, rows: list[dict], iters_per_epoch: int = 196, epochs_scale: float = 1.0,
               overrides=()) -> list[Path]:
    """The table's pictures into out_dir, from its rows as `tables.collect` gives them:
    schedules, curves, ours vs paper, mixing examples; for a table that runs recipes on both
    CIFAR-100 label sets, also coarse beside fine and one curves picture per label set; for a
    table that shows differences, the bar chart of them with their intervals."""
    from gluon_tricks.report import has_paper_numbers, row_differences
    from gluon_tricks.tables import row_recipes

    out_dir = Path(out_dir)
    written = []
    if not table.out_of_scope:
        recipes = [row_recipes(r, 1, epochs_scale, overrides)[0] for r in table.rows]
        written.append(plot_schedules(recipes, out_dir / "schedules.png", iters_per_epoch,
                                      labels=[r.label for r in table.rows]))
        twins = twin_rows(table)
        if twins:
            written.append(plot_coarse_vs_fine(rows, twins, out_dir / "coarse_vs_fine.png", table.title))
            for which, labels in ((1, "coarse"), (2, "fine")):
                written.append(plot_curves([rows[t[which]] for t in twins], out_dir / f"curves_{labels}.png",
                                           f"{table.title}: {labels} labels"))
        else:
            written.append(plot_curves(rows, out_dir / "curves.png", table.title))
    if table.differences:
        written.append(plot_differences(rows, row_differences(table, rows), out_dir / "differences.png", table.title))
    if has_paper_numbers(rows):
        written.append(plot_bars(rows, out_dir / "ours_vs_paper.png", table.title))
    written.append(plot_mixing_examples(out_dir / "mixing_examples.png"))
    return written
