"""Hostile data (reliability-redteam-2 causes 8, 9, 15 and the data messages of 18; probe ids
in each test): CIFAR python files with the wrong dtypes, image names that are not UTF-8, a
decoder that kills its process, a class folder that links to its parent, a read-only
MXNET_HOME."""
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from gluon_tricks.data import cifar
from gluon_tricks.errors import UserError

NOT_UTF8 = b"caf\xe9-\xff.jpg"  # Latin-1 bytes: a valid file name on Linux, not UTF-8
ROOT = Path(__file__).resolve().parent.parent


# -- CIFAR python format (cause 9) --------------------------------------------------------------
def python_file(path, data, labels):
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"data": data, b"labels": labels}, f, protocol=2)
    return path


def pixels(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def test_float_images_are_refused_with_the_fix(tmp_path):  # probe 7.3: [0, 1] floats became black images
    p = python_file(tmp_path / "data_batch_1", pixels().astype(np.float64) / 255, [1, 2, 3, 4])
    with pytest.raises(UserError, match=r"dtype float64.*float images\? multiply by 255 and cast to uint8"):
        cifar.read_python(p, "cifar10")


def test_integer_pixels_outside_0_255_are_refused(tmp_path):  # probe 7.4: 1020 wrapped to 252
    data = pixels().astype(np.int64)
    data[0, 0] = 1020
    with pytest.raises(UserError, match=r"values 0\.\.1020, expected pixels 0\.\.255"):
        cifar.read_python(python_file(tmp_path / "b", data, [1, 2, 3, 4]), "cifar10")


def test_float_labels_are_refused(tmp_path):  # probe 7.5: 3.7 was truncated to class 3
    with pytest.raises(UserError, match=r"labels is not a list of integer labels \(dtype float64\)"):
        cifar.read_python(python_file(tmp_path / "c", pixels(), [1.7, 2.7, 3.7, 4.7]), "cifar10")


def test_integer_pixels_in_range_and_digit_string_labels_still_load(tmp_path):  # probe 7.6 held
    data = pixels()
    x, y = cifar.read_python(python_file(tmp_path / "d", data.astype(np.int64), ["1", "2", "3", "4"]), "cifar10")
    assert x.dtype == np.uint8 and y.tolist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(x, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def test_an_mxnet_home_that_cannot_be_created_is_named_as_such(tmp_path):  # probe 3.8
    (tmp_path / "home").write_text("a file where the directory should be")
    with pytest.raises(UserError, match=r"cannot create .*home/datasets/cifar10 to download it into: Not a directory"):
        cifar._download(tmp_path / "home" / "datasets" / "cifar10", "cifar10")


# -- image folders and prepare (causes 8, 15, 18) -----------------------------------------------
def image_tree(root: Path, per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / c / f"{i}.jpg"), rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    return root


def run_prepare_script(tmp_path, body: str) -> subprocess.CompletedProcess:
    """`prepare` in a child process with a time limit: before the fix, probe 7.20 hung forever."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)


def test_prepare_reads_an_image_whose_name_is_not_utf8(tmp_path):  # probe 7.20: segfault, then a hang
    src = image_tree(tmp_path / "img")
    os.rename(src / "a" / "0.jpg", os.fsencode(src / "a") + b"/" + NOT_UTF8)
    out = tmp_path / "rec" / "train"
    r = run_prepare_script(tmp_path, f"""
        from gluon_tricks.cli import main
        raise SystemExit(main(["prepare", {str(src)!r}, {str(out)!r}, "--quiet", "--workers", "2"]))
    """)
    assert r.returncode == 0, r.stderr
    assert "4 images in 2 classes" in r.stdout
    listed = (tmp_path / "rec" / "train.lst").read_bytes()
    assert b"a/" + NOT_UTF8 in listed  # the .lst keeps the name's own bytes


def test_a_decoder_that_kills_its_process_is_reported_with_the_file(tmp_path):  # probe 7.20, the crash itself
    src = image_tree(tmp_path / "img", per_class=3)
    os.rename(src / "b" / "1.jpg", os.fsencode(src / "b") + b"/" + NOT_UTF8)
    out = tmp_path / "rec" / "train"
    # The decoder of before the fix: cv2.imread segfaults on a name that is not UTF-8.
    r = run_prepare_script(tmp_path, f"""
        import cv2
        from gluon_tricks.cli import main
        from gluon_tricks.data import prepare as converter

        def imread_decoder(args):
            path, resize, quality = args
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            return None if img is None else cv2.imencode(".jpg", img)[1].tobytes()

        converter._encode = imread_decoder
        raise SystemExit(main(["prepare", {str(src)!r}, {str(out)!r}, "--quiet", "--workers", "2"]))
    """)
    assert r.returncode == 0, r.stderr
    assert "5 images in 2 classes" in r.stdout
    assert "the image decoder crashed (its process died) on 1 of them, e.g. b/caf\\udce9-\\udcff.jpg" in r.stderr
    assert (tmp_path / "rec" / "train.skipped.txt").read_bytes() == b"b/" + NOT_UTF8 + b"\n"


def test_a_class_folder_linking_to_its_parent_is_not_a_class(tmp_path):  # probe 7.18: 36 images in 4 classes
    from gluon_tricks.data.prepare import list_images

    src = image_tree(tmp_path / "img")
    (src / "z").symlink_to(".")
    (src / "up").symlink_to("..")
    items, classes = list_images(src)
    assert classes == ["a", "b"] and len(items) == 4


def test_an_image_folder_image_with_a_non_utf8_name_is_read(tmp_path):  # probe 7.19
    """MXNet's imread took names as UTF-8 and failed on this one; the folder reader now opens
    the file itself (os.listdir's surrogate-escaped name) and decodes it with OpenCV."""
    import mxnet as mx

    from gluon_tricks.data.folders import FolderImages

    src = image_tree(tmp_path / "img", per_class=1)
    os.rename(src / "a" / "0.jpg", os.fsencode(src / "a") + b"/" + NOT_UTF8)
    images = FolderImages(mx.gluon.data.vision.ImageFolderDataset(str(src)))
    assert images.items[0][0].endswith("caf\udce9-\udcff.jpg")
    img, label = images.load(0)
    assert img.ndim == 3 and img.shape[2] == 3 and label == 0
