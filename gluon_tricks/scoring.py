"""`gluon-tricks eval`: top-1 / top-5 of a trained run, a .params file or zoo weights on a
recipe's test set, measured before GPU-days are spent on it (a teacher, above all).

A source is one of
  a run directory        its recipe's network with the newest valid checkpoint; its recipe's data
  a .params file         with `model` (a zoo architecture), loaded as a distillation teacher is
  a zoo name or name:tag GluonCV's published weights (downloaded into $MXNET_HOME/models)
and the test set is the `data` recipe's (a run's own by default), with its mean/std: pass
`--set data.mean=[...]` for a network trained with other statistics.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from gluon_tricks.errors import UserError, shown


def score(source: str, model: str = "", data: str = "", overrides=(), ctx: str = "auto") -> dict:
    """{"top1", "top5", "images", "source", "data", "dataset"} of `source` on `data`'s test set."""
    from gluon_tricks.devices import HostReads, parse_ctx
    from gluon_tricks.engine import evaluate
    from gluon_tricks.models import build_model, load_teacher
    from gluon_tricks.paths import find_recipe
    from gluon_tricks.recipe import DistillSpec, load_recipe, recipe_from_dict, with_changes
    from gluon_tricks.results import RunDir
    from gluon_tricks.data import make_streams

    run = RunDir(Path(source))
    is_run = Path(source).is_dir()
    if is_run:
        if run.run_info() is None:
            raise UserError(f"{shown(source)} is a directory but not a gluon-tricks run (no run.json); give a run "
                            "directory, a .params file with --model, or a zoo name")
        trained = load_recipe(run.path / "recipe.toml")
        recipe = load_recipe(find_recipe(data), list(overrides)) if data else with_changes(trained, list(overrides))
    else:
        if not data:
            raise UserError(f"eval {shown(source)}: name the test set with --data RECIPE "
                            "(e.g. --data demo/baseline for cifar10-mini)")
        recipe = load_recipe(find_recipe(data), list(overrides))
    # The test set only: no teacher is loaded for it, whatever the data recipe distils from.
    recipe = recipe_from_dict(dict(recipe.to_dict(), distill=dataclasses.asdict(DistillSpec())), recipe.name)
    contexts = parse_ctx(ctx)
    streams = make_streams(recipe, contexts=contexts)
    test, classes = streams.test, streams.classes
    if is_run:
        newest = run.latest_checkpoint()
        if newest is None:
            raise UserError(f"{shown(source)} has no valid checkpoint to evaluate; train it first")
        net = build_model(trained, classes, contexts)
        net.load_parameters(str(newest.params), ctx=contexts)
        dtype = trained.model.dtype
    else:
        if (source.endswith(".params") or Path(source).is_file()) and not model:
            raise UserError(f"{shown(source)} is a .params file: give its architecture with --model, "
                            "e.g. --model cifar_resnet20_v1")
        net = load_teacher(DistillSpec(teacher=source, teacher_model=model), classes, contexts)
        dtype = "float32"
    top1, top5 = evaluate(net, test, contexts, dtype, HostReads())
    return {"source": str(source), "model": model or (trained.model.name if is_run else source.split(":")[0]),
            "data": recipe.name, "dataset": recipe.data.dataset, "images": len(test),
            "top1": top1, "top5": top5, "mean": recipe.data.mean, "std": recipe.data.std}
