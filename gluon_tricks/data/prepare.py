"""Class folders -> MXNet RecordIO (.rec/.idx/.lst), offline: `gluon-tricks prepare` and
`gluon-tricks check-records`. Imported only by the CLI (training reads the files through
data/recordio.py).

`prepare` writes `<out>.rec/.idx/.lst/.classes.txt` (and `.skipped.txt`, the unreadable
images); labels are the sorted class-folder names of train, and val is labelled by train's
`train.classes.txt` when it sits beside it. `check_records` decodes every record and can
write a repaired copy without the bad ones.
"""
from __future__ import annotations

import errno
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from gluon_tricks.data.streams import train_class_index
from gluon_tricks.errors import UserError, first_line, shown
from gluon_tricks.paths import cores


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(src: Path) -> tuple[list[tuple[int, str]], list[str]]:
    """(label, relative path) of every image, labels by sorted class-folder name.

    A class folder that resolves to `src` or one of its ancestors (`train/z -> .`) is not a
    class: following it would list every image a second time under a phantom label
    (reliability-redteam-2 probe 7.18)."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"image folder {shown(src)} not found; it needs one sub-folder per class")
    here = src.resolve()
    classes = sorted(d.name for d in src.iterdir() if d.is_dir() and d.resolve() not in (here, *here.parents))
    if not classes:
        raise UserError(f"{shown(src)} has no class sub-folders (expected {shown(src)}/<class>/<image>.jpg)")
    not_utf8 = [c for c in classes if not _is_utf8(c)]
    if not_utf8:  # classes.txt, which training reads back, is UTF-8 text
        raise UserError(f"class folder name {shown(not_utf8[0])} is not UTF-8; rename it (nothing was written)")
    items = []
    for label, name in enumerate(classes):
        for f in sorted((src / name).rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                items.append((label, str(f.relative_to(src))))
    return items, classes


def _is_utf8(name: str) -> bool:
    """False for a name Python decoded with surrogate escapes (its bytes are not UTF-8)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _encode(args):
    """Worker: read, resize the shorter side, re-encode as JPEG. None if unreadable.

    The file is read by Python and decoded from memory: `cv2.imread` takes the name as a
    C string and segfaults on one that is not UTF-8 (probe 7.20)."""
    import cv2

    path, resize, quality = args
    try:
        raw = np.fromfile(path, dtype=np.uint8)
        img = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    except (OSError, cv2.error):  # a dangling or looping link, a directory named .jpg
        return None
    if img is None:
        return None
    if resize > 0:
        h, w = img.shape[:2]
        scale = resize / min(h, w)
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else None


# What `_encoded` yields for a file whose decoder killed the worker process.
CRASHED = object()
# Files handed to the pool at a time: after a crash, only these are retried one by one.
BLOCK = 512


def _encoded(jobs: list, workers: int):
    """`_encode` of each job, in order, on `workers` processes. A decoder that kills its
    process (a segfault in OpenCV or libjpeg) breaks a `ProcessPoolExecutor` at once, where
    `multiprocessing.Pool` waited forever for the lost task (probe 7.20): the block is then
    retried one file at a time, and the file that kills a process again gets CRASHED."""
    pool = ProcessPoolExecutor(workers)
    try:
        for start in range(0, len(jobs), BLOCK):
            block = jobs[start:start + BLOCK]
            try:
                results = list(pool.map(_encode, block, chunksize=16))
            except BrokenProcessPool:
                pool.shutdown(wait=True)
                results = _encode_one_by_one(block)
                pool = ProcessPoolExecutor(workers)
            yield from results
    finally:
        pool.shutdown(wait=True)


def _encode_one_by_one(block: list) -> list:
    out, one = [], ProcessPoolExecutor(1)
    try:
        for job in block:
            try:
                out.append(one.submit(_encode, job).result())
            except BrokenProcessPool:
                out.append(CRASHED)
                one.shutdown(wait=True)
                one = ProcessPoolExecutor(1)
    finally:
        one.shutdown(wait=True)
    return out


# Characters that would break a tab-separated .lst row (im2rec's format) or a listing line.
_UNSAFE_NAME = ("\t", "\n", "\r")


def label_classes(src_classes: list[str], out_prefix: Path) -> list[str]:
    """The class list labels are numbered by: train's (`<dir>/train.classes.txt`, when
    preparing another split beside it), so a val/ lacking a class keeps train's labels;
    else the source's own sorted folders."""
    train_list = out_prefix.parent / "train.classes.txt"
    if out_prefix.name == "train" or not train_list.is_file():
        return src_classes
    return [l for l in train_list.read_text().splitlines() if l]


def prepare(src: Path, out_prefix: Path, resize: int = 0, quality: int = 95, workers: int = 0,
            progress: bool = True) -> dict:
    """Class folders -> OUT.rec + OUT.idx + OUT.lst (+ OUT.classes.txt, OUT.skipped.txt).

    The records are MXNet's own format (`mx.recordio.MXIndexedRecordIO`, IRHeader + JPEG
    bytes), the same as `tools/im2rec.py` writes; we run the loop ourselves because im2rec
    only prints unreadable files, and here they must be skipped *and* listed.

    Atomic: everything is written under temporary names and renamed only at the end
    (.rec/.idx/.lst/.classes.txt last), so a kill or a full disk leaves no output that
    looks complete. `.lst` has one row per written record: record id, label, path."""
    import mxnet as mx

    src, out_prefix = Path(src), Path(out_prefix)
    items, src_classes = list_images(src)
    blocking = next((p for p in out_prefix.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UserError(f"{shown(blocking)} is a file, so {shown(out_prefix)}.rec cannot be written under it; "
                        "choose an output prefix inside a directory (nothing was written)")
    unsafe = [rel for _, rel in items if any(c in rel for c in _UNSAFE_NAME)]
    if unsafe:
        raise UserError(f"{len(unsafe)} file name(s) contain a tab or line break, which the .lst index cannot "
                        f"hold, e.g. {shown(unsafe[0])[:200]}; rename them (nothing was written)")
    classes = label_classes(src_classes, out_prefix)
    labels = train_class_index(src_classes, classes, str(src))
    items = [(labels[label], rel) for label, rel in items]
    # Shuffled once, with a fixed seed (as im2rec does by default): ImageRecordIter gives
    # each worker a contiguous part of the file (part_index/num_parts), so records written
    # class by class would give each worker of a distributed job only some of the classes.
    items = [items[i] for i in np.random.default_rng(100).permutation(len(items))]
    finals = {ext: Path(f"{out_prefix}.{ext}") for ext in ("rec", "idx", "lst", "classes.txt", "skipped.txt")}
    temps = {ext: p.with_name(f".{p.name}.tmp{os.getpid()}") for ext, p in finals.items()}
    try:
        out_prefix.parent.mkdir(parents=True, exist_ok=True)
        info = _write_records(src, items, classes, temps, resize, quality, workers, progress, out_prefix.name)
        # skipped.txt first, the four files that make a dataset last: a kill in between
        # leaves no .rec/.idx pair that looks complete without its .lst and classes.
        for ext in ("skipped.txt", "lst", "classes.txt", "idx", "rec"):
            os.replace(temps[ext], finals[ext])
    except (OSError, mx.MXNetError) as e:
        _remove(temps.values())
        raise UserError(f"could not write {shown(out_prefix)}.rec/.idx/.lst: {_why_not_written(e)}; nothing was "
                        "written (free space or choose another output)") from None
    return info


def _why_not_written(e: Exception) -> str:
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    return getattr(e, "strerror", None) or first_line(e, 160)


def _remove(paths) -> None:
    """Best effort: a temporary file that cannot be removed must not hide the error being raised."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def _write_records(src, items, classes, temps, resize, quality, workers, progress, name) -> dict:
    import mxnet as mx

    temps["classes.txt"].write_text("\n".join(classes) + "\n")
    record = mx.recordio.MXIndexedRecordIO(str(temps["idx"]), str(temps["rec"]), "w")
    jobs = [(str(src / rel), resize, quality) for _, rel in items]
    skipped = []
    workers = workers or cores()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"prepare {name}", unit="img")
    written, crashed = 0, []
    try:
        # surrogateescape: a file name that is not UTF-8 is listed with its own bytes
        with open(temps["lst"], "w", encoding="utf-8", errors="surrogateescape") as lst:
            for i, encoded in enumerate(_encoded(jobs, workers)):
                label, rel = items[i]
                if encoded is CRASHED:
                    crashed.append(rel)
                if encoded is None or encoded is CRASHED:
                    skipped.append(rel)
                else:
                    header = mx.recordio.IRHeader(0, float(label), written, 0)
                    record.write_idx(written, mx.recordio.pack(header, encoded))
                    lst.write(f"{written}\t{label}\t{rel}\n")
                    written += 1
                if bar is not None:
                    bar.update(1)
    finally:
        record.close()
        if bar is not None:
            bar.close()
    temps["skipped.txt"].write_text("".join(s + "\n" for s in skipped), encoding="utf-8", errors="surrogateescape")
    return {"records": written, "skipped": skipped, "crashed": crashed, "classes": len(classes)}


def check_records(prefix: Path, repair_to: Path | None = None) -> dict:
    """Decode every record of PREFIX.rec (via its .idx); list the ones that do not decode.
    With `repair_to`, write the good records to a new REPAIR.rec/.idx (the bad ones skipped
    and counted), plus REPAIR.lst and REPAIR.classes.txt when PREFIX has them:
    ImageRecordIter cannot skip a corrupt record, it stops the epoch.

    The repair is written under temporary names and renamed at the end (as `prepare` does),
    and never onto the files it reads: MXNet's writer truncates its files when it opens them."""
    import mxnet as mx

    prefix = Path(prefix)
    rec_path, idx_path = Path(f"{prefix}.rec"), Path(f"{prefix}.idx")
    for p in (rec_path, idx_path):
        if not p.is_file():
            raise UserError(f"{shown(p)} not found; give the prefix of a .rec/.idx pair, e.g. data/imagenet/train")
    finals, temps = {}, {}
    if repair_to is not None:
        finals = {ext: Path(f"{repair_to}.{ext}") for ext in REPAIR_FILES}
        _refuse_repair_onto(prefix, repair_to, finals)
        temps = {ext: p.with_name(f".{p.name}.tmp{os.getpid()}") for ext, p in finals.items()}
    reader = mx.recordio.MXIndexedRecordIO(str(idx_path), str(rec_path), "r")
    try:
        writer = mx.recordio.MXIndexedRecordIO(str(temps["idx"]), str(temps["rec"]), "w") if temps else None
        bad, kept = _sort_records(reader, writer)
        trailing = rec_path.stat().st_size - _end_of_indexed_records(reader)
        if writer is not None:
            writer.close()
            _write_repair_extras(prefix, kept, temps)
            # .rec last: a kill before it leaves no pair that looks complete
            for ext in ("lst", "classes.txt", "idx", "rec"):
                if temps[ext].exists():
                    os.replace(temps[ext], finals[ext])
    except (OSError, mx.MXNetError) as e:
        if not temps:
            raise
        raise UserError(f"could not write {shown(repair_to)}.rec/.idx: {_why_not_written(e)}; nothing was written "
                        "(free space or choose another output)") from None
    finally:
        reader.close()
        _remove(temps.values())
    if trailing:
        bad.append(f"{trailing} bytes after the last indexed record")
    return {"records": len(kept) + len([b for b in bad if isinstance(b, int)]), "bad": bad}


def _sort_records(reader, writer) -> tuple[list[int], dict[int, int]]:
    """(the keys of the records that do not decode, {old key: new key} of those that do);
    the good ones are written to `writer`, renumbered from 0, when there is one."""
    import cv2
    import mxnet as mx

    bad, kept = [], {}
    for key in reader.keys:
        try:
            header, payload = mx.recordio.unpack(reader.read_idx(key))
            ok = payload and cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR) is not None
        except Exception:  # a damaged header raises from the unpacking itself
            ok = False
        if not ok:
            bad.append(key)
            continue
        if writer is not None:
            writer.write_idx(len(kept), mx.recordio.pack(header._replace(id=len(kept)), payload))
        kept[key] = len(kept)
    return bad, kept


def _end_of_indexed_records(reader) -> int:
    """Where the last indexed record ends in the .rec. A record started but never indexed (a
    kill mid-write) sits after it; ImageRecordIter reads the .rec sequentially and aborts on
    it, so the last indexed record must end exactly at the end of the file (dmlc's 8-byte
    record header, the data padded to 4 bytes)."""
    if not reader.keys:
        return 0
    last = max(reader.keys, key=lambda k: reader.idx[k])
    reader.seek(last)
    return reader.idx[last] + 8 + ((len(reader.read()) + 3) // 4) * 4


REPAIR_FILES = ("rec", "idx", "lst", "classes.txt")


def _refuse_repair_onto(prefix: Path, repair_to: Path, finals: dict) -> None:
    """A repair must not replace the pair it reads (red team 7.27: written in place, both
    files were truncated to 0 bytes) nor any other existing dataset."""
    sources = {Path(f"{prefix}.{ext}").resolve() for ext in REPAIR_FILES}
    onto = [p for p in finals.values() if p.resolve() in sources]
    if onto:
        raise UserError(f"--repair {shown(repair_to)} would write over the records it reads; "
                        f"give a new prefix, e.g. {shown(prefix)}-clean (nothing was written)")
    existing = [p for p in finals.values() if p.exists() or p.is_symlink()]
    if existing:
        raise UserError(f"{shown(existing[0])} already exists; give --repair a new prefix, or move the old "
                        "files away (nothing was written)")


def _write_repair_extras(prefix: Path, kept: dict, temps: dict) -> None:
    """REPAIR.classes.txt (a copy) and REPAIR.lst (the kept rows, renumbered), so the repaired
    prefix is a dataset like `prepare`'s output."""
    classes = Path(f"{prefix}.classes.txt")
    if classes.is_file():
        temps["classes.txt"].write_bytes(classes.read_bytes())
    lst = Path(f"{prefix}.lst")
    if lst.is_file():
        rows = []
        for line in lst.read_text().splitlines():
            key, sep, rest = line.partition("\t")
            if sep and key.strip().isdigit() and int(key) in kept:
                rows.append(f"{kept[int(key)]}\t{rest}\n")
        temps["lst"].write_text("".join(rows))
