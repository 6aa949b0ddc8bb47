"""PNG pictures (matplotlib, headless): schedules, mixing examples, curves, bars."""
from __future__ import annotations

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


def plot_schedules(recipes, out: Path, iters_per_epoch: int = 196, labels=None) -> Path:
    """Every recipe's learning rate per iteration over its whole run, on one axis."""
    from gluon_tricks.tricks.schedules import lr_curve

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, r in enumerate(recipes):
        lrs = lr_curve(r, iters_per_epoch)
        ax.plot(np.arange(len(lrs)) / iters_per_epoch, lrs, label=labels[i] if labels else r.name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.legend(fontsize=7)
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


def plot_curves(rows: list[dict], out: Path, title: str = "") -> Path:
    """Test top-1 and train loss per epoch of each row that has results."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        for k, metrics in enumerate(r.get("metrics") or []):
            if not metrics:
                continue
            epochs = [m["epoch"] + 1 for m in metrics]
            label = r["label"] if k == 0 else None
            line = a1.plot(epochs, [m["top1"] for m in metrics], label=label)[0]
            a2.plot(epochs, [m["train_loss"] for m in metrics], color=line.get_color())
    a1.set_xlabel("epoch")
    a1.set_ylabel("test top-1 (%)")
    a2.set_xlabel("epoch")
    a2.set_ylabel("train loss")
    a1.legend(fontsize=7)
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


def plot_table(table, out_dir: Path, runs_root=None, iters_per_epoch: int = 196) -> list[Path]:
    """All four pictures for a table, plus its markdown, into out_dir."""
    from gluon_tricks.tables import collect, render, row_recipes

    out_dir = Path(out_dir)
    rows = collect(table, runs_root=runs_root)
    written = []
    if not table.out_of_scope:
        recipes = [row_recipes(r, 1, 1.0)[0] for r in table.rows]
        written.append(plot_schedules(recipes, out_dir / "schedules.png", iters_per_epoch,
                                      labels=[r.label for r in table.rows]))
        written.append(plot_curves(rows, out_dir / "curves.png", table.title))
    written.append(plot_bars(rows, out_dir / "ours_vs_paper.png", table.title))
    written.append(plot_mixing_examples(out_dir / "mixing_examples.png"))
    (out_dir / "table.md").write_text(render(table, "md", runs_root=runs_root) + "\n")
    written.append(out_dir / "table.md")
    return written
