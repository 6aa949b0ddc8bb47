"""Nothing lost, nothing cryptic: each guarantee of docs/reliability.md done on purpose."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

import gluon_tricks.engine as engine
from gluon_tricks.engine import train
from gluon_tricks.errors import DivergenceError, UserError
from gluon_tricks.recipe import recipe_from_dict, to_toml
from gluon_tricks.results import RunDir

ROOT = Path(__file__).resolve().parent.parent


def tiny(tmp_path, epochs=3, **extra):
    d = {"name": "tiny", "epochs": epochs, "data": {"dataset": "cifar10-mini", "batch_size": 32, "train_limit": 256,
                                                      "test_limit": 64},
         "model": {"name": "cifar_resnet20_v1"}, "schedule": {"kind": "cosine"}, "system": {"log_interval": 4}}
    d.update(extra)
    r = recipe_from_dict(d)
    path = tmp_path / "tiny.toml"
    path.write_text(to_toml(r))
    return r, path


def cli(*args, env=None, **kw):
    # One OpenMP thread: a tiny run with 2 threads on 2 cores shared with 3 busy processes took
    # 408 s instead of 18 s idle (each parallel region waits for a descheduled thread; 48 s with
    # 1 thread), and these tests' timeouts are hang guards, not speed checks.
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "gluon_tricks", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for_checkpoint(run: Path, proc, timeout=90):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if RunDir(run).checkpoints():
            return
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def final_params(run: Path):
    return mx.nd.load(str(RunDir(run).latest_checkpoint(quiet=True).params))


def rel_diff(a, b):
    """Largest |a - b| / (1 + |b|) over every parameter (BN running variances reach 1e2)."""
    assert a.keys() == b.keys()
    return max(float((mx.nd.abs(a[k] - b[k]) / (1 + mx.nd.abs(b[k]))).max().asscalar()) for k in a)


def epochs_in(run: Path):
    return [json.loads(l)["epoch"] for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_kill_9_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    # oneDNN off: its kernels depend on what ran before in the process, so only without it
    # is "the same run" bit-exact (docs/reliability.md); with it the gap is run-to-run noise.
    exact = {"MXNET_MKLDNN_ENABLED": "0", "MXNET_STORAGE_FALLBACK_LOG_VERBOSE": "0"}
    r, path = tiny(tmp_path)
    full = cli("train", path, "--out", tmp_path / "full", "--quiet", env=exact)
    _, err = full.communicate(timeout=180)
    assert full.returncode == 0, err
    run = tmp_path / "killed"
    proc = cli("train", path, "--out", run, "--quiet", env=exact)
    wait_for_checkpoint(run, proc)
    time.sleep(random.uniform(0.0, 0.4))  # somewhere inside the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = cli("train", path, "--out", run, "--resume", "--quiet", env=exact)
    out, err = done.communicate(timeout=180)
    assert done.returncode == 0, err
    assert epochs_in(run) == [0, 1, 2]
    assert rel_diff(final_params(tmp_path / "full"), final_params(run)) == 0.0


def test_crash_during_save_leaves_previous_checkpoint(tmp_path):
    r, path = tiny(tmp_path, epochs=2)
    run = tmp_path / "run"
    # a process that dies (os._exit) while writing its second checkpoint's trainer states
    code = (
        "import os, sys, mxnet as mx\n"
        "from gluon_tricks.cli import main\n"
        "real = mx.gluon.Trainer.save_states\n"
        "calls = []\n"
        "def dying(self, fname):\n"
        "    calls.append(fname)\n"
        "    if len(calls) == 2:\n"
        "        open(fname, 'wb').write(b'half')\n"
        "        os._exit(9)\n"
        "    real(self, fname)\n"
        "mx.gluon.Trainer.save_states = dying\n"
        f"sys.exit(main(['train', {str(path)!r}, '--out', {str(run)!r}, '--quiet']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9
    ckpt = RunDir(run).latest_checkpoint()
    assert ckpt is not None and ckpt.state["next_epoch"] == 1
    mx.nd.load(str(ckpt.params))  # loadable
    done = cli("train", path, "--out", run, "--resume", "--quiet")
    _, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    assert epochs_in(run) == [0, 1]
    assert not any(p.name.startswith(".tmp") for p in (run / "checkpoints").iterdir())


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
    r, _ = tiny(tmp_path, epochs=2)
    run = tmp_path / "run"
    train(r, run, progress=False)
    rd = RunDir(run)
    newest, previous = rd.checkpoints()[-1], rd.checkpoints()[-2]
    data = (newest / "net.params").read_bytes()
    (newest / "net.params").write_bytes(data[: len(data) // 2])
    assert rd.latest_checkpoint().path == previous
    assert "truncated or corrupt" in capsys.readouterr().err
    # flipped bytes, same length: caught by the checksum too
    flipped = bytearray((previous / "trainer.states").read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    (previous / "trainer.states").write_bytes(bytes(flipped))
    assert rd.latest_checkpoint() is None


def test_nan_loss_stops_with_epoch_step_and_last_checkpoint(tmp_path, monkeypatch):
    r, _ = tiny(tmp_path, epochs=2)
    real = engine._train_step

    def poisoned(job, trainer, x, labels, epoch, step):
        if epoch == 1 and step == 5:  # NaN targets (NaN images would not do: MXNet's relu maps NaN to 0)
            with monkeypatch.context() as m:
                m.setattr(engine, "smooth_targets", lambda y, k, *a: np.full((len(y), k), np.nan, np.float32))
                return real(job, trainer, x, labels, epoch, step)
        return real(job, trainer, x, labels, epoch, step)

    monkeypatch.setattr(engine, "_train_step", poisoned)
    with pytest.raises(DivergenceError) as e:
        train(r, tmp_path / "run", progress=False)
    msg = str(e.value)
    assert "at epoch 2, step 5" in msg and "epoch0001-step0000000" in msg and "\n" not in msg
    assert RunDir(tmp_path / "run").latest_checkpoint().state["next_epoch"] == 1


def poison_after_step(monkeypatch, n):
    """From the n-th optimizer step on, the update leaves NaN in the first parameter: the
    loss of that step (computed before the update) is still finite."""
    real = mx.gluon.Trainer.step
    calls = []

    def step(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) >= n:
            p = self._params[0]
            p.set_data(p.data() * float("nan"))

    monkeypatch.setattr(mx.gluon.Trainer, "step", step)


def all_finite(path):
    return all(np.isfinite(a.asnumpy()).all() for a in mx.nd.load(str(path)).values())


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    # One step per epoch: the step that poisons the weights is the last one before a save.
    r, _ = tiny(tmp_path, epochs=3, data={"dataset": "cifar10-mini", "batch_size": 32, "train_limit": 32,
                                          "test_limit": 32})
    run = tmp_path / "run"
    poison_after_step(monkeypatch, 2)
    with pytest.raises(DivergenceError) as e:
        train(r, run, progress=False)
    names = [p.name for p in RunDir(run).checkpoints()]
    assert names == ["epoch0001-step0000000"], names  # the epoch-2 save was refused
    assert all_finite(RunDir(run).checkpoints()[0] / "net.params")
    assert "epoch0001-step0000000" in str(e.value) and "\n" not in str(e.value)
    assert "epoch 2" in str(e.value)


def test_resume_skips_a_non_finite_checkpoint(tmp_path, capsys):
    import shutil

    from gluon_tricks.atomic import sha256_file

    r, _ = tiny(tmp_path, epochs=1, data={"dataset": "cifar10-mini", "batch_size": 32, "train_limit": 32,
                                          "test_limit": 32})
    run = tmp_path / "run"
    train(r, run, progress=False)
    rd = RunDir(run)
    good = rd.checkpoints()[-1]
    # A newer checkpoint with NaN weights and valid checksums (as one written before the guard).
    bad = good.parent / "epoch0001-step0000005"
    shutil.copytree(good, bad)
    arrays = mx.nd.load(str(bad / "net.params"))
    first = sorted(arrays)[0]
    arrays[first] = arrays[first] * float("nan")
    mx.nd.save(str(bad / "net.params"), arrays)
    state = json.loads((bad / "state.json").read_text())
    state["sha256"]["net.params"] = sha256_file(bad / "net.params")
    (bad / "state.json").write_text(json.dumps(state))
    assert rd.checkpoints()[-1] == bad
    capsys.readouterr()
    assert rd.latest_checkpoint().path == good
    assert "not finite" in capsys.readouterr().err


def test_nan_from_the_cli_is_one_line_exit_2(tmp_path):
    _, path = tiny(tmp_path, epochs=1, optim={"lr": 1e30})
    proc = cli("train", path, "--out", tmp_path / "run", "--quiet")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("gluon-tricks: error: loss is") and "Traceback" not in err


def test_dynamic_loss_scaling_skips_and_counts_overflow(tmp_path, monkeypatch):
    """float16 cannot run on this CPU; the skip path is the same for any overflow."""
    import gluon_tricks.tricks.precision as precision

    r, _ = tiny(tmp_path, epochs=1, optim={"loss_scale": "dynamic"})
    verdicts = iter([False, True] * 100)
    monkeypatch.setattr(precision, "grads_finite", lambda params, ctxs, read=None: next(verdicts))
    steps = []
    real_step = mx.gluon.Trainer.step
    monkeypatch.setattr(mx.gluon.Trainer, "step", lambda self, bs, **k: (steps.append(bs), real_step(self, bs, **k)))
    result = train(r, tmp_path / "run", progress=False)
    assert result["skipped_steps"] == 4  # 8 steps, every other one "overflowed"
    assert len(steps) == 4
    assert steps[0] == 32 * 2.0 ** 15  # the scale halved once before the first applied step


def test_sigint_checkpoints_and_resume_completes(tmp_path):
    r, path = tiny(tmp_path)
    run = tmp_path / "run"
    proc = cli("train", path, "--out", run, "--quiet")
    wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "continue with --resume" in err and "Traceback" not in err
    ckpt = RunDir(run).latest_checkpoint()
    assert ckpt.state["next_step"] > 0 or ckpt.state["next_epoch"] > 1  # saved at the stop, not only at an epoch end
    done = cli("train", path, "--out", run, "--resume", "--quiet")
    _, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    assert epochs_in(run) == [0, 1, 2]


SLOW_AFTER_FLAG = """
import os, sys
import mxnet as mx
from gluon_tricks.cli import main

real_step = mx.gluon.Trainer.step
flag = sys.argv[1]


def step(self, *args, **kwargs):
    real_step(self, *args, **kwargs)
    if os.path.exists(flag):  # from the first Ctrl-C on: a minute of queued device work per step,
        a = mx.nd.ones((4096, 4096))  # so the main thread then sits in MXNet's C wait (waitall/asnumpy)
        for _ in range(40):
            a = mx.nd.dot(a, a) / 4096


mx.gluon.Trainer.step = step
sys.exit(main(sys.argv[2:]))
"""


def test_second_sigint_exits_at_once(tmp_path):
    """The first Ctrl-C finishes the step and checkpoints; the second must not wait for
    queued device work. The steps after the first signal are made slow on purpose (work
    queued in MXNet's engine, where Python signal handlers cannot run)."""
    _, path = tiny(tmp_path, epochs=50)
    run, flag = tmp_path / "run", tmp_path / "slow"
    env = dict(os.environ, OMP_NUM_THREADS="1")  # as cli(): robust on a loaded machine
    proc = subprocess.Popen([sys.executable, "-c", SLOW_AFTER_FLAG, str(flag), "train", str(path), "--out", str(run),
                             "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(run, proc)
        before = RunDir(run).checkpoints()
        flag.write_text("")
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        t0 = time.time()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        waited = time.time() - t0
    finally:
        proc.kill()
    assert proc.returncode in (130, -signal.SIGINT)
    assert waited < 5, f"the second Ctrl-C took {waited:.1f} s"
    assert RunDir(run).checkpoints() == before  # no checkpoint from the queued steps


def test_disk_full_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    r, _ = tiny(tmp_path, epochs=2)
    real = mx.gluon.Trainer.save_states
    calls = []

    def full(self, fname):
        calls.append(fname)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, fname)

    monkeypatch.setattr(mx.gluon.Trainer, "save_states", full)
    with pytest.raises(UserError, match="the disk is full") as e:
        train(r, tmp_path / "run", progress=False)
    assert "previous checkpoint" in str(e.value)
    ckpt = RunDir(tmp_path / "run").latest_checkpoint()
    assert ckpt.state["next_epoch"] == 1
    mx.nd.load(str(ckpt.params))
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "run" / "checkpoints").iterdir())


def test_real_full_filesystem(tmp_path):
    """A 3 MB tmpfs holds one checkpoint of ResNet-20 (~2.2 MB) but not a second."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        r, _ = tiny(tmp_path, epochs=3, system={"keep_checkpoints": 2})
        with pytest.raises(UserError, match="disk is full|could not write"):
            train(r, mnt / "run", progress=False)
        ckpt = RunDir(mnt / "run").latest_checkpoint()
        assert ckpt is not None
        mx.nd.load(str(ckpt.params))
    finally:
        subprocess.run(["umount", str(mnt)])
