"""Tables: shipped recipes resolve, paper numbers equal the published CSVs, a tiny table runs,
resumes without retraining, and renders md, csv and latex."""
import csv
import io
from pathlib import Path

import pytest

import gluon_tricks.engine as engine
from gluon_tricks.cli import main
from seams import recipes_root
from gluon_tricks.errors import UserError
from gluon_tricks.recipe import load_recipe
from gluon_tricks.report import render
from gluon_tricks.tables import PAPER_NUMBERS, collect, load_table, run_table, table_names

SHARED = Path(__file__).resolve().parents[2] / "shared" / "papers"


def test_every_shipped_recipe_parses():
    root = recipes_root()
    files = [p for p in root.rglob("*.toml") if p.name != "table.toml"]
    files += list((root.parent / "teacher").glob("*.toml"))
    assert len(files) > 50
    for p in files:
        load_recipe(p)


# One row of every table with paper numbers, typed from the published sources (the papers'
# tables as transcribed in ../shared/papers; the fine-label anchors from osmr/imgclsmob and
# chenyaofo, see paper_numbers/README.md): pins that each row reads its own row and columns.
PUBLISHED = {
    "bot/table1": ("SE-ResNet-50", {"top1": 76.71, "top5": 93.38}),
    "bot/table2": ("Inception-V3", {"top1": 77.32, "top5": 93.43}),
    "bot/table3": ("Inception-V3 efficient (BS 1024, FP16)", {"top1": 77.50, "top5": 93.60}),
    "bot/table4": ("batch 1024: Linear scaling", {"top1": 75.17, "top5": 92.54}),
    "bot/table5": ("ResNet-50-C", {"top1": 76.87, "top5": 93.48}),
    "bot/table6": ("Inception-V3 + distill w/o mixup", {"top1": 78.26, "top5": 94.01}),
    "bot/table7": ("ResNet-50-D Best", {"top1": 56.70, "top5": 87.33}),
    "bot/table8": ("+ smooth", {"top1": 78.34}),
    "bot/table9": ("+ smooth", {"top1": 78.34}),
    "followup/other": ("cosine + 20-epoch warm-up + label smoothing", {"top1": 78.44, "top5": 94.06}),
    "followup/other-fine": ("teacher: CIFAR ResNeXt29 16x64d", {"top1": 83.07}),
    "followup/table1": ("CIFAR ResNet56 v1 (CIFAR-100)", {"top1": 74.92, "top5": 95.66}),
    "followup/table1-fine": ("CIFAR ResNet56 v1 (CIFAR-100)", {"top1": "72.63-75.12"}),
    "followup/table2": ("Nadam", {"top1": 73.55}),
    "followup/table2-fine": ("NAG (baseline)", {"top1": "72.63-75.12"}),
    "followup/table3": ("+ label smoothing", {"top1": 78.38, "top5": 94.70}),
    "followup/table3-fine": ("Baseline", {"top1": "72.63-75.12"}),
    "followup/table4": ("poly decay, 30/60/90, 20-epoch warm-up", {"top1": 75.88}),
    "followup/table5": ("Interp. Mixup w/ Distill.", {"top1": 80.34, "top5": 95.75}),
    "food101/table8": ("Label Smoothing", {"top1": 91.05, "top1_std": 0.27}),
}


def test_every_table_resolves_and_one_published_number_per_table():
    root = recipes_root()
    names = table_names(root)
    for expected in ["demo", "followup/table1", "followup/table2", "followup/table3", "followup/table4",
                     "followup/table5", "followup/other", "followup/table3-fine", "bot/table2", "bot/table3",
                     "bot/table4", "bot/table5", "bot/table6", "bot/table7", "bot/table8", "bot/table9",
                     "food101/table8"]:
        assert expected in names
    with_numbers = []
    for name in names:
        table = load_table(root, name)
        collect(table)
        if any(row.paper for row in table.rows):
            with_numbers.append(name)
    assert sorted(with_numbers) == sorted(PUBLISHED)
    for name, (label, published) in PUBLISHED.items():
        papers = {row.label: row.paper for row in load_table(root, name).rows}
        assert papers[label] == published, name


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


# SHA-256 of each published table's CSV as transcribed in ../shared/papers (2026-11-28): the
# project's copies must stay verbatim, in any clone (followup_fine_anchors.csv is the project's own).
PUBLISHED_CSV_SHA256 = {
    "bot_table1_comparison.csv": "7851aa88364f44a603adf08e1df4170e84ada021daab871dd2bc31d7cf8fe54f",
    "bot_table2_baselines.csv": "cd0574b088c9232f1a800b8d7e5191a62742bffa9ef6932522a49a76ca22f948",
    "bot_table3_efficient.csv": "9adf47d24b8651dcc69bc01173298d82300c7c638630f672d33ce4a5cfb8d3f6",
    "bot_table4_efficient_breakdown.csv": "a868f49abf4fd6cd1193e7b5d92f2da4a913921d3907bcde8c4bbca8e786ddec",
    "bot_table5_tweaks.csv": "2cdea7dbd498ab532dc361b41086c17181938b06228d47e1db741eeba327c780",
    "bot_table6_refinements.csv": "a3158dbf333a386a02f059371cd7dd4e598e7237af466993d8ccd545fe865089",
    "bot_table7_places365.csv": "3daacf40c8f0049187c3fc946e3dd598d2211c7bfd578b222c72c68473f78ce7",
    "bot_table8_faster_rcnn_voc.csv": "9f405fcfc7fb26fddda7ea21fbe0de0d0aadbc5d0eedaa36aa9d160a767ae149",
    "bot_table9_fcn_ade20k.csv": "c64a6e32141d30845ff432ffbf55e52422f7aa86afe44230d24cafdb1584888c",
    "followup_other_rows.csv": "4c03b9d3ffccb82b34b91c7a03f4b474d8410e679d2597b79b3b592dc304580b",
    "followup_table1_baselines.csv": "c042a92d0a54ae555d3821554f66cc3c1c9a7405ed5839110eec91ba7d15198d",
    "followup_table2_optimizers.csv": "26322259dff495303942cd163235b71bee945551c7be271d8361a6734a6a31df",
    "followup_table3_refinements.csv": "b85935948eb00491eba18393b39ce4fc4b1370c3789eb66314e90e000c973b9c",
    "followup_table4_schedules.csv": "6c3daf86f36c992d0c34a0f233f078f34bde48fdad95fae0414e573d96a01e6c",
    "followup_table5_spatial_mixup.csv": "8de2f77b7804563990b399b929ff7a503f1e873953c24507bf75745a1b873361",
    "food101_tutorial_table8.csv": "07aa4190a334e47258a06bfca763a2d5333cbad56e11d45b3ced9488691201c5",
}


def test_project_csvs_are_verbatim_copies():
    import hashlib

    for name, digest in PUBLISHED_CSV_SHA256.items():
        assert hashlib.sha256((PAPER_NUMBERS / name).read_bytes()).hexdigest() == digest, name
    if SHARED.is_dir():  # in the project's workspace: nothing published is missing from the list
        assert {p.name for p in SHARED.glob("*.csv")} == set(PUBLISHED_CSV_SHA256)


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
        run_table(table, runs_root=runs, progress=False, in_process=True)
    done_a = list(runs.glob("row-a-*/result.json"))
    assert len(done_a) == 1
    before = done_a[0].read_bytes()
    run_table(table, runs_root=runs, progress=False, in_process=True)
    assert calls == ["row-a", "row-b", "row-b"]  # A was not trained again
    assert done_a[0].read_bytes() == before
    run_table(table, runs_root=runs, progress=False, in_process=True)
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


def test_rows_print_their_notes_provenance_and_shared_results(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.toml").write_text('name = "a"\n[schedule]\nkind = "cosine"\ndecay_epochs = [30, 60, 90]\n')
    (tmp_path / "t" / "b.toml").write_text('name = "b"\n[schedule]\nkind = "cosine"\ndecay_epochs = [40, 80]\n')
    (tmp_path / "t" / "table.toml").write_text(
        'title = "tiny"\nprovenance = "paper text (Sec. 9)"\n'
        '[[rows]]\nlabel = "other paper"\nlisted = "Someone et al. 2017"\n'
        'paper = { csv = "bot_table1_comparison.csv", row = "ResNeXt-50" }\n'
        '[[rows]]\nlabel = "A"\nrecipe = "a.toml"\nnote = "first run"\n'
        'paper = { csv = "followup_table4_schedules.csv", match = {schedule = "cosine", decay_epochs = "30,60,90", '
        'warmup_epochs = "20"}, top5 = "" }\n'
        '[[rows]]\nlabel = "B"\nrecipe = "b.toml"\nprovenance = "chosen: a reason"\n'
        'paper = { csv = "followup_table4_schedules.csv", match = {schedule = "cosine", decay_epochs = "40,80", '
        'warmup_epochs = "20"}, top5 = "" }\n')
    table = load_table(tmp_path, "t")
    md = render(table, "md", runs_root=tmp_path / "runs")
    assert "| other paper" in md and "listed" in md and "77.80" in md
    assert "- other paper: listed, not run: Someone et al. 2017" in md
    assert "- A: first run; settings: paper text (Sec. 9)" in md
    assert "- B: settings: chosen: a reason" in md
    # cosine ignores decay epochs: one training, and both numbers the paper printed for it (its Table IV)
    assert '"A" and "B" are one training' in md and "76.99 and 76.54" in md
    parsed = list(csv.DictReader(io.StringIO(render(table, "csv", runs_root=tmp_path / "runs"))))
    assert [(p["note"], p["provenance"]) for p in parsed] == [
        ("listed: Someone et al. 2017", ""), ("first run", "paper text (Sec. 9)"), ("", "chosen: a reason")]
    latex = render(table, "latex", runs_root=tmp_path / "runs")
    assert "settings: chosen: a reason" in latex and latex.index("chosen: a reason") < latex.index(r"\end{table}")
    with pytest.raises(UserError, match="either run"):
        (tmp_path / "t" / "table.toml").write_text('[[rows]]\nlabel = "x"\nrecipe = "a.toml"\nlisted = "why"\n')
        load_table(tmp_path, "t")


def test_every_shipped_row_says_where_its_settings_come_from():
    root = recipes_root()
    for name in table_names(root):
        table = load_table(root, name)
        if table.out_of_scope:
            continue
        for row in table.rows:
            if row.listed:
                continue
            p = row.provenance
            assert p.startswith(("code: ", "paper text", "tutorial text", "chosen: ")), (name, row.label, p)
            assert "\n" not in p and len(p) <= 200, (name, row.label)


def test_bot_table1_tricks_row_is_table6s_last_resnet50d_row():
    from gluon_tricks.identity import content_hash
    from gluon_tricks.tables import row_recipes

    root = recipes_root()
    t1 = load_table(root, "bot/table1")
    run = [row for row in t1.rows if not row.listed]
    assert len(run) == 1 and run[0].paper == {"top1": 79.29, "top5": 94.63}
    assert {row.label for row in t1.rows if row.listed} == {"ResNet-50", "ResNeXt-50", "SE-ResNet-50",
                                                             "SE-ResNeXt-50", "DenseNet-201"}
    t6 = load_table(root, "bot/table6")
    last_d = [row for row in t6.rows if row.label.startswith("ResNet-50-D")][-1]
    assert content_hash(row_recipes(run[0], 1, 1.0)[0]) == content_hash(row_recipes(last_d, 1, 1.0)[0])


def test_run_table_prints_train_warnings_for_the_rows_it_will_train(tmp_path, monkeypatch, capsys):
    """A table shortened with --epochs-scale warns, per row, what `train` would warn: the demo
    at 1 epoch never leaves the baseline's decays or the cosine row's 1-epoch warm-up. At its
    own length it warns nothing, and rows with results are not trained so not warned about."""
    import gluon_tricks.tables as tables

    trained = []
    monkeypatch.setattr(tables, "train_in_process", lambda name, pending, progress: trained.extend(pending))
    table = load_table(recipes_root(), "demo")
    run_table(table, seeds=2, epochs_scale=0.1, runs_root=tmp_path, progress=False, in_process=True)
    err = capsys.readouterr().err.splitlines()
    assert len(trained) == 2 * len(table.rows) and trained[0].recipe.epochs == 1
    assert f"gluon-tricks: warning: Baseline (step decay): schedule.decay_epochs [1, 2] fall at or after " \
           f"the end of the 1-epoch run (never reached)" in err
    assert "gluon-tricks: warning: + cosine decay, warm-up: schedule.warmup_epochs = 1 covers the whole " \
           "1-epoch run: the rate never leaves the warm-up" in err
    assert len(err) == len(table.rows)  # once per row, not once per seed

    trained.clear()
    run_table(table, runs_root=tmp_path, progress=False, in_process=True)
    assert trained and capsys.readouterr().err == ""


def test_a_provenance_every_row_shares_is_said_once(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.toml").write_text('name = "a"\n')
    (tmp_path / "t" / "b.toml").write_text('name = "b"\nseed = 5\n')
    (tmp_path / "t" / "table.toml").write_text(
        'title = "tiny"\nprovenance = "chosen: one reason"\n'
        '[[rows]]\nlabel = "A"\nrecipe = "a.toml"\n[[rows]]\nlabel = "B"\nrecipe = "b.toml"\nnote = "its own note"\n')
    md = render(load_table(tmp_path, "t"), "md", runs_root=tmp_path / "runs")
    assert md.count("chosen: one reason") == 1
    assert md.split("Rows: notes and where their settings come from\n\n")[1].splitlines() == [
        "- every row: settings: chosen: one reason", "- B: its own note"]


def test_a_table_without_paper_numbers_has_no_paper_columns(tmp_path):
    """The demo prints no paper numbers, so no empty paper and difference columns; a table with
    them keeps them."""
    def head(name):
        md = render(load_table(recipes_root(), name), "md", runs_root=tmp_path)
        return [c.strip() for c in next(l for l in md.splitlines() if l.startswith("| row")).split("|")[1:-1]]

    assert head("demo") == ["row", "top-1", "top-5", "s/epoch"]
    assert head("followup/table3") == ["row", "top-1", "paper top-1", "Δ top-1", "top-5", "paper top-5", "Δ top-5",
                                       "s/epoch"]
