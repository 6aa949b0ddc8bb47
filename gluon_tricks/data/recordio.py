"""ImageNet-scale data in MXNet RecordIO: `mx.io.ImageRecordIter` streams with the Bag of
Tricks augmentation.

data.root holds `train.rec/.idx` and `val.rec/.idx`, written by `gluon-tricks prepare`
(data/prepare.py, with `train.classes.txt`) or by MXNet's own `tools/im2rec.py` (with
`train.lst`, no classes list: the number of classes is then read from the labels the
records carry).

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


# dmlc-core's recordio.h: each record is this magic number, a word holding a 3-bit
# continuation flag and a 29-bit length, then the data (MXNet's IRHeader, then the image).
_RECORD_MAGIC = 0xCED7230A
_IR_HEADER_BYTES = 24  # struct IfQQ: flag, label, id, id2 (mx.recordio._IR_FORMAT)


def _idx_offsets(idx: Path) -> dict[int, int]:
    with open(idx) as f:
        return {int(k): int(v) for k, v in (line.split("\t")[:2] for line in f if line.strip())}


def record_labels(rec: Path, idx: Path, keys=None) -> dict[int, float]:
    """Record id -> the (first) label its IRHeader carries, for `keys` (default: all). Reads
    only each record's first bytes: ImageNet's 1.28 M headers, not its 140 GB of JPEGs."""
    import struct

    import mxnet as mx

    offsets = _idx_offsets(idx)
    out, reader = {}, None
    with open(rec, "rb") as f:
        for key in (offsets if keys is None else keys):
            f.seek(offsets[key])
            frame = f.read(8)
            magic, word = struct.unpack("<II", frame) if len(frame) == 8 else (None, 0)
            if magic != _RECORD_MAGIC:
                raise UserError(f"{shown(rec)}: no record starts where {shown(idx)} puts record {key}; the two files "
                                "do not belong together (make them again, or check them with `gluon-tricks check-records`)")
            length = word & ((1 << 29) - 1)
            if word >> 29:  # a record split around an embedded magic number: MXNet reassembles it
                reader = reader or mx.recordio.MXIndexedRecordIO(str(idx), str(rec), "r")
                header, _ = mx.recordio.unpack(reader.read_idx(key))
            else:
                head = f.read(min(length, _IR_HEADER_BYTES))
                flag = struct.unpack_from("<I", head)[0]  # > 0: that many float labels follow
                header, _ = mx.recordio.unpack(head + f.read(min(4 * flag, length - len(head))))
            out[key] = float(np.ravel(header.label)[0])
        if reader is not None:
            reader.close()
    return out


def read_lst(lst: Path) -> dict[int, float]:
    """Record id -> label of an im2rec / prepare `.lst` (id, label(s), path; tab-separated)."""
    out = {}
    with open(lst) as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            try:
                out[int(parts[0])] = float(parts[1])
            except (ValueError, IndexError):
                raise UserError(f"{shown(lst)} line {n} is not 'id<TAB>label<TAB>path' (im2rec's .lst format)") from None
    return out


def _classes_from_labels(labels, where: str) -> int | None:
    values = np.fromiter(labels, np.float64)
    if not len(values):
        return None
    bad = values[(values < 0) | (values != np.round(values))]
    if len(bad):
        raise UserError(f"{where} carries label {bad[0]:g}; class labels must be 0, 1, 2, ... (make the files "
                        "again with one class folder per class)")
    return int(values.max()) + 1


def record_classes(root: Path, scan: bool = True, sample: int = 256) -> int | None:
    """How many classes train.rec's labels span. `gluon-tricks prepare` lists them in
    train.classes.txt. MXNet's tools/im2rec.py writes no such list: one more than the largest
    label then, read from its train.lst after checking `sample` records spread over the file
    carry the .lst's labels, or from every record's header without a .lst (only with `scan`).
    None when unknown."""
    known = read_classes(root)
    if known is not None:
        return known
    rec, idx, lst = root / "train.rec", root / "train.idx", root / "train.lst"
    if not (rec.is_file() and idx.is_file()):
        return None
    if lst.is_file():
        listed = read_lst(lst)
        keys = sorted(_idx_offsets(idx))
        picks = keys[:: max(1, len(keys) // sample)][:sample]
        carried = record_labels(rec, idx, picks)
        for key in picks:
            if listed.get(key) != carried[key]:
                said = "no row" if key not in listed else f"label {listed[key]:g}"
                raise UserError(f"{shown(lst)} does not describe {shown(rec)}: record {key} carries label "
                                f"{carried[key]:g}, the .lst has {said}; remove the stale .lst (the labels are then "
                                "read from the records) or make both files again")
        return _classes_from_labels(listed.values(), shown(lst))
    if not scan:
        return None
    return _classes_from_labels(record_labels(rec, idx).values(), shown(rec))


def lst_class_labels(lst: Path) -> dict[str, float]:
    """Class folder -> label, from the paths of a .lst (`im2rec.py --recursive` numbers the
    folders of each split in sorted order, on their own)."""
    out = {}
    with open(lst) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            folder = parts[-1].split("/")[0] if "/" in parts[-1] else None
            if folder is not None and len(parts) >= 3:
                out.setdefault(folder, float(parts[1]))
    return out


def check_val_lst_classes(root: Path) -> None:
    """Without classes lists (files made by im2rec.py), val's labels must be train's numbers
    for the same class folders: im2rec numbers a val/ that lacks a class differently."""
    lsts = [root / f"{part}.lst" for part in ("train", "val")]
    if (root / "train.classes.txt").is_file() or not all(p.is_file() for p in lsts):
        return
    train, val = (lst_class_labels(p) for p in lsts)
    wrong = [c for c in val if c in train and val[c] != train[c]]
    if wrong:
        c = wrong[0]
        raise UserError(f"{shown(lsts[1])} labels class folder {shown(c)!r} {val[c]:g} but train.lst labels it "
                        f"{train[c]:g} ({len(wrong)} folders differ): im2rec.py numbered val's folders on their own, "
                        "so labels would not match; make val with `gluon-tricks prepare` beside train, which labels "
                        "val by train's class names")


def check_val_classes(root: Path) -> None:
    """val's labels are numbers in its classes.txt: they must be train's numbers."""
    check_val_lst_classes(root)
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


class RecordImages:
    """(HWC uint8 RGB image, label) of the records of a .rec/.idx pair, as Gluon's
    ImageRecordDataset indexes them, decoded by OpenCV in the calling thread."""

    def __init__(self, rec: Path, idx: Path):
        import threading

        import mxnet as mx

        self.rec = rec
        self.reader = mx.recordio.MXIndexedRecordIO(str(idx), str(rec), "r")
        self.keys = list(self.reader.keys)
        self.lock = threading.Lock()  # one file handle: a seek and read from two loader threads race

    def __len__(self):
        return len(self.keys)

    def load(self, i: int) -> tuple[np.ndarray, int]:
        import mxnet as mx

        from gluon_tricks.data.images import decode

        try:
            with self.lock:
                raw = self.reader.read_idx(self.keys[i])
            header, buf = mx.recordio.unpack(raw)
            img = decode(buf)
            if img is None:
                raise ValueError(f"record {self.keys[i]} does not decode")
        except Exception as e:  # MXNet, struct and OpenCV errors share no type
            raise _record_error(self.rec, e) from None
        return img, int(np.ravel(header.label)[0])


def iterator_device(contexts) -> int:
    """ImageRecordIter's device_id for a run on `contexts`. Its output batches live in
    CUDA-pinned host memory of that GPU (iter_image_recordio_2.cc in 1.9.1), so the default 0
    opens a CUDA context on GPU 0 in a process that trains on another GPU. -1: plain host
    memory, for CPU runs."""
    first = contexts[0] if contexts else None
    return first.device_id if first is not None and first.device_type == "gpu" else -1


def decode_threads(cores_: int) -> int:
    """ImageRecordIter's preprocess_threads: every core but one in eight (at most 4), which
    stay with the thread that dispatches the GPUs' work and with MXNet's engine; 60 of 64 on a
    p3.16xlarge, the number GluonCV's ImageNet scripts used there."""
    return max(1, cores_ - min(4, cores_ // 8))


def record_train_stream(recipe, root: Path, rank: int, workers: int, device_id: int = -1):
    """The training stream of train.rec: MXNet's C++ ImageRecordIter (fast), except when its
    random-resized crop would be wrong. ImageRecordIter 1.9.1 resizes the crop into the very
    buffer it reads from when the decoded image already has the output size
    (apache/mxnet#16925, open): rows below the first few are then resized again from rows it has
    just written, a smeared image instead of a crop. Measured on 32x32 records at image_size 32:
    7 of 10 crops corrupt (docs/imagenet.md). Such files are read record by record with the
    image folders' augmentation (images.py), which crops by the definition."""
    spec = recipe.data
    RecordTrainStream.check_files(root)
    if spec.augment == "none":
        return RecordTrainStream(recipe, root, rank, workers, device_id)
    rec, idx = root / "train.rec", root / "train.idx"
    hits, looked = records_at_size(rec, idx, spec.image_size)
    if not hits:
        return RecordTrainStream(recipe, root, rank, workers, device_id)
    from gluon_tricks.data.folders import ThreadedTrainStream

    print(f"note: {hits} of {looked} sampled images in {shown(rec)} are {spec.image_size}x{spec.image_size}, the "
          "training size, which MXNet's ImageRecordIter crops wrongly (apache/mxnet#16925); reading them with "
          f"the image folders' augmentation instead (slower; `gluon-tricks prepare --resize "
          f"{spec.image_size + spec.image_size // 8}` keeps the fast reader)", file=sys.stderr, flush=True)
    return ThreadedTrainStream(recipe, RecordImages(rec, idx), rank, workers, str(rec))


class RecordTrainStream:
    def __init__(self, recipe, root: Path, rank: int, workers: int, device_id: int = -1):
        import mxnet as mx

        spec = recipe.data
        rec, idx = root / "train.rec", root / "train.idx"
        self.rec = rec
        self.check_files(root)
        self.batch_size = spec.batch_size // workers
        records = count_records(idx)
        self.image_count = min(records, spec.train_limit) if spec.train_limit else records
        self.steps = records // workers // self.batch_size
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
                preprocess_threads=decode_threads(cores()), device_id=device_id, **augment, **iter_norm(spec))
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
    def __init__(self, recipe, root: Path, device_id: int = -1):
        spec = recipe.data
        self.rec, self.idx = root / "val.rec", root / "val.idx"
        for p in (self.rec, self.idx):
            if not p.is_file():
                raise UserError(f"{p} not found; create it with `gluon-tricks prepare IMAGES/val {root}/val`")
        check_val_classes(root)
        self.n = count_records(self.idx)
        if spec.test_limit:
            self.n = min(self.n, spec.test_limit)
        self.spec, self.device_id = spec, device_id

    def __len__(self) -> int:
        return self.n

    def batches(self):
        import mxnet as mx

        s = self.spec.image_size
        it = mx.io.ImageRecordIter(path_imgrec=str(self.rec), path_imgidx=str(self.idx), data_shape=(3, s, s),
                                   batch_size=self.spec.batch_size, resize=val_resize(self.spec), shuffle=False,
                                   round_batch=False, preprocess_threads=decode_threads(cores()),
                                   device_id=self.device_id,
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
