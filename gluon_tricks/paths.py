"""Where things live: MXNet's data directory, the user's data directory, the recipes, the runs, the committed results,
and how many cores this machine has. Each is read from the environment here and nowhere else.

The ground floor beside errors.py: it imports nothing from the package.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def mxnet_home() -> Path:
    """MXNet's data directory: $MXNET_HOME (with `~` expanded; empty counts as unset), else
    ~/.mxnet, where GluonCV keeps datasets and model weights."""
    return Path(os.environ.get("MXNET_HOME") or Path.home() / ".mxnet").expanduser()


def data_dir() -> Path | None:
    """The data directory a user or CI names with $GLUON_TRICKS_DATA (holding cifar10-mini/,
    cifar100-mini/, pretrained/: third-party files the project does not ship), or None."""
    value = os.environ.get("GLUON_TRICKS_DATA")
    return Path(value).expanduser() if value else None


def recipes_root() -> Path:
    """The shipped recipes, or $GLUON_TRICKS_RECIPES."""
    env = os.environ.get("GLUON_TRICKS_RECIPES")
    return Path(env) if env else PROJECT / "recipes"


def find_recipe(text: str) -> Path:
    """A path as given, or a name relative to recipes/ (with or without .toml)."""
    p = Path(text)
    try:
        if p.is_file():
            return p
        for candidate in (recipes_root() / text, recipes_root() / f"{text}.toml"):
            if candidate.is_file():
                return candidate
    except (OSError, ValueError):  # a name too long for the filesystem, a NUL byte
        pass
    return p  # load_recipe reports it as missing or unreadable


def runs_root() -> Path:
    """Where runs are trained into: $GLUON_TRICKS_RUNS, else ./runs."""
    return Path(os.environ.get("GLUON_TRICKS_RUNS", "runs"))


def committed_results_root() -> Path | None:
    """Finished runs committed with the project (run.json, recipe.toml, metrics.jsonl,
    result.json; no checkpoints), searched after the runs root so a fresh clone prints them.
    $GLUON_TRICKS_RESULTS names another directory; set it empty to ignore them (e.g. to retrain)."""
    env = os.environ.get("GLUON_TRICKS_RESULTS")
    if env is not None:
        return Path(env) if env else None
    return PROJECT / "results"


def cores() -> int:
    """The machine's logical cores (os.cpu_count() may not know: then 1)."""
    return os.cpu_count() or 1
