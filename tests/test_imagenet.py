"""The ImageNet path on generated JPEGs: prepare, RecordIO and folder streams, crop sampling,
a one-epoch run through train_imagenet.py, ResNet-50 at 224 px, fine-tuning."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest

from gluon_tricks.data.folders import FolderTestStream, FolderTrainStream
from gluon_tricks.data.prepare import prepare
from gluon_tricks.data.recordio import RecordTestStream, RecordTrainStream
from gluon_tricks.errors import UserError
from gluon_tricks.tricks.smoothing import smooth_targets
from gluon_tricks.recipe import IMAGENET_MEAN, IMAGENET_STD, recipe_from_dict

ROOT = Path(__file__).resolve().parent.parent
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]  # RGB per class


def make_folder(root: Path, per_class=8, corrupt=True):
    rng = np.random.default_rng(0)
    for c, rgb in enumerate(COLORS):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            h, w = int(rng.integers(40, 70)), int(rng.integers(40, 70))
            img = np.clip(np.array(rgb)[None, None, ::-1] + rng.integers(-10, 10, (h, w, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(d / f"{i}.jpg"), img)
    if corrupt:
        (root / "class1" / "broken.jpg").write_bytes(b"this is not a jpeg")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("imgs")
    make_folder(base / "train")
    make_folder(base / "val", per_class=4, corrupt=False)
    out = base / "rec"
    info_train = prepare(base / "train", out / "train", resize=48, workers=2, progress=False)
    info_val = prepare(base / "val", out / "val", resize=48, workers=2, progress=False)
    return base, out, info_train, info_val


def recipe(root, dataset="recordio", **data):
    d = {"epochs": 1, "data": dict({"dataset": dataset, "root": str(root), "augment": "bot", "image_size": 32,
                                    "batch_size": 8}, **data),
         "model": {"name": "resnet18_v1b"}, "smoothing": {"eps": 0.1}}
    return recipe_from_dict(d)


def test_prepare_counts_labels_and_reports_the_corrupt_file(dataset):
    base, out, info, _ = dataset
    assert info["records"] == 24 and info["classes"] == 3
    assert info["skipped"] == ["class1/broken.jpg"]
    assert (out / "train.skipped.txt").read_text() == "class1/broken.jpg\n"
    assert len((out / "train.lst").read_text().splitlines()) == 24  # one row per written record
    rec = mx.recordio.MXIndexedRecordIO(str(out / "train.idx"), str(out / "train.rec"), "r")
    labels = []
    for i in range(24):
        header, img = mx.recordio.unpack_img(rec.read_idx(i))
        labels.append(int(header.label))
        assert min(img.shape[:2]) == 48  # shorter side resized
        assert np.abs(img.reshape(-1, 3).mean(0)[::-1] - COLORS[int(header.label)]).max() < 15
    assert sorted(labels) == [0] * 8 + [1] * 8 + [2] * 8
    # shuffled: each half of the file (a worker's part with num_parts=2) holds every class
    assert set(labels[:12]) == set(labels[12:]) == {0, 1, 2}


def test_prepare_cli_lists_skipped(tmp_path, capsys):
    from gluon_tricks.cli import main

    make_folder(tmp_path / "imgs", per_class=2)
    assert main(["prepare", str(tmp_path / "imgs"), str(tmp_path / "o" / "x"), "--quiet", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "6 images in 3 classes" in captured.out and "class1/broken.jpg" in captured.err


def test_training_crops_are_the_papers_random_resized_crops(dataset, monkeypatch):
    """Bag of Tricks 2.1, as typed from the paper: a crop of area in [8%, 100%] and aspect ratio
    in [3/4, 4/3], flipped with p = 0.5, hue/saturation/brightness coefficients from [0.6, 1.4],
    PCA noise from N(0, 0.1): the arguments both training readers really get."""
    from gluon_tricks.data import make_streams

    base, out, _, _ = dataset
    iters = []
    real_iter = mx.io.ImageRecordIter
    monkeypatch.setattr(mx.io, "ImageRecordIter", lambda *a, **k: (iters.append(k), real_iter(*a, **k))[1])
    trains = lambda: [k for k in iters if k["path_imgrec"].endswith("train.rec")]  # noqa: E731
    make_streams(recipe(out), 0, 1)
    (train,) = trains()
    assert train["random_resized_crop"] and train["rand_mirror"]
    assert (train["min_random_area"], train["max_random_area"]) == (0.08, 1.0)
    assert (train["min_aspect_ratio"], train["max_aspect_ratio"]) == pytest.approx((3 / 4, 4 / 3))
    assert (train["brightness"], train["saturation"], train["pca_noise"]) == pytest.approx((0.4, 0.4, 0.1))
    make_streams(recipe(out, min_area=0.25), 0, 1)
    assert trains()[-1]["min_random_area"] == 0.25
    # The image folders' crops, flips and colours: tests/test_image_ops.py, against the definitions.


def test_train_images_counts_the_training_images_of_every_reader(dataset):
    """result.json's train_images: the images of the training set (after data.train_limit), not
    the steps times the batch an epoch trains on (20 of the 24 records with batches of 10)."""
    from gluon_tricks.data import make_streams

    base, out, _, _ = dataset
    assert make_streams(recipe(out, batch_size=10)).train_images == 24
    assert make_streams(recipe(out, batch_size=10, train_limit=15)).train_images == 15
    assert make_streams(recipe(base, dataset="imagefolder", batch_size=10)).train_images == 25  # with broken.jpg
    cifar = recipe_from_dict({"data": {"dataset": "cifar10-mini", "batch_size": 32, "train_limit": 100}})
    assert make_streams(cifar).train_images == 100


def test_record_train_stream_shapes_targets_and_shards(dataset):
    _, out, _, _ = dataset
    r = recipe(out)
    s = RecordTrainStream(r, out, rank=0, workers=1)
    assert s.steps_per_epoch() == 3
    batches = list(s.epoch(0))
    assert [b[0] for b in batches] == [0, 1, 2]
    step, x, labels = batches[0]
    assert x.shape == (8, 3, 32, 32) and x.dtype == np.float32
    y = smooth_targets(labels, 3, r.smoothing.eps, r.smoothing.form)  # what the training step makes of them
    np.testing.assert_allclose(y.sum(1), 1, rtol=1e-6)
    assert y.max() == pytest.approx(0.9 + 0.1 / 3)
    assert set(np.concatenate([b[2] for b in batches]).tolist()) <= {0, 1, 2}
    half = RecordTrainStream(recipe(out, batch_size=8), out, rank=1, workers=2)
    assert half.steps_per_epoch() == 3 and half.batch_size == 4
    assert [b[0] for b in s.epoch(1, start_step=2)] == [2]


def test_record_validation_is_normalized_and_deterministic(dataset):
    _, out, _, _ = dataset
    t = RecordTestStream(recipe(out), out)
    assert len(t) == 12
    first = [(x.asnumpy(), y) for x, y in t.batches()]
    second = [(x.asnumpy(), y) for x, y in t.batches()]
    assert sum(len(y) for _, y in first) == 12
    for (a, ya), (b, yb) in zip(first, second):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya, yb)
    x, y = first[0]
    for i in range(len(y)):  # each class's colour, normalized by the ImageNet mean/std
        expected = (np.array(COLORS[y[i]]) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        np.testing.assert_allclose(x[i].mean(axis=(1, 2)), expected, atol=0.2)


def test_missing_record_files(tmp_path):
    with pytest.raises(UserError, match="train.rec not found; create it with `gluon-tricks prepare"):
        RecordTrainStream(recipe(tmp_path), tmp_path, 0, 1)


def test_folder_streams_and_unreadable_image(dataset):
    base, _, _, _ = dataset
    clean = base / "clean"
    make_folder(clean / "train", corrupt=False)
    make_folder(clean / "val", per_class=3, corrupt=False)
    r = recipe(clean, dataset="imagefolder")
    train = FolderTrainStream(r, clean, 0, 1)
    assert train.classes == 3 and train.steps_per_epoch() == 3
    step, x, labels = next(iter(train.epoch(0)))
    y = smooth_targets(labels, train.classes, r.smoothing.eps, r.smoothing.form)
    assert x.shape == (8, 3, 32, 32) and y.shape == (8, 3)
    test = FolderTestStream(r, clean)
    a = [x for x, _ in test.batches()]  # numpy: decoded and transformed outside MXNet
    b = [x for x, _ in test.batches()]
    assert len(test) == 9 and all(np.array_equal(p, q) for p, q in zip(a, b))
    bad = FolderTrainStream(recipe(base, dataset="imagefolder"), base, 0, 1)
    with pytest.raises(UserError, match=r"unreadable image .*broken.jpg"):
        for _ in bad.epoch(0):
            pass


def test_one_epoch_through_train_imagenet(dataset, tmp_path):
    _, out, _, _ = dataset
    r = recipe(out, image_size=64)
    from gluon_tricks.recipe import to_toml

    path = tmp_path / "r.toml"
    path.write_text(to_toml(r))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "train_imagenet.py", str(path), "--out", str(run), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    for name in ("recipe.toml", "run.json", "metrics.jsonl", "result.json"):
        assert (run / name).is_file()
    assert any((run / "checkpoints").iterdir())
    result = json.loads((run / "result.json").read_text())
    assert result["test_images"] == 12 and result["epochs"] == 1


def test_resnet50_224_forward_backward_on_cpu():
    from gluon_tricks.models import build_model

    net = build_model(recipe_from_dict({"model": {"name": "resnet50_v1"}}), 1000, [mx.cpu()])
    x = mx.nd.random.uniform(shape=(2, 3, 224, 224))
    with mx.autograd.record():
        loss = net(x).sum()
    loss.backward()
    g = net.collect_params()[next(n for n in net.collect_params() if n.endswith("conv0_weight"))].grad()
    assert np.isfinite(g.asnumpy()).all() and float(mx.nd.abs(g).sum().asscalar()) > 0


def test_pretrained_fine_tuning_replaces_the_output_layer(tmp_path, monkeypatch):
    import gluoncv.model_zoo.model_store as store
    from gluoncv.model_zoo import get_model

    from gluon_tricks.models import build_model, output_classes

    src = get_model("resnet18_v1", classes=1000)
    src.initialize(mx.init.Xavier())
    src(mx.nd.zeros((1, 3, 64, 64)))
    saved = tmp_path / "resnet18_v1.params"
    src.save_parameters(str(saved))
    # Stand-in for the zoo download (nothing downloads here): GluonCV asks its model store for the file.
    monkeypatch.setattr(store, "get_model_file", lambda name, tag=None, root=None: str(saved))
    net = build_model(recipe_from_dict({"model": {"name": "resnet18_v1", "pretrained": True}}), 21, [mx.cpu()])
    assert output_classes(net) == 21
    out = net(mx.nd.zeros((1, 3, 64, 64)))
    assert out.shape == (1, 21)
    w_src = src.features[0].weight.data().asnumpy()
    np.testing.assert_array_equal(net.features[0].weight.data().asnumpy(), w_src)


def test_corrupt_record_is_named_counted_and_skipped(dataset, tmp_path, capsys):
    import shutil

    from gluon_tricks.cli import main

    _, out, _, _ = dataset
    root = tmp_path / "rec"
    root.mkdir()
    for name in ("train.rec", "train.idx", "train.classes.txt", "val.rec", "val.idx"):
        shutil.copy(out / name, root / name)
    reader = mx.recordio.MXIndexedRecordIO(str(root / "train.idx"), str(root / "train.rec"), "r")
    pos = reader.idx[5]
    reader.close()
    data = bytearray((root / "train.rec").read_bytes())
    data[pos + 40:pos + 400] = b"\x55" * 360  # inside record 5's JPEG
    (root / "train.rec").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"train.rec: a record could not be decoded .*check-records"):
        # the iterator decodes ahead from its construction on: the error may surface there or later
        for _ in RecordTrainStream(recipe(root), root, 0, 1).epoch(0):
            pass
    assert main(["check-records", str(root / "train")]) == 1
    assert "24 records, 1 corrupt: 5" in capsys.readouterr().out
    assert main(["check-records", str(root / "train"), "--repair", str(root / "clean")]) == 0
    for ext in ("rec", "idx"):
        shutil.move(root / f"clean.{ext}", root / f"train.{ext}")
    steps = [s for s, *_ in RecordTrainStream(recipe(root), root, 0, 1).epoch(0)]
    assert steps == [0, 1]  # 23 good records: two full batches of 8
