"""ImageNet-scale data in MXNet RecordIO: `mx.io.ImageRecordIter` streams with the Bag of
Tricks augmentation.

data.root holds `train.rec/.idx` and `val.rec/.idx` (written by `gluon-tricks prepare`,
data/prepare.py, with `train.classes.txt`).

Augmentation (Bag of Tricks Sec. 2; GluonCV's train_imagenet.py uses the same iterator
arguments): random-resized crop with area in [data.min_area, 1] and aspect ratio in
[3/4, 4/3] to data.image_size, flip with p = 0.5, brightness/contrast/saturation factors
in [1 - j, 1 + j] with j = data.color_jitter, PCA lighting noise data.lighting_std,
normalization by data.mean/data.std (given in [0, 1] units, so x255 for the iterator).
Gap: the paper also scales hue; ImageRecordIter only offers an additive HSL hue shift
(`random_h`), GluonCV's script leaves hue out, and so do we. Validation: shorter side
resized to data.val_resize (default image_size x 256/224), center crop.

Resuming mid-epoch: both streams skip the batches the interrupted epoch had trained on,
with fresh shuffling and augmentation (the C++ iterator's order is not a function of the
step), so a resumed ImageNet run matches an uninterrupted one only statistically.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from gluon_tricks.data.streams import trimmed_batches, val_resize
from gluon_tricks.errors import UserError, first_line, shown
from gluon_tricks.paths import cores


def _record_error(rec: Path, e: Exception) -> UserError:
    prefix = str(rec)[: -len(".rec")]
    return UserError(f"{rec}: a record could not be decoded ({first_line(e, 160)}); list and skip the bad records with "
                     f"`gluon-tricks check-records {prefix} --repair {prefix}-clean`")


def iter_norm(spec) -> dict:
    m = [255.0 * v for v in spec.mean]
    s = [255.0 * v for v in spec.std]
    return dict(mean_r=m[0], mean_g=m[1], mean_b=m[2], std_r=s[0], std_g=s[1], std_b=s[2])


def count_records(idx: Path) -> int:
    with open(idx) as f:
        return sum(1 for line in f if line.strip())


def read_classes(root: Path) -> int | None:
    p = root / "train.classes.txt"
    return len([l for l in p.read_text().splitlines() if l.strip()]) if p.is_file() else None


def check_val_classes(root: Path) -> None:
    """val's labels are numbers in its classes.txt: they must be train's numbers."""
    lists = {part: root / f"{part}.classes.txt" for part in ("train", "val")}
    if not all(p.is_file() for p in lists.values()):
        return
    train, val = ([l for l in p.read_text().splitlines() if l] for p in lists.values())
    if train != val:
        missing = [c for c in train if c not in val]
        extra = [c for c in val if c not in train]
        what = "; ".join(x for x in (f"lacks {', '.join(map(repr, missing))}" if missing else "",
                                     f"adds {', '.join(map(repr, extra))}" if extra else "") if x) or "orders them differently"
        raise UserError(f"{shown(lists['val'])} numbers the classes differently from train.classes.txt "
                        f"(val {shown(what)[:300]}): labels would not match; run `gluon-tricks prepare` for val "
                        "again after train (it then labels val by train's class names)")


def records_at_size(rec: Path, idx: Path, size: int, sample: int = 64) -> tuple[int, int]:
    """(how many of up to `sample` records spread over the file decode to exactly size x size,
    how many were looked at). Reading a sample keeps this cheap for ImageNet-sized files."""
    import cv2
    import mxnet as mx

    with open(idx) as f:
        keys = [int(line.split("\t", 1)[0]) for line in f if line.strip()]
    picks = keys[:: max(1, len(keys) // sample)][:sample]
    hits = 0
    try:
        reader = mx.recordio.MXIndexedRecordIO(str(idx), str(rec), "r")
        for key in picks:
            _, buf = mx.recordio.unpack(reader.read_idx(key))
            img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
            hits += img is not None and img.shape[:2] == (size, size)
        reader.close()
    except (mx.MXNetError, ValueError, OSError) as e:
        raise _record_error(rec, e) from None
    return hits, len(picks)


class _NamedRecordErrors:
    """ImageRecordDataset whose undecodable records raise our one-line error."""

    def __init__(self, dataset, rec: Path):
        import threading

        self.dataset, self.rec = dataset, rec
        self.lock = threading.Lock()  # one file handle: a seek and read from two loader threads race

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            with self.lock:
                return self.dataset[i]
        except Exception as e:  # MXNet and OpenCV decode errors share no type
            raise _record_error(self.rec, e) from None


def record_train_stream(recipe, root: Path, rank: int, workers: int):
    """The training stream of train.rec: MXNet's C++ ImageRecordIter (fast), except when its
    random-resized crop would be wrong. ImageRecordIter 1.9.1 resizes the crop into the very
    buffer it reads from when the decoded image already has the output size
    (apache/mxnet#16925, open): rows below the first few are then resized again from rows it has
    just written, a smeared image instead of a crop. Measured on 32x32 records at image_size 32:
    7 of 10 crops corrupt (docs/imagenet.md). Such files are read by Gluon's ImageRecordDataset
    with the same transforms as image folders, which crop by the definition."""
    spec = recipe.data
    RecordTrainStream.check_files(root)
    if spec.augment == "none":
        return RecordTrainStream(recipe, root, rank, workers)
    rec, idx = root / "train.rec", root / "train.idx"
    hits, looked = records_at_size(rec, idx, spec.image_size)
    if not hits:
        return RecordTrainStream(recipe, root, rank, workers)
    import mxnet as mx

    from gluon_tricks.data.folders import GluonTrainStream

    print(f"note: {hits} of {looked} sampled images in {shown(rec)} are {spec.image_size}x{spec.image_size}, the "
          "training size, which MXNet's ImageRecordIter crops wrongly (apache/mxnet#16925); reading them with "
          f"Gluon's transforms instead (slower; `gluon-tricks prepare --resize {spec.image_size + spec.image_size // 8}` "
          "keeps the fast reader)", file=sys.stderr, flush=True)
    dataset = _NamedRecordErrors(mx.gluon.data.vision.ImageRecordDataset(str(rec)), rec)
    return GluonTrainStream(recipe, dataset, rank, workers, str(rec))


class RecordTrainStream:
    def __init__(self, recipe, root: Path, rank: int, workers: int):
        import mxnet as mx

        spec = recipe.data
        rec, idx = root / "train.rec", root / "train.idx"
        self.rec = rec
        self.check_files(root)
        self.batch_size = spec.batch_size // workers
        self.steps = count_records(idx) // workers // self.batch_size
        if spec.train_limit:
            self.steps = min(self.steps, max(1, spec.train_limit // spec.batch_size))
        if self.steps < 1:
            raise UserError(f"{rec} holds fewer images than one batch of {self.batch_size} per worker")
        s = spec.image_size
        augment = dict(random_resized_crop=True, min_random_area=spec.min_area, max_random_area=1.0,
                       min_aspect_ratio=3 / 4, max_aspect_ratio=4 / 3, rand_mirror=True,
                       brightness=spec.color_jitter, contrast=spec.color_jitter, saturation=spec.color_jitter,
                       pca_noise=spec.lighting_std) if spec.augment != "none" else {}
        try:  # the iterator decodes its first batch while it is built: a bad record can fail here
            self.iter = mx.io.ImageRecordIter(
                path_imgrec=str(rec), path_imgidx=str(idx), data_shape=(3, s, s), batch_size=self.batch_size,
                shuffle=True, seed=recipe.seed, part_index=rank, num_parts=workers,
                preprocess_threads=cores(), **augment, **iter_norm(spec))
        except mx.MXNetError as e:
            raise _record_error(rec, e) from None

    @staticmethod
    def check_files(root: Path) -> None:
        for p in (root / "train.rec", root / "train.idx"):
            if not p.is_file():
                raise UserError(f"{p} not found; create it with `gluon-tricks prepare IMAGES/train {root}/train`")

    def steps_per_epoch(self) -> int:
        return self.steps

    def epoch(self, epoch: int, start_step: int = 0):
        import mxnet as mx

        step = 0
        try:
            self.iter.reset()  # the C++ iterator decodes ahead: errors can surface here too
        except mx.MXNetError as e:
            raise _record_error(self.rec, e) from None
        while step < self.steps:
            try:
                batch = self.iter.next()
            except StopIteration:
                return
            except mx.MXNetError as e:
                raise _record_error(self.rec, e) from None
            if step >= start_step:
                yield step, batch.data[0], batch.label[0].asnumpy().astype(np.int64)
            step += 1


class RecordTestStream:
    def __init__(self, recipe, root: Path):
        spec = recipe.data
        self.rec, self.idx = root / "val.rec", root / "val.idx"
        for p in (self.rec, self.idx):
            if not p.is_file():
                raise UserError(f"{p} not found; create it with `gluon-tricks prepare IMAGES/val {root}/val`")
        check_val_classes(root)
        self.n = count_records(self.idx)
        if spec.test_limit:
            self.n = min(self.n, spec.test_limit)
        self.spec = spec

    def __len__(self) -> int:
        return self.n

    def batches(self):
        import mxnet as mx

        s = self.spec.image_size
        it = mx.io.ImageRecordIter(path_imgrec=str(self.rec), path_imgidx=str(self.idx), data_shape=(3, s, s),
                                   batch_size=self.spec.batch_size, resize=val_resize(self.spec), shuffle=False,
                                   round_batch=False, preprocess_threads=cores(),
                                   **iter_norm(self.spec))
        def padded():
            while True:
                try:
                    batch = it.next()
                except StopIteration:
                    return
                except mx.MXNetError as e:
                    raise _record_error(self.rec, e) from None
                yield batch.data[0], batch.label[0].asnumpy().astype(np.int64), batch.data[0].shape[0] - batch.pad

        return trimmed_batches(padded(), self.n)
