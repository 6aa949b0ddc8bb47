"""The real cifar100-mini against independent facts: its README, the official CIFAR-100
superclass table, and the official python-format layout."""
import hashlib
import pickle

import numpy as np
import pytest

from gluon_tricks.data import cifar

DEFINITION = cifar.MINI_DEFINITIONS["cifar100-mini"]  # README, SHA256SUMS, class names

# The CIFAR-100 superclass table as published with the dataset (Krizhevsky, 2009; the
# CIFAR-100 page), written with the names the official `meta` file uses; superclasses in
# label order (coarse label = position).
SUPERCLASSES = [
    ("aquatic_mammals", ["beaver", "dolphin", "otter", "seal", "whale"]),
    ("fish", ["aquarium_fish", "flatfish", "ray", "shark", "trout"]),
    ("flowers", ["orchid", "poppy", "rose", "sunflower", "tulip"]),
    ("food_containers", ["bottle", "bowl", "can", "cup", "plate"]),
    ("fruit_and_vegetables", ["apple", "mushroom", "orange", "pear", "sweet_pepper"]),
    ("household_electrical_devices", ["clock", "keyboard", "lamp", "telephone", "television"]),
    ("household_furniture", ["bed", "chair", "couch", "table", "wardrobe"]),
    ("insects", ["bee", "beetle", "butterfly", "caterpillar", "cockroach"]),
    ("large_carnivores", ["bear", "leopard", "lion", "tiger", "wolf"]),
    ("large_man-made_outdoor_things", ["bridge", "castle", "house", "road", "skyscraper"]),
    ("large_natural_outdoor_scenes", ["cloud", "forest", "mountain", "plain", "sea"]),
    ("large_omnivores_and_herbivores", ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"]),
    ("medium_mammals", ["fox", "porcupine", "possum", "raccoon", "skunk"]),
    ("non-insect_invertebrates", ["crab", "lobster", "snail", "spider", "worm"]),
    ("people", ["baby", "boy", "girl", "man", "woman"]),
    ("reptiles", ["crocodile", "dinosaur", "lizard", "snake", "turtle"]),
    ("small_mammals", ["hamster", "mouse", "rabbit", "shrew", "squirrel"]),
    ("trees", ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"]),
    ("vehicles_1", ["bicycle", "bus", "motorcycle", "pickup_truck", "train"]),
    ("vehicles_2", ["lawn_mower", "rocket", "streetcar", "tank", "tractor"]),
]
# The same table by label: the superclass of fine labels 0..99, as widely published.
COARSE_OF_FINE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]


def names(kind):
    return (DEFINITION / f"{kind}_label_names.txt").read_text().split()


@pytest.fixture(scope="module")
def raw():
    """Both files as (coarse, fine, pixels) straight from the bytes, per the README's record layout."""
    out, root = {}, cifar.ensure_mini("cifar100-mini")
    for split in ("train", "test"):
        rec = np.fromfile(root / f"{split}.bin", dtype=np.uint8).reshape(-1, 3074)
        out[split] = rec[:, 0].astype(int), rec[:, 1].astype(int), rec[:, 2:]
    return out


def test_files_match_their_checksums_and_the_readme_counts(raw):
    root = cifar.ensure_mini("cifar100-mini")
    for line in (DEFINITION / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        folder = root if name.endswith(".bin") else DEFINITION  # data beside the shipped class names
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert len(raw["train"][0]) == 1117 and len(raw["test"][0]) == 916
    # README: class balance of train.bin over the coarse labels
    assert np.bincount(raw["train"][0], minlength=20).tolist() == [
        50, 55, 61, 40, 62, 53, 56, 51, 54, 53, 66, 51, 68, 51, 72, 49, 63, 49, 55, 58]
    # README: the well-known first fine labels of the official splits
    assert raw["train"][1][:10].tolist() == [19, 29, 0, 11, 1, 86, 90, 28, 23, 31]
    assert raw["test"][1][:10].tolist() == [49, 33, 72, 51, 71, 92, 15, 14, 23, 0]


@pytest.mark.parametrize("fine", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_loader_gives_the_records_labels_and_pixels(raw, fine, train):
    s = cifar.load_cifar("cifar100-mini", train=train, fine_labels=fine)
    coarse, fine_l, pixels = raw["train" if train else "test"]
    assert s.classes == (100 if fine else 20)
    np.testing.assert_array_equal(s.labels, fine_l if fine else coarse)
    assert s.labels.min() >= 0 and s.labels.max() < s.classes
    # image k, pixel (row 3, col 5), channel c = byte c*1024 + 3*32 + 5 of the record
    for c in range(3):
        np.testing.assert_array_equal(s.images[:, 3, 5, c], pixels[:, c * 1024 + 3 * 32 + 5])


def test_superclass_table_by_name_equals_table_by_label():
    """The two typed forms of the official table agree through the names in `meta`."""
    fine_names, coarse_names = names("fine"), names("coarse")
    assert len(fine_names) == 100 and len(coarse_names) == 20
    assert [c for c, _ in SUPERCLASSES] == coarse_names
    assert sorted(f for _, fs in SUPERCLASSES for f in fs) == sorted(fine_names)
    by_name = {fine_names.index(f): coarse for coarse, (_, fs) in enumerate(SUPERCLASSES) for f in fs}
    assert [by_name[i] for i in range(100)] == COARSE_OF_FINE
    # the example the definition gives: aquatic mammals = beaver, dolphin, otter, seal, whale
    assert sorted(i for i, c in enumerate(COARSE_OF_FINE) if c == 0) == [4, 30, 55, 72, 95]


def test_every_fine_class_maps_to_its_official_superclass(raw):
    for split in ("train", "test"):
        coarse, fine_l, _ = raw[split]
        assert fine_l.min() >= 0 and fine_l.max() <= 99 and coarse.min() >= 0 and coarse.max() <= 19
        pairs = set(zip(fine_l.tolist(), coarse.tolist()))
        assert len(pairs) == 100, f"{split}: every fine class present, each with exactly one superclass"
        assert all(COARSE_OF_FINE[f] == c for f, c in pairs), split


def official_python_layout(coarse, fine_l, pixels, batch_label):
    """A dict in the official cifar-100-python order: filenames, batch_label, fine_labels,
    coarse_labels, data (README); bytes keys, as Python 3 reads the official Python 2 pickles."""
    return {
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(fine_l))],
        b"batch_label": batch_label,
        b"fine_labels": fine_l.tolist(),
        b"coarse_labels": coarse.tolist(),
        b"data": np.ascontiguousarray(pixels),
    }


def test_python_layout_reads_back_identically(raw, tmp_path):
    sub = tmp_path / "cifar-100-python"  # the folder the official python archive unpacks into
    sub.mkdir()
    for split, label in (("train", b"training batch 1 of 1"), ("test", b"testing batch 1 of 1")):
        with open(sub / split, "wb") as f:
            pickle.dump(official_python_layout(*raw[split], label), f, protocol=2)
        with open(sub / split, "rb") as f:  # the layout itself, read with the plain unpickler
            assert list(pickle.load(f, encoding="bytes")) == [
                b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"]
    for train in (True, False):
        for fine in (True, False):
            binary = cifar.load_cifar("cifar100-mini", train=train, fine_labels=fine)
            python = cifar.load_cifar("cifar100", tmp_path, train=train, fine_labels=fine, download=False)
            np.testing.assert_array_equal(python.images, binary.images)
            np.testing.assert_array_equal(python.labels, binary.labels)
            assert python.classes == binary.classes
