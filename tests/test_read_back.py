"""Files the tool reads back (result.json, metrics.jsonl, run.json, table.toml) are validated: a bad
one is named in one line and treated as missing, and a table row with fewer seeds than asked says
so in its cell (red team 2, causes 7, 10 and 11: probes 1.15-1.18, 2.10, 5.1-5.5, 5.9, 5.11, 5.12,
5.14, 5.15)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

import seams
from gluon_tricks.cli import main
from gluon_tricks.errors import UserError
from gluon_tricks.identity import content_hash
from gluon_tricks.recipe import load_recipe
from gluon_tricks.results import RunDir, find_result
from gluon_tricks.report import render
from gluon_tricks.tables import collect, list_tables, load_table, row_recipes

METRICS_ROW = {"top5": 50.0, "train_loss": 1.0, "lr": 0.1, "seconds": 1.0, "images_per_sec": 10.0}


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    """recipes/t: a two-row table of 3 seeds; runs/: nothing yet. Only these recipes and runs count."""
    root = tmp_path / "recipes"
    (root / "t").mkdir(parents=True)
    (root / "t" / "a.toml").write_text('name = "row-a"\nepochs = 2\n')
    (root / "t" / "b.toml").write_text('name = "row-b"\nepochs = 2\n[smoothing]\neps = 0.1\n')
    (root / "t" / "table.toml").write_text('title = "tiny"\nseeds = 3\n[[rows]]\nlabel = "A"\nrecipe = "a.toml"\n'
                                           '[[rows]]\nlabel = "B"\nrecipe = "b.toml"\n')
    monkeypatch.setenv("GLUON_TRICKS_RECIPES", str(root))
    monkeypatch.setenv("GLUON_TRICKS_RESULTS", "")
    return root


def finished_run(runs: Path, recipe, top1: float) -> Path:
    """A finished run directory as the engine leaves it (no checkpoints needed to be found)."""
    h = content_hash(recipe)
    d = runs / f"{recipe.name}-{h}"
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"tool": "gluon-tricks", "format": 1, "hash": h, "name": recipe.name}))
    (d / "recipe.toml").write_text("epochs = 2\n")
    (d / "result.json").write_text(json.dumps({
        "hash": h, "final_top1": top1, "final_top5": 50.0, "seconds_per_epoch": 1.0, "epochs": 2,
        "hardware": {"ctx": ["cpu(0)"], "machine": "x86_64", "cpus": 2}}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(dict(METRICS_ROW, epoch=e, top1=top1)) + "\n"
                                             for e in range(2)))
    return d


def fill(root: Path, runs: Path, tops: dict) -> dict:
    """Finished runs for the given {label: [top-1 per seed]}; returns {label: [run dirs]}."""
    table = load_table(root, "t")
    out = {}
    for row in table.rows:
        recipes = row_recipes(row, 3, 1.0)
        out[row.label] = [finished_run(runs, r, t) for r, t in zip(recipes, tops.get(row.label, []))]
    return out


def cell(text: str, label: str) -> str:
    return next(line.split("|")[2].strip() for line in text.splitlines() if line.startswith(f"| {label} "))


# -- cause 7: seeds ---------------------------------------------------------------------------------
def test_a_row_with_fewer_seeds_than_asked_says_so(table_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    dirs = fill(table_dir, runs, {"A": [10.0, 11.0, 12.0], "B": [20.0]})
    # probe 5.1: one seed's result.json cut to 100 bytes
    text = (dirs["A"][2] / "result.json").read_text()
    (dirs["A"][2] / "result.json").write_text(text[:100])
    out = render(load_table(table_dir, "t"), runs_root=runs)
    err = capsys.readouterr().err
    assert cell(out, "A") == f"10.50 ± {statistics.stdev([10.0, 11.0]):.2f} (2/3)"
    assert cell(out, "B") == "20.00 (1/3)"  # probe 5.2: one of three seeds
    assert "(k/3): only k seeds have results" in out
    assert f"A: 2 of 3 seeds have results; missing seed 2: {dirs['A'][2] / 'result.json'} is not valid JSON" in out
    assert "B: 1 of 3 seeds have results; missing seed 1: not run; seed 2: not run" in out
    assert f"warning: {dirs['A'][2] / 'result.json'} is not valid JSON" in err
    everything = fill(table_dir, tmp_path / "all", {"A": [1.0, 2.0, 3.0], "B": [1.0, 2.0, 3.0]})
    assert everything and cell(render(load_table(table_dir, "t"), runs_root=tmp_path / "all"), "A") == "2.00 ± 1.00"


# -- cause 11 (and 10: a result is its run's own) ------------------------------------------------------
@pytest.mark.parametrize("content,reason", [
    ('{"final_top1": NaN, "final_top5": 1.0, "seconds_per_epoch": Infinity}',
     "has no finite number for final_top1, seconds_per_epoch"),
    ("{}", "has no finite number for final_top1, final_top5, seconds_per_epoch"),
    ("[1, 2]", "is not a JSON object"),
])
def test_a_bad_result_is_named_and_shown_as_missing_by_table_plot_and_tables(table_dir, tmp_path, capsys,
                                                                                content, reason):
    # probes 5.3-5.5: tracebacks in table, plot and tables (statistics.stdev on NaN, KeyError, TypeError)
    runs = tmp_path / "runs"
    dirs = fill(table_dir, runs, {"A": [10.0, 11.0, 12.0]})
    (dirs["A"][1] / "result.json").write_text(content)
    assert main(["table", "t", "--runs", str(runs)]) == 0
    out, err = capsys.readouterr()
    assert cell(out, "A") == "11.00 ± 1.41 (2/3)"
    assert f"{dirs['A'][1] / 'result.json'} {reason}" in err
    assert main(["tables", "--runs", str(runs)]) == 0
    assert "1/2 rows run" in capsys.readouterr().out
    assert main(["plot", "t", "--runs", str(runs), "--out", str(tmp_path / "p")]) == 0


def test_a_result_copied_from_another_run_is_not_used(table_dir, tmp_path, capsys):
    # probe 5.11: the cosine row's result.json copied into the baseline's run directory showed as the baseline's
    runs = tmp_path / "runs"
    dirs = fill(table_dir, runs, {"A": [10.0], "B": [23.44]})
    (dirs["A"][0] / "result.json").write_bytes((dirs["B"][0] / "result.json").read_bytes())
    a_hash = json.loads((dirs["A"][0] / "run.json").read_text())["hash"]
    assert find_result(a_hash, runs) is None
    render(load_table(table_dir, "t"), runs_root=runs)
    assert "belongs to another run" in capsys.readouterr().err


def test_a_damaged_run_json_is_named(table_dir, tmp_path, capsys):
    # probe 5.12: run.json cut mid-object: "not run", then "choose another --out" from table --run
    runs = tmp_path / "runs"
    dirs = fill(table_dir, runs, {"A": [10.0]})
    run_json = dirs["A"][0] / "run.json"
    run_json.write_text(run_json.read_text()[:30])
    render(load_table(table_dir, "t"), runs_root=runs)
    assert f"{run_json} is damaged (not valid JSON)" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"run.json is damaged \(not valid JSON\).*restore the file"):
        RunDir(dirs["A"][0]).prepare("0123456789abcdef", "row-a", "epochs = 2\n", True, False)


@pytest.mark.parametrize("line", ['{"epoch": 1, "train_loss": 1.0}', "[1, 2]", '"text"'])
def test_metrics_lines_that_are_not_epoch_rows_are_skipped_with_a_warning(table_dir, tmp_path, capsys, line):
    # probes 5.14, 5.15: a metrics line without top1, or a list, made plot end in a traceback
    runs = tmp_path / "runs"
    dirs = fill(table_dir, runs, {"A": [10.0]})
    metrics = dirs["A"][0] / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + line + "\n")
    assert [r["epoch"] for r in RunDir(dirs["A"][0]).read_metrics()] == [0, 1]
    assert main(["plot", "t", "--runs", str(runs), "--out", str(tmp_path / "p")]) == 0
    assert f"warning: {metrics}: skipped 1 line(s) that are not epoch rows" in capsys.readouterr().err


@pytest.mark.parametrize("text,message", [
    ("rows = 5\n", "rows must be a list of [[rows]] tables, got 5"),
    ('seeds = "x"\n', "seeds must be a whole number >= 1, got 'x'"),
    ("seeds = 0\n", "seeds must be a whole number >= 1, got 0"),
    ('[[rows]]\nlabel = "A"\nrecipe = "a.toml"\npaper = "followup.csv"\n', "row 1 paper must be { csv = "),
    ('[[rows]]\nlabel = 3\nrecipe = "a.toml"\n', "row 1 label must be a string, got 3"),
    ('set = "data.fine_labels=true"\n', 'set must be a list of "key=value" strings'),
])
def test_a_malformed_table_is_one_line_and_does_not_break_the_others(table_dir, capsys, text, message):
    # probes 1.15-1.18: tracebacks in table and tables (every table's listing broken), or nothing trained
    (table_dir / "bad").mkdir()
    (table_dir / "bad" / "a.toml").write_text("epochs = 1\n")
    (table_dir / "bad" / "table.toml").write_text('title = "bad"\n' + text)
    with pytest.raises(UserError) as e:
        load_table(table_dir, "bad")
    assert str(e.value).startswith(str(table_dir / "bad" / "table.toml")) and message in str(e.value)
    assert main(["table", "bad"]) == 2
    assert message in capsys.readouterr().err
    assert main(["tables"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("bad ") and message in out[0] and out[1].startswith("t ")


# -- cause 11: no result from no metrics; cause 10: each resume segment's [system] --------------------
def test_no_result_is_written_from_lost_metrics(tmp_path, monkeypatch):
    from gluon_tricks.engine import train
    from gluon_tricks.recipe import recipe_from_dict

    # probe 5.9: result.json and metrics.jsonl deleted, checkpoints kept: the resume wrote final_top1 NaN
    seams.linear_zoo(monkeypatch)
    d = seams.tiny(epochs=2, images=32)
    run = tmp_path / "run"
    train(recipe_from_dict(d), run, progress=False)
    (run / "result.json").unlink()
    (run / "metrics.jsonl").unlink()
    with pytest.raises(UserError, match=r"metrics.jsonl has no row for the last epoch \(2\)"):
        train(recipe_from_dict(d), run, resume=True, progress=False)
    assert not (run / "result.json").exists()


def test_a_resume_with_other_system_settings_is_recorded_per_segment(tmp_path, monkeypatch):
    from gluon_tricks._compat import tomllib
    from gluon_tricks.engine import train
    from gluon_tricks.errors import Interrupted
    from gluon_tricks.recipe import recipe_from_dict

    # probe 2.10: resumed with another device_batch, recipe.toml was rewritten as if the whole run used it.
    # One device in passes of 4, then two devices of 4 each: the same BatchNorm group of 4, so the
    # same run (another group would be another run's identity: tests/test_devices.py)
    seams.linear_zoo(monkeypatch)
    first = seams.tiny(epochs=2, images=32, batch=8, system={"ctx": "cpu", "device_batch": 4})
    second = seams.tiny(epochs=2, images=32, batch=8, system={"ctx": "cpu:0,cpu:1"})
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(recipe_from_dict(first), run, progress=False, max_steps=5)  # epoch 1 done, 1 step into epoch 2
    result = train(recipe_from_dict(second), run, resume=True, progress=False)
    recorded = tomllib.loads((run / "recipe.toml").read_text())
    assert recorded["system"]["device_batch"] == 4  # what the run started with
    segments = json.loads((run / "result.json").read_text())["segments"]
    assert segments == result["segments"]
    assert [(s["from_epoch"], s["from_step"], s["system"]["device_batch"]) for s in segments] == [(0, 0, 4), (1, 1, 0)]
    assert segments[1]["devices"] == ["cpu(0)", "cpu(1)"]


def test_a_result_from_other_versions_is_marked_beside_its_row(table_dir, tmp_path):
    # probe 5.10: result.json edited to code_revision "0badc0d+dirty" and mxnet 1.5.0 printed as current
    from importlib import metadata

    runs = tmp_path / "runs"
    dirs = fill(table_dir, runs, {"A": [10.0], "B": [23.44]})
    path = dirs["A"][0] / "result.json"
    result = json.loads(path.read_text())
    result["versions"] = {**result.get("versions", {}), "mxnet": "1.5.0", "code_revision": "0badc0d+dirty"}
    path.write_text(json.dumps(result))
    text = render(load_table(table_dir, "t"), runs_root=runs)
    assert f"mxnet 1.5.0 (installed: {metadata.version('mxnet')})" in text
    assert "code 0badc0d+dirty (uncommitted changes)" in text
    assert text.count("trained with") == 1  # row B, trained here, is not marked
