"""PNG pictures (matplotlib, headless): schedules, mixing examples, curves, bars."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_schedules(recipes, out: Path, iters_per_epoch: int = 196) -> Path:
    """Every recipe's learning rate per iteration over its whole run, on one axis."""
    from gluon_tricks.tricks.schedules import lr_curve

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in recipes:
        lrs = lr_curve(r, iters_per_epoch)
        ax.plot([t / iters_per_epoch for t in range(len(lrs))], lrs, label=r.name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
