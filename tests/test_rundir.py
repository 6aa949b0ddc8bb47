"""Run directories: only our own runs are replaced, one process at a time, and no kill
during creation leaves a directory that blocks the next command."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gluon_tricks.errors import UserError, shown
from gluon_tricks.results import RunDir

HASH = "0123456789abcdef"


def prepare(path, resume=False, overwrite=False, h=HASH):
    RunDir(path).prepare(h, "tiny", "epochs = 1\n", resume, overwrite)


def test_another_tools_run_json_survives_overwrite(tmp_path):
    # A Sacred run directory (run.json is Sacred's own format) is not a gluon-tricks run.
    d = tmp_path / "sacred" / "1"
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"experiment": {"name": "my_exp"}, "status": "COMPLETED"}))
    (d / "metrics.json").write_text("{}")
    (d / "model.bin").write_bytes(b"\0" * 10)
    with pytest.raises(UserError, match="not a gluon-tricks run"):
        prepare(d, overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == ["metrics.json", "model.bin", "run.json"]


@pytest.mark.parametrize("text", ["[1, 2]", "\"run\"", "null", "{\"hash\": 3}"])
def test_run_json_that_is_not_an_object_is_not_a_run(tmp_path, text):
    d = tmp_path / "r"
    d.mkdir()
    (d / "run.json").write_text(text)
    (d / "keep.txt").write_text("mine")
    for kw in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(UserError, match="not a gluon-tricks run"):
            prepare(d, **kw)
    assert (d / "keep.txt").read_text() == "mine"


def test_overwrite_deletes_only_what_a_run_writes(tmp_path):
    d = tmp_path / "r"
    prepare(d)
    info = json.loads((d / "run.json").read_text())
    assert info["tool"] == "gluon-tricks" and isinstance(info["format"], int)
    (d / "result.json").write_text("{}")
    (d / "metrics.jsonl").write_text("{}\n")
    (d / "checkpoints" / "epoch0001-step0000000").mkdir(parents=True)
    (d / "notes.md").write_text("my notes about this run")
    prepare(d, overwrite=True, h="fedcba9876543210")
    assert sorted(p.name for p in d.iterdir() if p.name != ".lock") == ["notes.md", "recipe.toml", "run.json"]
    assert json.loads((d / "run.json").read_text())["hash"] == "fedcba9876543210"


def test_a_run_json_without_the_marker_is_not_a_run(tmp_path):
    # another tool's run.json, or one of a run written before the marker (2026-11-25): refused, nothing deleted
    d = tmp_path / "old"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"hash": HASH, "name": "tiny"}))
    (d / "recipe.toml").write_text("epochs = 1\n")
    (d / "result.json").write_text("{}")
    with pytest.raises(UserError, match="not a gluon-tricks run"):
        prepare(d, overwrite=True)
    assert (d / "result.json").exists()


def test_leftover_temp_files_of_a_killed_creation_do_not_block(tmp_path):
    # kill -9 while recipe.toml was being written: only its temporary file is left.
    for leftover in (".recipe.toml.tmp24704", ".run.json.tmp24704"):
        d = tmp_path / leftover
        d.mkdir()
        (d / leftover).write_text("epochs")
        prepare(d)  # the plain command
        assert (d / "run.json").exists() and not (d / leftover).exists()
    d = tmp_path / "resume"
    d.mkdir()
    (d / ".recipe.toml.tmp1").write_text("")
    prepare(d, resume=True)
    d = tmp_path / "overwrite"
    d.mkdir()
    (d / ".recipe.toml.tmp1").write_text("")
    prepare(d, overwrite=True)


def test_run_json_is_written_before_recipe_toml(tmp_path, monkeypatch):
    import gluon_tricks.atomic as atomic

    order = []
    real = atomic.atomic_write_bytes
    monkeypatch.setattr(atomic, "atomic_write_bytes", lambda p, data: (order.append(Path(p).name), real(p, data)))
    prepare(tmp_path / "r")
    assert order.index("run.json") < order.index("recipe.toml")


def test_a_second_process_is_refused_while_the_first_holds_the_run(tmp_path):
    d = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from gluon_tricks.results import RunDir\n"
        f"RunDir({str(d)!r}).prepare({HASH!r}, 'tiny', 'epochs = 1\\n', False, False)\n"
        "print('ready', flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for kw in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(UserError, match=f"pid {holder.pid}") as e:
                prepare(d, **kw)
            assert "\n" not in str(e.value)
        assert (d / "run.json").exists()
    finally:
        holder.communicate("", timeout=30)
    prepare(d, resume=True)  # free again once the holder has exited


def test_read_only_and_too_long_paths_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="File name too long"):
        prepare(tmp_path / ("x" * 5000))
    # A read-only filesystem (the tests run as root, so chmod cannot make one): mkdir fails
    # with EROFS exactly as on a read-only mount.
    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(UserError, match="Read-only file system"):
        prepare(tmp_path / "ro" / "run")


def test_shown_escapes_control_characters():
    assert shown("a\nb") == "a\\nb"
    assert shown("x\x1b]0;pwned\x07\x1b[2J.png") == "x\\x1b]0;pwned\\x07\\x1b[2J.png"
    assert shown("café\tz") == "café\\tz"
    assert shown(Path("/tmp/ok name")) == "/tmp/ok name"
