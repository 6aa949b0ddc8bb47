"""Resume on several devices is bit for bit (red team 2, cause 19, probe 2.3): each device gets
back its own BatchNorm running statistics, not the mean of the copies that Gluon's
save_parameters writes (which left 42 arrays 1-4 ulp off an uninterrupted run)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_engine import RESUME_SCRIPT


@pytest.mark.parametrize("device_batch", [0, 8])  # 8: two micro-batches per device (accumulation)
def test_resume_on_two_devices_equals_uninterrupted_exactly(tmp_path, tiny_recipe_dict, device_batch):
    d = dict(tiny_recipe_dict, data=dict(tiny_recipe_dict["data"], batch_size=32, train_limit=128, test_limit=32,
                                         augment="none"),
             system=dict(tiny_recipe_dict["system"], ctx="cpu:0,cpu:1", device_batch=device_batch))
    env = dict(os.environ, MXNET_MKLDNN_ENABLED="0", MXNET_STORAGE_FALLBACK_LOG_VERBOSE="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, json.dumps(d), str(tmp_path), "6"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "INTERRUPTED stopped at epoch 2, step 2" in proc.stdout
    assert "DIFF 0.0\n" in proc.stdout, proc.stdout
    ckpt = sorted((tmp_path / "cut" / "checkpoints").iterdir())[-1]
    assert json.loads((ckpt / "state.json").read_text())["devices"] == ["cpu(0)", "cpu(1)"]
    assert (ckpt / "device_states.params").is_file()
