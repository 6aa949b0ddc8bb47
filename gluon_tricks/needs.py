"""What a recipe needs on this machine that training does not fetch itself, named with how to
get it: data folders and records, teacher .params files, zoo weights. `doctor` reports it per
table; `table --run` refuses a table whose pending runs lack any of it (missing_inputs).
"""
from __future__ import annotations

from pathlib import Path

from gluon_tricks.paths import mxnet_home


def data_missing(spec) -> tuple[list[str], str]:
    """(missing files, how to get them) for a recipe's data section."""
    from gluon_tricks.data.cifar import FORMAT_OF, MINI_RECORDS, _find_files, default_root, mini_present, mini_roots

    if spec.dataset in MINI_RECORDS:
        roots = [Path(spec.root)] if spec.root else mini_roots(spec.dataset)
        if any(mini_present(r, spec.dataset) for r in roots):
            return [], ""
        return [f"{roots[-1]}/ ({spec.dataset})"], \
            "cut from the official archive on the first run (needs internet), or set GLUON_TRICKS_DATA (README: Data)"
    if spec.dataset in FORMAT_OF:  # cifar10, cifar100
        root = Path(spec.root) if spec.root else default_root(spec.dataset)
        ok = all(_find_files(root, FORMAT_OF[spec.dataset], train) for train in (True, False))
        return ([] if ok else [f"{root}/ ({spec.dataset})"]), "downloaded on the first run (needs internet)"
    root = Path(spec.root) if spec.root else mxnet_home() / "datasets" / "imagenet"
    if spec.dataset == "recordio":
        need = [n for n in ("train.rec", "train.idx", "val.rec", "val.idx") if not (root / n).is_file()]
        return ([f"{root}/{{{','.join(need)}}}"] if need else []), \
            f"gluon-tricks prepare IMAGES/train {root}/train (and val)"
    need = [root / "train", root / "val"]
    return [f"{p}/" for p in need if not p.is_dir()], "class folders train/ and val/ (docs/imagenet.md)"


def teacher_missing(spec) -> tuple[list[str], str]:
    from gluon_tricks.errors import UserError
    from gluon_tricks.recipe import parse_teacher

    if not spec.teacher:
        return [], ""
    try:
        source = parse_teacher(spec.teacher)
    except UserError as e:
        return [f"{spec.teacher} ({e})"], ""
    if source.path is not None:
        how = (f"train {spec.teacher_recipe} and export its run there (gluon-tricks export)" if spec.teacher_recipe
               else "teacher/train_teacher.sh (docs/reproduce.md)")
        return ([] if source.path.is_file() else [str(source.path)]), how
    from gluon_tricks.models import pretrained_copy, zoo_weights_file

    try:
        if pretrained_copy(spec.teacher) is not None:
            return [], ""  # the data directory's copy of the same weights
        expected = zoo_weights_file(source.zoo_name, source.tag)
    except UserError as e:
        return [f"{spec.teacher} ({e})"], ""
    return ([] if expected.is_file() else [str(expected)]), "GluonCV downloads it on first use (needs internet)"


def missing_inputs(recipes) -> list[str]:
    """What the recipes need that is neither here nor fetched on first use: teacher .params files,
    ImageNet folders and records; one "what -> how to get it" each, every recipe's at once."""
    from gluon_tricks.recipe import parse_teacher

    out = []
    for recipe in recipes:
        needs = []
        if recipe.distill.teacher and parse_teacher(recipe.distill.teacher).path is not None:
            needs.append(teacher_missing(recipe.distill))
        if recipe.data.dataset in ("recordio", "imagefolder"):
            needs.append(data_missing(recipe.data))
        for missing, how in needs:
            out += [line for line in (f"{m} -> {how}" if how else m for m in missing) if line not in out]
    return out
