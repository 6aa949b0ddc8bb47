"""Tables: shipped recipes resolve, paper numbers equal the published CSVs, a tiny table runs,
resumes without retraining, and renders md, csv and latex."""
import csv
import io
from pathlib import Path

import pytest

import gluon_tricks.engine as engine
from gluon_tricks.cli import main, recipes_root
from gluon_tricks.errors import UserError
from gluon_tricks.recipe import load_recipe
from gluon_tricks.tables import PAPER_NUMBERS, collect, load_table, render, run_table, table_names

SHARED = Path(__file__).resolve().parents[2] / "shared" / "papers"


def test_every_shipped_recipe_parses():
    root = recipes_root()
    files = [p for p in root.rglob("*.toml") if p.name != "table.toml"]
    files += list((root.parent / "teacher").glob("*.toml"))
    assert len(files) > 50
    for p in files:
        load_recipe(p)


def test_every_table_resolves_and_its_paper_numbers_equal_the_csv():
    root = recipes_root()
    names = table_names(root)
    for expected in ["demo", "followup/table1", "followup/table2", "followup/table3", "followup/table4",
                     "followup/table5", "followup/other", "followup/table3-fine", "bot/table2", "bot/table3",
                     "bot/table4", "bot/table5", "bot/table6", "bot/table7", "bot/table8", "bot/table9",
                     "food101/table8"]:
        assert expected in names
    checked = 0
    for name in names:
        table = load_table(root, name)
        rows = collect(table)
        for row, entry in zip(table.rows, rows):
            for metric in ("top1", "top5"):
                value = row.paper.get(metric)
                if value is None:
                    continue
                # find the same number independently in the CSV text
                texts = {c for r in read_csv_files() for c in r}
                assert (value if isinstance(value, str) else f"{value}") in texts or \
                    any(_same(value, c) for c in texts), (name, row.label, value)
                checked += 1
    assert checked > 80


def read_csv_files():
    for p in PAPER_NUMBERS.glob("*.csv"):
        with open(p, newline="") as f:
            for r in csv.reader(f):
                yield r


def _same(value, cell):
    try:
        return float(cell) == value
    except ValueError:
        return False


def test_specific_paper_numbers():
    root = recipes_root()
    t3 = {r.label: r.paper for r in load_table(root, "followup/table3").rows}
    assert t3["Baseline"] == {"top1": 74.92, "top5": 95.66}
    assert t3["+ distillation"] == {"top1": 80.34, "top5": 95.75}
    t6 = {r.label: r.paper for r in load_table(root, "bot/table6").rows}
    assert t6["ResNet-50-D + distill w/ mixup"] == {"top1": 79.33, "top1_std": 0.07, "top1_alt": 79.29,
                                                    "top5": 94.66, "top5_std": 0.03, "top5_alt": 94.63}
    assert t6["MobileNet Efficient"] == {"top1": 71.90, "top5": 90.53}
    t4 = {r.label: r.paper for r in load_table(root, "followup/table4").rows}
    assert t4["cosine decay, 30/60/90, 20-epoch warm-up"] == {"top1": 76.99}
    assert t4["poly decay, 40/80, 20-epoch warm-up"] == {}  # not collected


def test_project_csvs_are_verbatim_copies():
    if not SHARED.is_dir():
        pytest.skip("the published CSVs are not beside this checkout")
    for p in SHARED.glob("*.csv"):
        assert (PAPER_NUMBERS / p.name).read_bytes() == p.read_bytes(), p.name


def test_faithful_followup_rows_use_coarse_labels_and_vertical_is_the_same_run():
    root = recipes_root()
    t5 = load_table(root, "followup/table5")
    rows = {r.label: r for r in t5.rows}
    horiz, vert = rows["Horiz. Spatial Mixup (top/bottom seam)"], rows["Vert. Spatial Mixup (as run: top/bottom seam)"]
    assert horiz.recipe_path == vert.recipe_path
    r = load_recipe(horiz.recipe_path)
    assert (r.data.fine_labels, r.mixup.kind, r.data.batch_size, r.epochs, r.mixup.min_lambda) == \
        (False, "stitch_height", 256, 200, 0.1)
    fine = load_table(root, "followup/table3-fine")
    from gluon_tricks.tables import row_recipes
    assert all(rec.data.fine_labels for row in fine.rows for rec in row_recipes(row, 1, 1.0))
    distill = [row for row in fine.rows if "distill" in str(row.recipe_path)][0]
    assert "fine.params" in row_recipes(distill, 1, 1.0)[0].distill.teacher


def tiny_table(tmp_path):
    (tmp_path / "t").mkdir()
    base = ('epochs = 1\n[data]\ndataset = "cifar10-mini"\nbatch_size = 32\ntrain_limit = 64\ntest_limit = 32\n'
            '[model]\nname = "cifar_resnet20_v1"\n')
    (tmp_path / "t" / "a.toml").write_text('name = "row-a"\n' + base)
    (tmp_path / "t" / "b.toml").write_text('name = "row-b"\n' + base + '[smoothing]\neps = 0.1\n')
    (tmp_path / "t" / "table.toml").write_text(
        'title = "tiny"\n[[rows]]\nlabel = "A"\nrecipe = "a.toml"\n'
        'paper = { csv = "followup_table3_refinements.csv", row = "Baseline" }\n'
        '[[rows]]\nlabel = "B"\nrecipe = "b.toml"\n')
    return load_table(tmp_path, "t")


def test_tiny_table_runs_resumes_and_renders(tmp_path, monkeypatch):
    table = tiny_table(tmp_path)
    runs = tmp_path / "runs"
    real_train = engine.train
    calls = []

    def flaky(recipe, out, **kw):
        calls.append(recipe.name)
        if recipe.name == "row-b" and calls.count("row-b") == 1:
            raise KeyboardInterrupt  # the machine goes away during row B
        return real_train(recipe, out, **kw)

    monkeypatch.setattr(engine, "train", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_table(table, runs_root=runs, progress=False)
    done_a = list(runs.glob("row-a-*/result.json"))
    assert len(done_a) == 1
    before = done_a[0].read_bytes()
    run_table(table, runs_root=runs, progress=False)
    assert calls == ["row-a", "row-b", "row-b"]  # A was not trained again
    assert done_a[0].read_bytes() == before
    run_table(table, runs_root=runs, progress=False)
    assert calls == ["row-a", "row-b", "row-b"]  # nothing left to train

    rows = collect(table, runs_root=runs)
    assert [r["runs"] for r in rows] == [1, 1]
    md = render(table, "md", runs_root=runs)
    assert "| A " in md and "74.92" in md and "not run" not in md
    parsed = list(csv.DictReader(io.StringIO(render(table, "csv", runs_root=runs))))
    assert [p["row"] for p in parsed] == ["A", "B"]
    assert float(parsed[0]["top1"]) == pytest.approx(rows[0]["top1"])
    assert float(parsed[0]["paper_top1"]) == 74.92
    latex = render(table, "latex", runs_root=runs)
    assert latex.startswith(r"\begin{table}") and r"\end{tabular}" in latex and latex.count(r"\\") >= 3
    # scaled epochs are other runs, marked as such
    scaled = render(table, "md", epochs_scale=2.0, runs_root=runs)
    assert "not run" in scaled and "epochs scaled by 2" in scaled


def test_table_cli_errors(capsys):
    assert main(["table", "no/such/table"]) == 2
    assert "no table 'no/such/table'; known tables:" in capsys.readouterr().err
    assert main(["table", "bot/table7", "--run"]) == 2
    assert "out of scope" in capsys.readouterr().err


def test_tables_listing(capsys, tmp_path):
    assert main(["tables", "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "followup/table3" in out and "0/5 rows run" in out and "bot/table8" in out and "out of scope" in out


def test_bad_paper_reference(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "table.toml").write_text(
        '[[rows]]\nlabel = "x"\nrecipe = "x.toml"\npaper = { csv = "followup_table3_refinements.csv", row = "nope" }\n')
    with pytest.raises(UserError, match="matches 0 rows"):
        load_table(tmp_path, "t")
