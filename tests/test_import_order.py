"""Every entry point loads gluon_tricks (and so the pip CUDA libraries, cuda_libs.py) before
mxnet: with the GPU wheel on a bare-driver host, an `import mxnet` that comes first fails
with `OSError: libcudart.so.11.0`. Here (CPU wheel) the order itself is checked: each entry
point runs in a subprocess whose sitecustomize (tests/import_audit) records, at the first
import of mxnet, whether cuda_libs.preload had already run (docs/gpu.md)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gluon_tricks import launch

ROOT = Path(__file__).resolve().parent.parent
AUDIT_HOOK = Path(__file__).resolve().parent / "import_audit"

# Runs an entry point's own code (a module with -m's semantics, or a script), then imports
# mxnet, which is the first import of it when the entry point imports it lazily.
RUN_THEN_IMPORT_MXNET = """
import runpy, sys
kind, target, run_name, *argv = sys.argv[1:]
sys.argv = [target, *argv]
try:
    if kind == "module":
        runpy.run_module(target, run_name=run_name, alter_sys=True)
    else:
        runpy.run_path(target, run_name=run_name)
except SystemExit:
    pass
import mxnet
"""


def audited(argv, tmp_path, cwd=ROOT, extra_path=(), env=None, expect_ok=True):
    """Run argv with the hook; {process argv: preload ran before mxnet} over all its processes."""
    out = tmp_path / "audit"
    out.mkdir()
    paths = [str(AUDIT_HOOK), *map(str, extra_path), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, **(env or {}), GLUON_TRICKS_IMPORT_AUDIT=str(out), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in paths if p))
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if expect_ok:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    records = {}
    for f in out.iterdir():
        for line in f.read_text().splitlines():
            command, ran = line.rsplit("\t", 1)
            records[f"{f.name}: {command}"] = ran == "True"
    assert records, f"{argv}: nothing imported mxnet\n{done.stderr[-2000:]}"
    return records


def then_mxnet(kind, target, run_name="__main__", *argv):
    return [sys.executable, "-c", RUN_THEN_IMPORT_MXNET, kind, target, run_name, *argv]


@pytest.mark.parametrize("argv", [
    [sys.executable, "-c", "from gluon_tricks.engine import train"],  # the package's own modules
    then_mxnet("module", "gluon_tricks", "__main__", "--help"),  # python -m gluon_tricks
    then_mxnet("path", "train_cifar.py", "__main__", "--help"),
    then_mxnet("path", "train_imagenet.py", "__main__", "--help"),
], ids=["package", "python -m gluon_tricks", "train_cifar.py", "train_imagenet.py"])
def test_user_entry_points_preload_before_mxnet(argv, tmp_path):
    records = audited(argv, tmp_path)
    assert all(records.values()), records


def test_test_suite_collection_preloads_before_mxnet(tmp_path):
    """`pytest -m gpu` on a bare-driver host: conftest.py runs first, then every test module."""
    records = audited([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                      tmp_path)
    assert all(records.values()), records


def test_launch_roles_preload_before_mxnet(tmp_path):
    roles = launch.plan(1, 1, [sys.executable, "-m", "gluon_tricks", "train", "demo/cosine"])
    servers = {tuple(argv) for name, argv, _ in roles if not name.startswith("worker")}
    assert len(servers) == 1  # the scheduler and the server run one command (their role is in env)
    (server,) = servers
    # Run it without DMLC_ROLE: the import is the same, it just does not become a server.
    assert all(audited(list(server), tmp_path).values())


def test_table_row_processes_preload_before_mxnet(tmp_path):
    """`table --run --parallel`: the table process and its spawned row process. The row fails
    fast (its CIFAR folder does not exist), after it imported the engine. (Not RecordIO or a
    teacher file: `table --run` refuses those before any row process starts.)"""
    recipes = tmp_path / "recipes" / "t"
    recipes.mkdir(parents=True)
    (recipes / "a.toml").write_text(f'name = "a"\nepochs = 1\n[data]\ndataset = "cifar10-mini"\n'
                                    f'root = "{tmp_path / "nowhere"}"\n')
    (recipes / "table.toml").write_text('title = "t"\n[[rows]]\nlabel = "A"\nrecipe = "a.toml"\n')
    records = audited([sys.executable, "-m", "gluon_tricks", "table", "t", "--run", "--parallel", "1", "--ctx", "cpu",
                       "--runs", str(tmp_path / "runs")], tmp_path,
                      env={"GLUON_TRICKS_RECIPES": str(tmp_path / "recipes")}, expect_ok=False)
    assert len(records) == 2, records  # the table's process and the row's (spawn gives it the same argv)
    assert all(records.values()), records


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_bench_scripts_preload_before_mxnet(script, tmp_path):
    """A benchmark imports mxnet inside its functions: its module-level imports must have
    preloaded by then (run here under another name, so that it does not benchmark)."""
    records = audited(then_mxnet("path", script, "bench_probe"), tmp_path, cwd=ROOT / "bench",
                      extra_path=[ROOT / "bench"])
    assert all(records.values()), records
