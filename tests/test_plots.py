"""Each picture is written as a real, non-trivial PNG."""
import matplotlib

from gluon_tricks.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_table_pictures_are_written(tmp_path, capsys, monkeypatch):
    """The plot command looks the results up once, draws the pictures and writes table.md beside them."""
    from gluon_tricks import tables

    calls = []
    real_collect = tables.collect
    monkeypatch.setattr(tables, "collect", lambda *a, **k: calls.append(a) or real_collect(*a, **k))
    assert main(["plot", "followup/table4", "--out", str(tmp_path / "p"), "--runs", str(tmp_path / "runs")]) == 0
    for name in ("schedules.png", "curves.png", "ours_vs_paper.png", "mixing_examples.png"):
        data = (tmp_path / "p" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    assert "### Follow-up Table IV" in (tmp_path / "p" / "table.md").read_text()
    assert str(tmp_path / "p" / "table.md") in capsys.readouterr().out.splitlines()
    assert len(calls) == 1


def test_schedule_command(tmp_path):
    out = tmp_path / "lr.png"
    assert main(["schedule", "followup/table3/cosine", "followup/faithful", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 10_000


def _captured_figures(monkeypatch):
    from gluon_tricks import plots

    figs = []

    def keep(fig, out):
        figs.append(fig)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
        return out

    monkeypatch.setattr(plots, "_save", keep)
    return figs


def test_schedules_of_a_long_table_keep_every_curve_visible(tmp_path, monkeypatch):
    """13 rows (Tables III and V): no two lines in a panel share a colour and dash pattern, no
    line hides an identical one, and every row is named in a legend."""
    from gluon_tricks import plots
    from seams import recipes_root
    from gluon_tricks.tables import load_table, row_recipes
    from gluon_tricks.tricks.schedules import lr_curve

    rows = load_table(recipes_root(), "followup/table3").rows + load_table(recipes_root(), "followup/table5").rows
    assert len(rows) > 10  # more rows than matplotlib's colour cycle
    recipes = [row_recipes(r, 1, 1.0)[0] for r in rows]
    figs = _captured_figures(monkeypatch)
    plots.plot_schedules(recipes, tmp_path / "s.png", iters_per_epoch=4, labels=[r.label for r in rows])
    (fig,) = figs
    legend_text = []
    drawn = set()
    for ax in fig.axes:
        lines = ax.get_lines()
        styles = [(matplotlib.colors.to_hex(l.get_color()), l.get_linestyle()) for l in lines]
        assert len(set(styles)) == len(styles), "two lines drawn in the same style"
        ys = [tuple(l.get_ydata()) for l in lines]
        assert len(set(ys)) == len(ys), "an identical curve drawn on top of another"
        drawn |= set(ys)
        if ax.get_legend():
            legend_text += [t.get_text() for t in ax.get_legend().get_texts()]
    assert drawn == {tuple(lr_curve(r, 4)) for r in recipes}
    for r in rows:
        assert any(r.label in t.replace("\n", " ") for t in legend_text), r.label


def test_twin_table_draws_coarse_beside_fine(tmp_path, monkeypatch):
    """A table running each recipe on both label sets: the coarse-vs-fine bars are the
    results' means (written here by hand), coarse left, fine right."""
    import json

    import numpy as np

    from seams import recipes_root
    from gluon_tricks.plots import plot_table, twin_rows
    from gluon_tricks.identity import content_hash
    from gluon_tricks.tables import collect, load_table, row_recipes

    monkeypatch.setenv("GLUON_TRICKS_RESULTS", "")
    table = load_table(recipes_root(), "proxy")
    runs = tmp_path / "runs"
    expected = {}
    for i, row in enumerate(table.rows):
        for seed, recipe in enumerate(row_recipes(row, 2, 1.0)):
            top1 = 10.0 * i + seed  # mean 10 i + 0.5
            d = runs / f"r{i}-{seed}"
            d.mkdir(parents=True)
            (d / "run.json").write_text(json.dumps({"tool": "gluon-tricks", "format": 1, "hash": content_hash(recipe),
                                                    "name": recipe.name}))
            (d / "result.json").write_text(json.dumps({
                "hash": content_hash(recipe), "final_top1": top1, "final_top5": 50.0, "seconds_per_epoch": 1.0,
                "epochs": 2, "hardware": {"ctx": ["cpu"], "machine": "x", "cpus": 2}}))
            (d / "metrics.jsonl").write_text("".join(
                json.dumps({"epoch": e, "top1": top1, "top5": 50.0, "train_loss": 1.0, "lr": 0.1, "seconds": 1.0,
                            "images_per_sec": 10.0}) + "\n" for e in range(2)))
        expected[i] = 10.0 * i + 0.5
    twins = twin_rows(table)
    assert len(twins) == 7 and all("(fine)" in table.rows[f].label for _, _, f in twins)
    figs = _captured_figures(monkeypatch)
    table.seeds = 2
    written = plot_table(table, tmp_path / "p", collect(table, runs_root=runs), iters_per_epoch=4)
    names = {p.name for p in written}
    assert {"coarse_vs_fine.png", "curves_coarse.png", "curves_fine.png"} <= names
    assert not (tmp_path / "p" / "table.md").exists()  # pictures only: the plot command writes the table
    bars_fig = next(f for f in figs if any("fine labels" in t.get_text() for ax in f.axes
                                           if ax.get_legend() for t in ax.get_legend().get_texts()))
    heights = [b.get_height() for b in bars_fig.axes[0].patches]
    np.testing.assert_allclose(heights[:7], [expected[c] for _, c, _ in twins])
    np.testing.assert_allclose(heights[7:], [expected[f] for _, _, f in twins])
    assert (tmp_path / "p" / "coarse_vs_fine.png").read_bytes().startswith(PNG)
