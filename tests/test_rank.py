"""The rank table (issue 25): Welch intervals against hand computations, a textbook t value and
scipy's own Welch test; the differences a table prints and draws, on results written by hand."""
import json
import math

import numpy as np
import pytest

from gluon_tricks.errors import UserError
from gluon_tricks.identity import content_hash
from gluon_tricks.recipe import to_toml
from gluon_tricks.stats import paired_difference, pooled_std, welch_difference
from gluon_tricks.report import render
from gluon_tricks.tables import collect, load_table, row_recipes
from seams import recipes_root


def test_welch_interval_of_equal_spreads_is_the_textbook_t_interval():
    """a = 1, 2, 3 and b = 3, 4, 5: difference 2, variances 1 and 1, se = sqrt(1/3 + 1/3), Welch's
    df = (2/3)^2 / (2 (1/3)^2 / 2) = 4, and t(0.975, 4) = 2.776 (any t table)."""
    d = welch_difference([1, 2, 3], [3, 4, 5])
    se = math.sqrt(2 / 3)
    assert d.diff == pytest.approx(2.0)
    assert d.df == pytest.approx(4.0)
    assert d.high - d.diff == pytest.approx(2.776 * se, abs=5e-4)
    assert d.diff - d.low == pytest.approx(d.high - d.diff)
    assert not d.excludes_zero  # 2 +- 2.27


def test_welch_interval_of_unequal_spreads_by_hand():
    """a = 1, 2, 3 (s^2 = 1), b = 4, 6, 8 (s^2 = 4): se^2 = 1/3 + 4/3 = 5/3,
    df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17 = 2.94, just under 3: its t(0.975) lies just
    above the t table's 3.182 at df 3 (and far below its 4.303 at df 2)."""
    d = welch_difference([1, 2, 3], [4, 6, 8])
    assert d.diff == pytest.approx(4.0)
    assert d.df == pytest.approx(50 / 17)
    t_used = (d.high - d.diff) / math.sqrt(5 / 3)
    assert 3.182 < t_used < 3.25
    assert d.low < 0 < d.high and not d.excludes_zero  # 4 +- 4.16: a 4-point step, yet within the noise of 3 seeds


def test_welch_interval_bounds_are_where_scipys_welch_test_gives_p_005():
    """Independent of the formula above: shifting b by either bound makes scipy's unequal-variance
    t-test (scipy.stats.ttest_ind, equal_var=False) give exactly p = 0.05."""
    from scipy.stats import ttest_ind

    a, b = [71.2, 73.9, 72.5, 74.0], [75.1, 74.2, 78.0]
    d = welch_difference(a, b)
    for bound in (d.low, d.high):
        p = ttest_ind(np.array(b) - bound, a, equal_var=False).pvalue
        assert p == pytest.approx(0.05, abs=1e-9)


def test_no_interval_without_two_seeds_a_side_and_none_wide_without_spread():
    assert welch_difference([70.0], [71.0, 72.0]) is None
    d = welch_difference([70.0, 70.0], [71.0, 71.0])
    assert (d.diff, d.low, d.high, d.df) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0), None)


def test_paired_interval_bounds_are_where_scipys_paired_test_gives_p_005():
    """Independent of the formula: shifting b by either bound makes scipy's paired t-test
    (scipy.stats.ttest_rel) give p = 0.05; only the seeds both rows ran are paired."""
    from scipy.stats import ttest_rel

    a, b = {0: 71.2, 1: 73.9, 2: 72.5, 7: 60.0}, {0: 75.1, 1: 74.2, 2: 78.0, 3: 90.0}
    d = paired_difference(a, b)
    assert d.df == 2 and d.diff == pytest.approx(((75.1 - 71.2) + (74.2 - 73.9) + (78.0 - 72.5)) / 3)
    for bound in (d.low, d.high):
        assert ttest_rel(np.array([75.1, 74.2, 78.0]) - bound, [71.2, 73.9, 72.5]).pvalue == pytest.approx(0.05, abs=1e-9)
    assert paired_difference({0: 1.0, 1: 2.0}, {1: 3.0, 2: 4.0}) is None  # one shared seed


def test_pooled_std_by_hand():
    # variances 1 (n 3) and 4 (n 3): sqrt((2 * 1 + 2 * 4) / 4) = sqrt(2.5)
    assert pooled_std([1, 2, 3], [4, 6, 8]) == pytest.approx(math.sqrt(2.5))
    # unequal n: variances 1 (n 3) and 20/3 (n 4) weigh 2 and 3: sqrt((2 * 1 + 3 * 20/3) / 5) = sqrt(4.4),
    # not the plain mean of the variances, sqrt(23/6)
    assert pooled_std([1, 2, 3], [4, 6, 8, 10]) == pytest.approx(math.sqrt(4.4))


def write_result(runs, recipe, top1, epochs=4, eval_every=1):
    """A finished run as the engine leaves it: run.json, result.json, metrics.jsonl (top1 null in
    the epochs without a test pass)."""
    h = content_hash(recipe)
    d = runs / f"{recipe.name}-{h}"
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"tool": "gluon-tricks", "format": 1, "hash": h, "name": recipe.name}))
    (d / "recipe.toml").write_text(to_toml(recipe))
    (d / "result.json").write_text(json.dumps({
        "hash": h, "final_top1": top1, "final_top5": 99.0, "seconds_per_epoch": 25.0, "epochs": epochs,
        "hardware": {"ctx": ["cpu(0)"], "machine": "x", "cpus": 2}}))
    rows = []
    for e in range(epochs):
        tested = (e + 1) % eval_every == 0 or e == epochs - 1
        value = top1 * (e + 1) / epochs if tested else None
        rows.append({"epoch": e, "top1": value, "top5": value, "train_loss": 2.0 / (e + 1), "lr": 0.1,
                     "seconds": 25.0, "images_per_sec": 180.0})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# top-1 per row and seed (3 seeds), as the rank table's rows run
FAKE = [[70.0, 71.0, 72.0], [73.0, 74.0, 75.0], [73.0, 75.0, 77.0], [74.0, 74.5, 75.0], [78.0, 78.0, 78.5],
        [75.0, 76.0, 77.0]]


@pytest.fixture
def rank_with_results(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUON_TRICKS_RESULTS", "")  # only the results written here
    table = load_table(recipes_root(), "rank/cifar10-mini")
    runs = tmp_path / "runs"
    for row, values in zip(table.rows, FAKE):
        for recipe, top1 in zip(row_recipes(row, 3, 1.0), values):
            write_result(runs, recipe, top1, epochs=4, eval_every=3)
    return table, runs


def test_rank_table_prints_each_step_with_its_welch_interval(rank_with_results):
    table, runs = rank_with_results
    text = render(table, runs_root=runs)
    lines = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]] for l in text.splitlines()
             if l.startswith("| ") and "---" not in l}
    head = lines.pop("row")
    assert head[:5] == ["top-1", "n", "Δ top-1 [95% CI]", "paired Δ [95% CI]", "from"] and "paper top-1" not in head
    labels = [r.label for r in table.rows]
    assert lines[labels[0]][:5] == ["71.00 ± 1.00", "3", "", "", ""]
    # row 2 - row 1: 3 +- 2.776 * sqrt(2/3) = [0.73, 5.27]: excludes 0; paired, every seed is +3: no spread
    assert lines[labels[1]][1:5] == ["3", "+3.00 [+0.73, +5.27] *", "+3.00 [+3.00, +3.00] *", labels[0]]
    # row 3 - row 2 paired: seeds +0, +1, +2: 1 +- t(0.975, 2) 4.303 * 1 / sqrt(3) = [-1.48, +3.48]
    assert lines[labels[2]][3] == "+1.00 [-1.48, +3.48]"
    # stitch (76 +- 1) against interpolation mixup (74.5 +- 0.5), not against the distillation row above it;
    # paired, seeds +1, +1.5, +2: 1.5 +- 4.303 * 0.5 / sqrt(3) = [+0.26, +2.74], where Welch's includes 0
    d = welch_difference(FAKE[3], FAKE[5])
    assert lines[labels[5]][2:5] == [f"{d.diff:+.2f} [{d.low:+.2f}, {d.high:+.2f}]", "+1.50 [+0.26, +2.74] *", labels[3]]
    assert d.low < 0
    assert "Welch" in text and "paired t" in text and "docs/rank.md" in text


def test_rank_table_csv_has_the_intervals(rank_with_results):
    import csv
    import io

    table, runs = rank_with_results
    rows = list(csv.DictReader(io.StringIO(render(table, "csv", runs_root=runs))))
    assert rows[0]["reference"] == "" and rows[0]["diff_top1"] == ""
    assert float(rows[1]["diff_top1"]) == pytest.approx(3.0) and float(rows[1]["welch_df"]) == pytest.approx(4.0)
    assert rows[5]["reference"] == table.rows[3].label
    assert float(rows[5]["paired_diff"]) == pytest.approx(1.5) and float(rows[5]["paired_df"]) == 2
    assert float(rows[5]["paired_low"]) == pytest.approx(1.5 - 4.302653 * 0.5 / math.sqrt(3))


def test_rank_pictures_draw_bands_over_tested_epochs_and_the_differences(rank_with_results, tmp_path, monkeypatch):
    from gluon_tricks import plots

    table, runs = rank_with_results
    figs = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out: (figs.append(fig), real_save(fig, out))[1])
    written = {p.name: p for p in plots.plot_table(table, tmp_path / "p", collect(table, runs_root=runs), iters_per_epoch=4)}
    assert written["differences.png"].read_bytes().startswith(b"\x89PNG") and written["curves.png"].stat().st_size > 10_000
    assert "ours_vs_paper.png" not in written  # no row has a paper number: no empty "paper" bars
    curves = next(f for f in figs if f.axes[0].get_ylabel() == "test top-1 (%)")
    first = curves.axes[0].get_lines()[0]
    # eval_every 3 over 4 epochs: tested after epochs 3 and 4; the mean over seeds of top1 * e / 4
    assert list(first.get_xdata()) == [3, 4]
    np.testing.assert_allclose(first.get_ydata(), [71.0 * 3 / 4, 71.0])
    bars = next(f for f in figs if "Welch" in f.axes[0].get_ylabel()).axes[0]
    heights = [p.get_height() for p in bars.patches]
    expected = [welch_difference(FAKE[i - 1] if i != 5 else FAKE[3], FAKE[i]).diff for i in range(1, 6)]
    np.testing.assert_allclose(heights, expected)
    # beside each bar its paired interval; stitch's, by hand above: [+0.26, +2.74] (Welch's: [-0.56, +3.56])
    paired = [c for c in bars.containers if hasattr(c, "has_yerr") and c.lines[0].get_marker() == "o"]
    assert len(paired) == 5
    (low, high), = [tuple(seg[:, 1]) for seg in paired[-1].lines[2][0].get_segments()]
    assert (low, high) == (pytest.approx(1.5 - 4.302653 * 0.5 / math.sqrt(3)), pytest.approx(1.5 + 4.302653 * 0.5 / math.sqrt(3)))


def test_compare_to_must_name_another_row(tmp_path):
    root = tmp_path / "recipes"
    (root / "t").mkdir(parents=True)
    (root / "t" / "table.toml").write_text('differences = true\n[[rows]]\nlabel = "a"\nrecipe = "x.toml"\n'
                                           '[[rows]]\nlabel = "b"\nrecipe = "x.toml"\ncompare_to = "c"\n')
    with pytest.raises(UserError, match="row 'b' has compare_to = 'c', which is not the label of exactly one"):
        load_table(root, "t")
    (root / "t" / "table.toml").write_text('differences = "yes"\n')
    with pytest.raises(UserError, match="differences must be true or false"):
        load_table(root, "t")


def test_pilot_reports_differences_against_twice_the_pooled_seed_std(tmp_path):
    """tools/rank.py pilot --report-only at 4 epochs (the rows scaled by 4/40) on results written
    by hand: baseline 70, 72 and mixup 75, 76: difference 4.5, pooled std sqrt((2 + 0.5) / 2) =
    1.118, so 4.5 > 2.24 exceeds; distillation 72, 73: 1.5 does not."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    table = load_table(recipes_root(), "rank/cifar10-mini")
    rows = {r.recipe_path.stem: r for r in table.rows}
    runs = tmp_path / "runs"
    for stem, values in (("baseline", [70.0, 72.0]), ("mixup", [75.0, 76.0]), ("distill", [72.0, 73.0])):
        for recipe, top1 in zip(row_recipes(rows[stem], 2, 0.1), values):
            assert recipe.epochs == 4
            write_result(runs, recipe, top1)
    env = dict(os.environ, GLUON_TRICKS_RESULTS="", PYTHONPATH=str(repo))
    proc = subprocess.run([sys.executable, str(repo / "tools" / "rank.py"), "pilot", "--epochs", "4", "--report-only",
                           "--rows", "baseline,mixup,distill", "--runs", str(runs)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("pilot at 4 epochs; reference: Baseline (step decay): 71.00 over 2 seeds")
    assert "difference +4.50, pooled seed std 1.12: EXCEEDS 2 x pooled std (2.24)" in lines[1]
    assert "difference +1.50, pooled seed std 1.12: does not exceed" in lines[2]
    bad = subprocess.run([sys.executable, str(repo / "tools" / "rank.py"), "pilot", "--rows", "baseline,nope",
                          "--report-only"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--rows baseline,nope" in bad.stderr


def test_rank_table_command_copies_the_finished_runs_and_draws(rank_with_results, tmp_path):
    """tools/rank.py table --report-only: the 18 finished runs of the table (and nothing else in the
    runs root) are copied without checkpoints, the pictures and table.md are drawn, the table printed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    table, runs = rank_with_results
    (runs / "other-0123456789abcdef").mkdir()  # not one of the table's runs
    for d in runs.iterdir():
        (d / "checkpoints").mkdir()
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, GLUON_TRICKS_RESULTS="", PYTHONPATH=str(repo))
    proc = subprocess.run([sys.executable, str(repo / "tools" / "rank.py"), "table", "--report-only", "--runs",
                           str(runs), "--results", str(tmp_path / "results"), "--docs", str(tmp_path / "docs")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    copied = sorted((tmp_path / "results").iterdir())
    assert len(copied) == 18 and all(d.name.startswith("rank-") for d in copied)
    assert all(sorted(p.name for p in d.iterdir()) == ["metrics.jsonl", "recipe.toml", "result.json", "run.json"]
               for d in copied)
    assert (tmp_path / "docs" / "differences.png").is_file() and (tmp_path / "docs" / "table.md").is_file()
    assert "+3.00 [+0.73, +5.27] *" in proc.stdout and "18 runs copied" in proc.stdout


# What docs/rank.md and the README report, as `gluon-tricks table rank/cifar10-mini` prints it
# from the committed results (results/rank-*): top-1, Welch and paired steps per row.
DOCUMENTED = {
    "Baseline (step decay)": ("63.83 ± 0.43", "", ""),
    "+ cosine decay, warm-up": ("74.00 ± 1.36", "+10.17 [+7.12, +13.22] *", "+10.17 [+7.33, +13.00] *"),
    "+ label smoothing": ("72.62 ± 1.07", "-1.38 [-4.22, +1.46]", "-1.38 [-6.40, +3.64]"),
    "+ interpolation mixup": ("74.70 ± 0.35", "+2.09 [-0.27, +4.45]", "+2.09 [+0.32, +3.86] *"),
    "+ distillation (pretrained ResNet-20)": ("78.33 ± 1.84", "+3.62 [-0.74, +7.99]", "+3.62 [-1.38, +8.63]"),
    "stitch mixup (top/bottom) instead": ("73.64 ± 0.95", "-1.06 [-3.12, +0.99]", "-1.06 [-4.29, +2.17]"),
}


def test_a_fresh_clone_prints_the_documented_rank_table(tmp_path, monkeypatch, capsys):
    """With no runs of its own, the table is the committed results: every row finds its 3 seeds
    (a recipe change that moved a row's hash would lose them) and prints what docs/rank.md says."""
    from gluon_tricks.cli import main

    monkeypatch.delenv("GLUON_TRICKS_RESULTS", raising=False)
    assert main(["table", "rank/cifar10-mini", "--runs", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    cells = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]] for l in out.splitlines()
             if l.startswith("| ") and "---" not in l}
    head = cells.pop("row")
    columns = [head.index(h) for h in ("top-1", "Δ top-1 [95% CI]", "paired Δ [95% CI]")]
    assert {label: tuple(c[i] for i in columns) for label, c in cells.items()} == DOCUMENTED
    assert all(c[head.index("n")] == "3" for c in cells.values())
    assert "of 3 seeds have results" not in out


def test_rows_at_one_seed_start_from_the_same_weights(tmp_path, monkeypatch):
    """The paired interval's premise (stats.paired_difference): at one seed, a row with cosine,
    smoothing and mixup starts from the very weights of a plain row; another seed does not.
    The weights after the first step at a learning rate of 1e-30 are the initial ones (running
    BatchNorm statistics excluded: they follow the, here mixed, batch)."""
    import gluon_tricks.engine as engine
    import seams
    from gluon_tricks.recipe import recipe_from_dict

    first = {}
    real = engine._train_step

    def spy(setup, trainer, x, labels, epoch, step):
        out = real(setup, trainer, x, labels, epoch, step)
        if step == 0:
            first[setup.recipe.name] = [p.data().asnumpy().copy() for n, p in setup.net.collect_params().items()
                                        if "running" not in n]
        return out

    monkeypatch.setattr(engine, "_train_step", spy)
    tricks = {"schedule": {"kind": "cosine", "warmup_epochs": 1}, "smoothing": {"eps": 0.1},
              "mixup": {"kind": "interpolation", "alpha": 0.2}}
    for name, seed, extra in (("plain", 0, {}), ("tricks", 0, tricks), ("other-seed", 1, {})):
        recipe = recipe_from_dict(seams.tiny(name=name, images=16, seed=seed, optim={"lr": 1e-30}, **extra))
        engine.train(recipe, tmp_path / name, progress=False)
    for a, b in zip(first["plain"], first["tricks"]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-25)
    assert max(float(np.abs(a - b).max()) for a, b in zip(first["plain"], first["other-seed"])) > 0.01
