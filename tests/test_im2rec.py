"""RecordIO files made by MXNet's own tools/im2rec.py (what GluonCV's ImageNet guide makes),
which come without a classes list: they train as they are. The files are made here by the
im2rec.py that ships in the installed MXNet wheel."""
import shutil
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from gluon_tricks.paths import recipes_root
from gluon_tricks.data import make_streams
from gluon_tricks.engine import train
from gluon_tricks.errors import UserError
from gluon_tricks.recipe import load_recipe, recipe_from_dict
from gluon_tricks.tables import load_table, row_recipes, table_names
from test_imagenet import make_folder

IM2REC = Path(mx.__file__).parent / "tools" / "im2rec.py"


def im2rec(images: Path, prefix: Path):
    """GluonCV's ImageNet guide, shrunk: a .lst of the class folders, then .rec/.idx from it."""
    for extra in (["--list"], ["--resize", "48", "--num-thread", "1"]):
        subprocess.run([sys.executable, str(IM2REC), str(prefix), str(images), "--recursive", *extra],
                       check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def im2rec_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("im2rec")
    make_folder(base / "images" / "train", per_class=6, corrupt=False)
    make_folder(base / "images" / "val", per_class=2, corrupt=False)
    root = base / "rec"
    root.mkdir()
    for part in ("train", "val"):
        im2rec(base / "images" / part, root / part)
    assert sorted(p.name for p in root.iterdir()) == ["train.idx", "train.lst", "train.rec",
                                                      "val.idx", "val.lst", "val.rec"]
    return root


def copy_of(root, tmp_path, without=()):
    out = tmp_path / "rec"
    out.mkdir()
    for f in root.iterdir():
        if f.name not in without:
            shutil.copy(f, out / f.name)
    return out


def recipe(root, **model):
    return recipe_from_dict({"epochs": 1, "name": "im2rec",
                             "data": {"dataset": "recordio", "root": str(root), "augment": "bot", "image_size": 32,
                                      "batch_size": 6},
                             "model": dict({"name": "resnet18_v1b"}, **model),
                             "system": {"ctx": "cpu", "log_interval": 1}})


def test_im2rec_files_train_without_a_classes_file(im2rec_root, tmp_path):
    result = train(recipe(im2rec_root), tmp_path / "run", progress=False)
    assert result["train_images"] == 18 and np.isfinite(result["final_top1"])
    net = mx.nd.load(str(sorted((tmp_path / "run").rglob("net.params"))[-1]))
    assert net["fc.weight"].shape[0] == 3  # three class folders -> labels 0, 1, 2


def test_classes_come_from_the_labels_the_records_carry(im2rec_root, tmp_path):
    assert make_streams(recipe(im2rec_root)).classes == 3  # .lst present: checked against the records
    no_lst = copy_of(im2rec_root, tmp_path, without=("train.lst",))
    assert make_streams(recipe(no_lst)).classes == 3  # read from every record's header


def test_a_lst_that_does_not_describe_the_records_is_one_line(im2rec_root, tmp_path):
    root = copy_of(im2rec_root, tmp_path)
    rows = [line.split("\t") for line in (root / "train.lst").read_text().splitlines()]
    (root / "train.lst").write_text("".join(f"{i}\t{(float(label) + 1) % 3:f}\t{path}\n" for i, label, path in rows))
    with pytest.raises(UserError, match=r"train.lst does not describe .*train.rec: record \d+ carries label"):
        make_streams(recipe(root))


def test_bag_of_tricks_recipes_know_imagenet_has_1000_classes(im2rec_root):
    for name in table_names(recipes_root()):
        table = load_table(recipes_root(), name)
        if name.startswith("bot/") and not table.out_of_scope:
            for row in table.rows:
                for r in row_recipes(row, 1, 1.0):
                    assert r.model.classes == 1000, (name, row.label)
    bot = load_recipe(recipes_root() / "bot/baseline.toml",
                      [f'data.root="{im2rec_root}"', "data.image_size=32", "data.batch_size=6"])
    assert make_streams(bot).classes == 1000
    with pytest.raises(UserError, match="model.classes = 2 but the labels of .* span 3 classes"):
        make_streams(recipe(im2rec_root, classes=2))


def test_an_im2rec_val_numbered_on_its_own_is_one_line(im2rec_root, tmp_path):
    """im2rec.py numbers each split's folders by itself: a val/ without class0 labels class1 as 0."""
    images = tmp_path / "val-images"
    make_folder(images, per_class=2, corrupt=False)
    shutil.rmtree(images / "class0")
    root = copy_of(im2rec_root, tmp_path, without=("val.rec", "val.idx", "val.lst"))
    im2rec(images, root / "val")
    with pytest.raises(UserError, match=r"val.lst labels class folder 'class1' 0 but train.lst labels it 1"):
        make_streams(recipe(root))
