"""`launch` stops a job in order and leaves nothing behind: real jobs on 127.0.0.1."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gluon_tricks.recipe import recipe_from_dict, to_toml
from gluon_tricks.results import RunDir

ROOT = Path(__file__).resolve().parent.parent


def recipe(tmp_path, **extra):
    d = {"name": "dist", "epochs": 30, "seed": 3,
         "data": {"dataset": "cifar10-mini", "batch_size": 32, "train_limit": 192, "test_limit": 32},
         "model": {"name": "cifar_resnet20_v1"}, "system": {"log_interval": 1}}
    d.update(extra)
    path = tmp_path / "dist.toml"
    path.write_text(to_toml(recipe_from_dict(d)))
    return path


def launch(args):
    return subprocess.Popen([sys.executable, "-m", "gluon_tricks", "launch", *map(str, args)], cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def started_pids(proc, n, timeout=60):
    """The launcher's `started X (pid N)` lines, read as they come."""
    pids, lines, t0 = {}, [], time.time()
    while len(pids) < n and time.time() - t0 < timeout:
        line = proc.stderr.readline()
        lines.append(line)
        m = re.search(r"started (.+) \(pid (\d+)\)", line)
        if m:
            pids[m.group(1)] = int(m.group(2))
    assert len(pids) == n, lines
    return pids


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"  # a zombie has already exited
    except FileNotFoundError:
        return False


def wait_gone(pids: dict, timeout):
    """The names of the roles still alive after up to `timeout` seconds."""
    t0 = time.time()
    while any(alive(p) for p in pids.values()) and time.time() - t0 < timeout:
        time.sleep(0.2)
    return [name for name, p in pids.items() if alive(p)]


def kill_leftovers(pids):
    for p in pids:
        if alive(p):
            os.kill(p, signal.SIGKILL)


def wait_for_epoch_checkpoint(run, proc, timeout=120):
    t0 = time.time()
    while not RunDir(run).checkpoints():
        assert proc.poll() is None and time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.1)


def test_bad_recipe_is_one_error_exit_2_and_starts_nothing(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    proc = launch(["-n", 2, "--", "train", tmp_path / "a.toml", "--out", tmp_path / "run"])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.count("cyclic extends") == 1 and "started" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_sigterm_to_the_launcher_checkpoints_and_stops_every_role(tmp_path):
    run = tmp_path / "run"
    proc = launch(["-n", 2, "-s", 1, "--", "train", recipe(tmp_path), "--out", run, "--quiet"])
    pids = started_pids(proc, 4)
    try:
        # children run in their own process groups: a terminal's Ctrl-C reaches only the launcher
        assert all(os.getpgid(p) != os.getpgid(proc.pid) for p in pids.values())
        wait_for_epoch_checkpoint(run, proc)
        time.sleep(1.0)  # into the next epoch
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert wait_gone(pids, 5) == [], err
        # the workers stopped before the servers, so rank 0 finished its step and checkpointed where it
        # stopped: past the epoch-end checkpoint waited for above (an epoch is 3 steps here, so under
        # load the stop can land on the last step of an epoch: then the position is the next epoch's start)
        # (only rank 0 writes checkpoints: the other worker's line says "checkpoint None")
        saved = [p for p in re.findall(r"stopped at epoch \d+, step \d+; checkpoint (\S+);", err) if p != "None"]
        assert len(saved) == 1, err
        newest = RunDir(run).latest_checkpoint(quiet=True)
        assert Path(saved[0]).name == newest.path.name, (saved, newest.path)
        assert (newest.state["next_epoch"], newest.state["next_step"]) > (1, 0), newest.path
    finally:
        proc.kill()
        kill_leftovers(pids.values())


def test_sighup_to_the_launcher_stops_every_role(tmp_path):
    proc = launch(["-n", 2, "-s", 1, "--", "train", recipe(tmp_path), "--out", tmp_path / "run", "--quiet"])
    pids = started_pids(proc, 4)
    try:
        time.sleep(3)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGHUP, err
        assert wait_gone(pids, 5) == [], err
    finally:
        proc.kill()
        kill_leftovers(pids.values())


def test_children_die_with_a_killed_launcher(tmp_path):
    proc = launch(["-n", 2, "-s", 1, "--", "train", recipe(tmp_path), "--out", tmp_path / "run", "--quiet"])
    pids = started_pids(proc, 4)
    try:
        time.sleep(2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)  # not communicate(): orphans would hold its pipes open
        assert wait_gone(pids, 10) == []
    finally:
        kill_leftovers(pids.values())
