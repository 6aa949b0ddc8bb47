"""Data defects: val classes labelled by train's names, atomic `prepare`, a `.lst` that
describes the records, augmentation names per reader, model.classes against the labels."""
import errno
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest

from gluon_tricks.cli import main
from gluon_tricks.data import make_streams
from gluon_tricks.data.prepare import check_records, prepare
from gluon_tricks.errors import UserError
from gluon_tricks.recipe import recipe_from_dict

BGR = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)}  # a=blue, b=green, c=red (cv2 order)


def tree(root: Path, classes, per_class=3):
    for name in classes:
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(d / f"{name}{i}.png"), np.full((12, 12, 3), BGR[name], np.uint8))
    return root


def true_class(img_bgr) -> str:
    return "abc"[int(np.argmax(img_bgr.reshape(-1, 3).mean(0)))]


def records(prefix):
    r = mx.recordio.MXIndexedRecordIO(f"{prefix}.idx", f"{prefix}.rec", "r")
    out = []
    for k in sorted(r.keys):
        h, payload = mx.recordio.unpack(r.read_idx(k))
        out.append((k, h.id, int(h.label), cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)))
    r.close()
    return out


def recipe(root, dataset, **data):
    return recipe_from_dict({"epochs": 1, "data": dict({"dataset": dataset, "root": str(root), "augment": "none",
                                                         "image_size": 12, "batch_size": 2}, **data),
                             "model": {"name": "cifar_resnet20_v1"}})


def test_prepare_labels_val_by_train_class_names(tmp_path):
    tree(tmp_path / "img" / "train", "abc")
    tree(tmp_path / "img" / "val", "ac")  # val lacks class b
    out = tmp_path / "rec"
    prepare(tmp_path / "img" / "train", out / "train", workers=1, progress=False)
    prepare(tmp_path / "img" / "val", out / "val", workers=1, progress=False)
    train_classes = (out / "train.classes.txt").read_text().split()
    assert train_classes == ["a", "b", "c"]
    for _, _, label, img in records(out / "val"):
        assert train_classes[label] == true_class(img)


def test_train_class_index_keeps_train_numbers_and_names_classes_train_lacks():
    from gluon_tricks.data.streams import train_class_index

    assert train_class_index(["a", "c"], ["a", "b", "c"], "val") == [0, 2]  # by hand: c is train's third
    assert train_class_index(["a", "b", "c"], ["a", "b", "c"], "val") == [0, 1, 2]
    with pytest.raises(UserError, match=r"img/val has classes that train does not: 'd'"):
        train_class_index(["a", "d"], ["a", "b", "c"], "img/val")


def test_prepare_refuses_val_classes_train_lacks(tmp_path):
    tree(tmp_path / "img" / "train", "ab")
    tree(tmp_path / "img" / "val", "ac")
    out = tmp_path / "rec"
    prepare(tmp_path / "img" / "train", out / "train", workers=1, progress=False)
    with pytest.raises(UserError, match="has classes that train does not: 'c'"):
        prepare(tmp_path / "img" / "val", out / "val", workers=1, progress=False)
    assert not (out / "val.rec").exists()


def test_record_val_with_another_class_list_is_refused(tmp_path):
    tree(tmp_path / "img" / "train", "abc")
    tree(tmp_path / "img" / "val", "ac")
    out = tmp_path / "rec"
    prepare(tmp_path / "img" / "val", out / "val", workers=1, progress=False)  # before train: its own list
    prepare(tmp_path / "img" / "train", out / "train", workers=1, progress=False)
    with pytest.raises(UserError, match="val.classes.txt") as e:
        make_streams(recipe(out, "recordio"))
    assert "'b'" in str(e.value) and "\n" not in str(e.value)


def test_image_folder_val_is_labelled_by_train_class_names(tmp_path):
    tree(tmp_path / "train", "abc")
    tree(tmp_path / "val", "ac")
    streams = make_streams(recipe(tmp_path, "imagefolder", mean=[0, 0, 0], std=[1, 1, 1]))
    test, classes = streams.test, streams.classes
    seen = 0
    for x, y in test.batches():
        x = x.asnumpy() if hasattr(x, "asnumpy") else x
        for img, label in zip(x, y):
            rgb = img.mean(axis=(1, 2))
            assert "cba"[int(np.argmax(rgb))] == "abc"[label]  # channel 0 red = c ... channel 2 blue = a
            seen += 1
    assert seen == 6


def test_image_folder_val_with_an_extra_class_is_refused(tmp_path):
    tree(tmp_path / "train", "ab")
    tree(tmp_path / "val", "abc")
    with pytest.raises(UserError, match="'c'"):
        make_streams(recipe(tmp_path, "imagefolder"))


def test_lst_rows_describe_the_written_records(tmp_path):
    src = tree(tmp_path / "img", "abc")
    (src / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    prepare(src, tmp_path / "out" / "train", workers=1, progress=False)
    rows = [l.split("\t") for l in (tmp_path / "out" / "train.lst").read_text().splitlines()]
    recs = records(tmp_path / "out" / "train")
    assert len(rows) == len(recs) == 9
    for (key, rid, label, img), row in zip(recs, rows):
        assert row[0] == str(key) == str(rid) and row[1] == str(label) and len(row) == 3
        assert Path(row[2]).parent.name == true_class(img)


@pytest.mark.parametrize("bad", ["c2\ttab.png", "c1\nnewline.png", "c3\rcr.png"])
def test_names_that_break_the_lst_are_refused(tmp_path, bad):
    src = tree(tmp_path / "img", "abc")
    cv2.imwrite(str(src / "c" / "x.png"), np.zeros((8, 8, 3), np.uint8))
    (src / "c" / "x.png").rename(src / "c" / bad)
    with pytest.raises(UserError) as e:
        prepare(src, tmp_path / "out" / "train", workers=1, progress=False)
    assert "\n" not in str(e.value) and "\t" not in str(e.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_failed_prepare_writes_nothing(tmp_path, monkeypatch):
    src = tree(tmp_path / "img", "abc")
    out = tmp_path / "out"
    out.mkdir()
    real = mx.recordio.MXIndexedRecordIO.write_idx
    calls = []

    def full(self, idx, buf):
        # while writing, nothing carries the final names yet
        assert not (out / "train.rec").exists() and not (out / "train.lst").exists()
        calls.append(idx)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, idx, buf)

    monkeypatch.setattr(mx.recordio.MXIndexedRecordIO, "write_idx", full)
    with pytest.raises(UserError, match="nothing was written") as e:
        prepare(src, out / "train", workers=1, progress=False)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == []


def test_check_records_sees_a_partial_record_after_the_index(tmp_path, capsys):
    src = tree(tmp_path / "img", "abc")
    prefix = tmp_path / "out" / "train"
    prepare(src, prefix, workers=1, progress=False)
    with open(f"{prefix}.rec", "ab") as f:  # a kill mid-write: a record started, not indexed
        f.write(bytes.fromhex("0ae8d7ce") + b"\x40\x00\x00\x00" + b"partial")
    info = check_records(prefix)
    assert info["bad"], info
    assert main(["check-records", str(prefix)]) == 1


@pytest.mark.parametrize("dataset,augment", [("recordio", "followup"), ("imagefolder", "gluoncv"),
                                             ("cifar10-mini", "bot")])
def test_augmentation_names_of_another_reader_are_refused(tmp_path, dataset, augment):
    tree(tmp_path / "train", "ab")
    tree(tmp_path / "val", "ab")
    r = recipe_from_dict({"data": {"dataset": dataset, "root": "" if dataset.startswith("cifar") else str(tmp_path),
                                   "augment": augment, "batch_size": 2}})
    with pytest.raises(UserError, match="data.augment") as e:
        make_streams(r)
    valid = str(e.value).split("use one of:")[1]
    assert ("bot" in valid) != dataset.startswith("cifar") and "none" in valid


def test_model_classes_below_the_labels_is_one_line(tmp_path, capsys):
    r = recipe_from_dict({"data": {"dataset": "cifar10-mini", "batch_size": 32, "train_limit": 64, "test_limit": 32},
                          "model": {"name": "cifar_resnet20_v1", "classes": 3}})
    with pytest.raises(UserError, match="model.classes"):
        make_streams(r)


def test_image_folder_workers_get_equal_steps_and_disjoint_strided_slices(tmp_path):
    from gluon_tricks.data.folders import FolderTrainStream

    tree(tmp_path / "train", "abc", per_class=7)  # 21 images: contiguous shards would be 11 + 10
    r = recipe(tmp_path, "imagefolder", batch_size=4)
    streams = [FolderTrainStream(r, tmp_path, rank, 2) for rank in range(2)]
    assert [s.steps_per_epoch() for s in streams] == [5, 5]  # 21 // 4 global batches each
    slices = [list(s.sampler) for s in streams]
    assert [len(x) for x in slices] == [10, 10] and not set(slices[0]) & set(slices[1])
    one = list(FolderTrainStream(r, tmp_path, 0, 1).sampler)
    for k in range(5):  # worker w's k-th batch is the w-th half of one process's k-th batch
        assert one[4 * k:4 * k + 4] == slices[0][2 * k:2 * k + 2] + slices[1][2 * k:2 * k + 2]


def test_image_folder_augmentation_is_repeatable_and_resumes_exactly(tmp_path):
    from gluon_tricks.data.folders import FolderTrainStream

    rng = np.random.default_rng(0)
    for c in "ab":
        d = tmp_path / "train" / c
        d.mkdir(parents=True)
        for i in range(6):
            cv2.imwrite(str(d / f"{i}.png"), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    r = recipe_from_dict({"seed": 5, "data": {"dataset": "imagefolder", "root": str(tmp_path), "augment": "bot",
                                              "image_size": 16, "batch_size": 4}})

    def batches(start=0, epoch=1):
        return [(s, x) for s, x, _ in FolderTrainStream(r, tmp_path, 0, 1).epoch(epoch, start)]

    first, again, resumed = batches(), batches(), batches(start=2)
    assert len(first) == 3
    for (s1, a), (s2, b) in zip(first, again):
        assert s1 == s2 and np.array_equal(a, b)  # a second process would draw the same augmentation
    for (s1, a), (s2, b) in zip(first[2:], resumed):
        assert s1 == s2 and np.array_equal(a, b)  # resuming at step 2 sees what the full epoch saw
    assert not np.array_equal(first[0][1], batches(epoch=2)[0][1])  # another epoch, other draws
