"""The proxy tables (recipes/proxy/): the follow-up's rows at proxy scale, coarse beside fine,
and the committed results a fresh clone prints."""
import json
from pathlib import Path

import pytest

from gluon_tricks._compat import tomllib
from seams import recipes_root
from gluon_tricks.identity import content_hash
from gluon_tricks.recipe import load_recipe
from gluon_tricks.results import find_result
from gluon_tricks.tables import load_table, row_recipes

PROXY = recipes_root() / "proxy"
ROWS = ["baseline", "cosine", "smoothing", "mixup", "distill", "stitch-height", "stitch-width", "teacher",
        "teacher-fine"]
# What "scale only" may change: the network, the data set, epoch counts and the batch (and the
# distillation teacher, which is the scaled teacher recipe's export, and that recipe).
SCALE_KEYS = {"epochs", "data.dataset", "data.batch_size", "model.name", "schedule.warmup_epochs",
              "schedule.decay_epochs", "distill.teacher", "distill.teacher_model", "distill.teacher_recipe"}


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("name", ROWS)
def test_proxy_rows_change_only_the_scale_of_the_recipe_they_extend(name):
    path = PROXY / f"{name}.toml"
    with open(path, "rb") as f:
        parent_path = (path.parent / tomllib.load(f)["extends"]).resolve()
    proxy, full = load_recipe(path), load_recipe(parent_path)
    a, b = flat(proxy.to_dict()), flat(full.to_dict())
    changed = {k for k in a if a[k] != b[k]} - {"name", "description"}
    assert changed <= SCALE_KEYS, changed - SCALE_KEYS
    assert proxy.data.dataset == "cifar100-mini"
    assert proxy.epochs == round(full.epochs / 30)  # 120 -> 4, 200 -> 7
    assert proxy.data.batch_size * 4 == full.data.batch_size
    if full.schedule.warmup_epochs:
        assert proxy.schedule.warmup_epochs == 1
    # the proxy keeps the follow-up's label set and head: coarse labels into 100 outputs
    assert proxy.data.fine_labels == full.data.fine_labels and proxy.model.classes == full.model.classes


def test_every_row_runs_coarse_and_fine_with_the_same_recipe_and_3_seeds():
    table = load_table(recipes_root(), "proxy")
    assert table.seeds >= 3
    seen = {}
    for row in table.rows:
        (recipe,) = row_recipes(row, 1, 1.0)
        seen.setdefault(row.recipe_path.name, {})[recipe.data.fine_labels] = recipe
    assert len(seen) == 7
    for name, pair in seen.items():
        coarse, fine = pair[False], pair[True]
        assert coarse.model.classes == 100  # the original's 100-way head on 20 coarse labels
        a, b = flat(coarse.to_dict()), flat(fine.to_dict())
        assert {k for k in a if a[k] != b[k]} <= {"data.fine_labels", "distill.teacher", "distill.teacher_recipe"}, name
        if coarse.distill.teacher:
            assert "coarse" in coarse.distill.teacher and "fine" in fine.distill.teacher
            assert (coarse.distill.teacher_recipe, fine.distill.teacher_recipe) == (
                "recipes/proxy/teacher.toml", "recipes/proxy/teacher-fine.toml")
    halves = set()
    for half in ("proxy/coarse", "proxy/fine"):
        t = load_table(recipes_root(), half)
        halves |= {content_hash(r) for row in t.rows for r in row_recipes(row, t.seeds, 1.0)}
    assert halves == {content_hash(r) for row in table.rows for r in row_recipes(row, table.seeds, 1.0)}


def _fake_run(d: Path, h: str, top1: float):
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"tool": "gluon-tricks", "format": 1, "hash": h, "name": "x"}))
    (d / "result.json").write_text(json.dumps({"hash": h, "final_top1": top1, "final_top5": 50.0, "epochs": 1,
                                               "seconds_per_epoch": 1.0, "hardware": {"ctx": ["cpu(0)"]}}))


def test_committed_results_are_found_after_the_runs_root(tmp_path, monkeypatch):
    committed, runs = tmp_path / "results", tmp_path / "runs"
    monkeypatch.setenv("GLUON_TRICKS_RESULTS", str(committed))
    _fake_run(committed / "a-0123456789abcdef", "0123456789abcdef", 1.0)
    assert find_result("0123456789abcdef", runs)[1]["final_top1"] == 1.0  # no runs root yet
    _fake_run(runs / "a-0123456789abcdef", "0123456789abcdef", 2.0)
    assert find_result("0123456789abcdef", runs)[1]["final_top1"] == 2.0  # the runs root wins
    monkeypatch.setenv("GLUON_TRICKS_RESULTS", "")
    assert find_result("0123456789abcdef", tmp_path / "elsewhere") is None  # committed ones ignored


def test_a_fresh_clone_prints_the_committed_results(tmp_path, monkeypatch, capsys):
    """`gluon-tricks table proxy` with an empty runs root prints what results/ holds, read here
    straight from its result.json files, for every row that has them (the baseline at least)."""
    import statistics

    from gluon_tricks.cli import main

    monkeypatch.delenv("GLUON_TRICKS_RESULTS", raising=False)
    committed = Path(__file__).resolve().parent.parent / "results"
    by_hash = {}
    for d in committed.iterdir():
        info = json.loads((d / "run.json").read_text())
        by_hash[info["hash"]] = json.loads((d / "result.json").read_text())["final_top1"]
        assert not (d / "checkpoints").exists(), d  # records only, no weights
    assert main(["table", "proxy", "--runs", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    table = load_table(recipes_root(), "proxy")
    printed = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.splitlines()
               if line.startswith("| ") and "---" not in line}
    for row in table.rows:
        values = [by_hash[h] for h in (content_hash(r) for r in row_recipes(row, table.seeds, 1.0)) if h in by_hash]
        if row.label.startswith("Baseline"):
            assert values, f"no committed result for {row.label}"
        if not values:
            assert printed[row.label] == "not run"
        elif len(values) == 1:
            assert printed[row.label] == f"{values[0]:.2f}"
        else:
            assert printed[row.label] == f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
