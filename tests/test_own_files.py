"""Nothing the tool did not create is deleted, truncated or overwritten (red team 2, causes
1-4, 14, 16: probes 7.27, 9.1, 9.2, 9.6, 9.7, 9.8, 9.11, 6.1, 6.3)."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest

from gluon_tricks.cli import main
from gluon_tricks.data.recordio import check_records, prepare
from gluon_tricks.errors import UserError


def image_tree(root: Path, classes="abc", per_class=3) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / name / f"{i}.png"), np.full((12, 12, 3), 80 * c + i, np.uint8))
    return root


def corrupt_record(prefix: Path, key: int) -> None:
    reader = mx.recordio.MXIndexedRecordIO(f"{prefix}.idx", f"{prefix}.rec", "r")
    pos = reader.idx[key]
    reader.close()
    data = bytearray(Path(f"{prefix}.rec").read_bytes())
    data[pos + 8:pos + 40] = b"\xff" * 32  # the record's header and the start of its image
    Path(f"{prefix}.rec").write_bytes(bytes(data))


@pytest.fixture
def records(tmp_path):
    prefix = tmp_path / "rec" / "train"
    prepare(image_tree(tmp_path / "img"), prefix, workers=1, progress=False)
    corrupt_record(prefix, 4)
    return prefix


def snapshot(prefix: Path) -> dict:
    return {p.name: p.read_bytes() for p in prefix.parent.iterdir()}


# -- cause 1: check-records --repair ------------------------------------------------------------
def test_repair_onto_its_own_input_is_refused_and_nothing_is_touched(records, capsys):
    # probe 7.27: `check-records P --repair P` truncated P.rec and P.idx to 0 bytes
    before = snapshot(records)
    assert main(["check-records", str(records), "--repair", str(records)]) == 2
    err = capsys.readouterr().err
    assert "would write over the records it reads" in err and err.count("\n") == 1
    assert snapshot(records) == before
    # the same files named another way (a symlinked directory)
    os.symlink(records.parent, records.parent.parent / "alias")
    with pytest.raises(UserError, match="would write over"):
        check_records(records, records.parent.parent / "alias" / "train")
    assert snapshot(records) == before


def test_repair_onto_an_existing_file_is_refused(records):
    (records.parent / "clean.idx").write_text("someone's index")
    with pytest.raises(UserError, match="clean.idx already exists"):
        check_records(records, records.parent / "clean")
    assert (records.parent / "clean.idx").read_text() == "someone's index"
    assert not (records.parent / "clean.rec").exists()


def test_repair_writes_a_whole_dataset_under_temporary_names_first(records, monkeypatch):
    clean = records.parent / "clean"
    info = check_records(records, clean)
    assert info == {"records": 9, "bad": [4]}
    assert check_records(clean) == {"records": 8, "bad": []}
    assert (records.parent / "clean.classes.txt").read_text() == "a\nb\nc\n"
    lst = [l.split("\t") for l in (records.parent / "clean.lst").read_text().splitlines()]
    assert [int(row[0]) for row in lst] == list(range(8))  # renumbered like the records
    original = {row[2]: row[1] for row in (l.split("\t") for l in Path(f"{records}.lst").read_text().splitlines())}
    assert all(original[path] == label for _, label, path in lst) and len(original) == 9

    # a failure while writing leaves nothing under the final names
    def full(self, idx, buf):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mx.recordio.MXIndexedRecordIO, "write_idx", full)
    with pytest.raises(UserError, match="the disk is full; nothing was written"):
        check_records(records, records.parent / "again")
    assert not [p for p in records.parent.iterdir() if "again" in p.name]
