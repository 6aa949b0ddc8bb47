"""`gluon-tricks launch`: MXNet's parameter-server job, started and watched.

MXNet's own `tools/launch.py` fails on Python 3.11 (`Thread.isAlive`) and binds the
first non-loopback address, so the roles are started here directly, each with the
`DMLC_*` environment ps-lite reads: one scheduler and S servers (processes that only
`import gluon_tricks, mxnet`: the second import turns them into their role) and N workers running the
training command with `--kvstore dist_sync` (`dist_device_sync` when it names GPU contexts).

Local mode runs everything on 127.0.0.1. With a hostfile, the scheduler and servers
run here and worker i runs on host i mod len(hosts) through ssh.

The launcher watches its children: when any worker or server exits non-zero (or is
killed), it names it, stops the rest and exits non-zero, so a dead worker never leaves
the others waiting forever at a kvstore barrier. ps-lite's own liveness checks are
switched on too (PS_HEARTBEAT_INTERVAL / PS_HEARTBEAT_TIMEOUT, in seconds).

Stopping (Ctrl-C, SIGTERM, SIGHUP, --timeout, a failed role) goes in order: the workers
get SIGINT and finish their step and checkpoint (which needs the servers), then the
servers and last the scheduler get SIGTERM; whatever outlives its grace is SIGKILLed.
Every child runs in its own process group (a terminal's Ctrl-C reaches only the launcher,
which then stops the job in that order) and asks the kernel to SIGKILL it if the launcher
dies (PR_SET_PDEATHSIG), so even a kill -9 of the launcher leaves no orphans.
The CLI loads a `train` command's recipe once before it calls `run` (cli.check_train_command):
a bad recipe is one error and exit status 2, not one error per worker.
"""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gluon_tricks.errors import UserError
from gluon_tricks.paths import cores
from gluon_tricks.runner import signal_on_parent_death

HEARTBEAT_INTERVAL = 5
HEARTBEAT_TIMEOUT = 30
WORKER_GRACE = 60  # seconds for the workers to finish a step and write a checkpoint
ROLE_GRACE = 10  # seconds for a server or the scheduler to exit after SIGTERM


def _child_setup() -> None:
    """Runs in each child between fork and exec: its own process group, and death with the launcher."""
    os.setpgid(0, 0)
    signal_on_parent_death(signal.SIGKILL)  # not Linux: the signal handlers still stop the job


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_command(command: list[str]) -> list[str]:
    """The worker command: `train ...` becomes this Python's gluon_tricks; a gluon-tricks
    train command gets the distributed kvstore unless it names one: dist_device_sync when it
    names GPU contexts (each worker sums its GPUs' gradients on a GPU before the push; MXNet's
    dist_sync would sum them on the CPU), else dist_sync."""
    if not command:
        raise UserError("launch needs a command after --, e.g. -- train recipes/demo/cosine.toml --out runs/x")
    if command[0] == "train":
        command = [sys.executable, "-m", "gluon_tricks"] + command
    is_train = "train" in command or any(c.endswith(("train_cifar.py", "train_imagenet.py")) for c in command)
    if is_train and "--kvstore" not in command and not any(c.startswith("--kvstore=") for c in command):
        command = command + ["--kvstore", "dist_device_sync" if names_gpus(command) else "dist_sync"]
    return command


def names_gpus(command: list[str]) -> bool:
    """Whether a train command's devices are GPUs: `--ctx gpu:...` (or `--ctx=gpu:...`) or
    `--set system.ctx="gpu:..."`. `auto` is decided on each worker's host, so it is not."""
    for i, arg in enumerate(command):
        name, eq, inline = arg.partition("=")
        if name not in ("--ctx", "--set"):
            continue
        value = inline if eq else (command[i + 1] if i + 1 < len(command) else "")
        if name == "--set":
            key, _, value = value.partition("=")
            if key.strip() != "system.ctx":
                continue
        if "gpu" in value:
            return True
    return False


def role_env(role: str, root_uri: str, port: int, workers: int, servers: int, host: str,
             interface: str | None) -> dict:
    env = {
        "DMLC_ROLE": role,
        "DMLC_PS_ROOT_URI": root_uri,
        "DMLC_PS_ROOT_PORT": str(port),
        "DMLC_NUM_WORKER": str(workers),
        "DMLC_NUM_SERVER": str(servers),
        "DMLC_NODE_HOST": host,
        "PS_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
        "PS_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(cores())),
    }
    if interface:
        env["DMLC_INTERFACE"] = interface
    return env


def read_hostfile(path: Path) -> list[str]:
    try:
        hosts = [l.split()[0] for l in Path(path).read_text().splitlines() if l.strip() and not l.startswith("#")]
    except OSError as e:
        raise UserError(f"hostfile {path}: {e.strerror}") from None
    if not hosts:
        raise UserError(f"hostfile {path} lists no hosts (one host name or address per line)")
    return hosts


def ssh_command(host: str, env: dict, command: list[str], workdir: str) -> list[str]:
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    remote = f"cd {shlex.quote(workdir)} && env {exports} {' '.join(shlex.quote(c) for c in command)}"
    return ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes", host, remote]


@dataclass
class Role:
    name: str
    proc: subprocess.Popen


def plan(workers: int, servers: int, command: list[str], hosts: list[str] | None = None, port: int = 0,
         root_uri: str | None = None, workdir: str | None = None) -> list[tuple[str, list[str], dict]]:
    """(name, argv, extra env) of every process of the job, in start order."""
    port = port or free_port()
    local = not hosts
    uri = root_uri or ("127.0.0.1" if local else socket.gethostbyname(socket.gethostname()))
    iface = "lo" if local else None
    # gluon_tricks first: its import loads the pip CUDA libraries libmxnet.so needs (cuda_libs.py)
    server_cmd = [sys.executable, "-c", "import gluon_tricks, mxnet"]
    out = [("scheduler", server_cmd, role_env("scheduler", uri, port, workers, servers, uri, iface))]
    for s in range(servers):
        out.append((f"server {s}", server_cmd, role_env("server", uri, port, workers, servers, uri, iface)))
    for w in range(workers):
        host = "127.0.0.1" if local else hosts[w % len(hosts)]
        env = role_env("worker", uri, port, workers, servers, host, iface)
        argv = command if local else ssh_command(host, env, command, workdir or os.getcwd())
        out.append((f"worker {w}" + ("" if local else f" on {host}"), argv, env))
    return out


class _Stop(Exception):
    def __init__(self, signum: int):
        self.signum = signum


class Roles:
    """The job's processes: started in plan order, watched, and stopped workers first."""

    def __init__(self):
        self.all: list[Role] = []
        self.hurry = False  # a second signal while stopping: no more waiting
        self.failed: Role | None = None

    def group(self, kind: str) -> list[Role]:
        return [r for r in self.all if r.name.split()[0] == kind]

    def start(self, planned: list[tuple[str, list[str], dict]]) -> None:
        for name, argv, env in planned:
            self.all.append(Role(name, subprocess.Popen(argv, env=dict(os.environ, **env), preexec_fn=_child_setup)))
            print(f"launch: started {name} (pid {self.all[-1].proc.pid})", file=sys.stderr, flush=True)

    def watch(self, timeout: float | None) -> int:
        """Poll until the job ends: 0 when every worker exited 0, 1 when a role failed (named in
        `failed`) or the job ran past `timeout` seconds."""
        t0 = time.time()
        while True:
            if all(r.proc.poll() == 0 for r in self.group("worker")):
                return 0
            for r in self.all:
                code = r.proc.poll()
                # The scheduler and servers exit 0 once the workers deregister, just before
                # the worker processes themselves end: only a non-zero exit is a failure.
                if code not in (None, 0):
                    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                    print(f"launch: {r.name} (pid {r.proc.pid}) {how}; stopping the job", file=sys.stderr, flush=True)
                    self.failed = r
                    return 1
            if timeout and time.time() - t0 > timeout:
                print(f"launch: the job ran past --timeout {timeout:g}s; stopping it", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.2)

    def stop(self, worker_grace: float = WORKER_GRACE) -> None:
        def again(signum, frame):
            self.hurry = True

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, again)
        # Workers first, while the servers still answer: their last step's push/pull and the
        # checkpoint need them (SIGINT: the engine finishes the step and checkpoints).
        self._signal_and_wait(self.group("worker"), signal.SIGINT, worker_grace)
        self._signal_and_wait(self.group("server"), signal.SIGTERM, ROLE_GRACE)
        self._signal_and_wait(self.group("scheduler"), signal.SIGTERM, ROLE_GRACE)

    def _signal_and_wait(self, group: list[Role], sig: int, grace: float) -> None:
        """Send `sig` to the live processes of `group`; SIGKILL whatever outlives `grace` seconds."""
        for r in group:
            if r.proc.poll() is None:
                r.proc.send_signal(sig)
        deadline = time.time() + grace
        for r in group:
            while r.proc.poll() is None and time.time() < deadline and not self.hurry:
                time.sleep(0.1)
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()


def run(workers: int, servers: int, command: list[str], hostfile: str | None = None, port: int = 0,
        timeout: float | None = None) -> int:
    if workers < 1 or servers < 1:
        raise UserError("launch needs at least one worker (-n) and one server (-s)")
    hosts = read_hostfile(Path(hostfile)) if hostfile else None
    command = training_command(command)
    roles = Roles()

    def on_signal(signum, frame):
        raise _Stop(signum)

    old_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        roles.start(plan(workers, servers, command, hosts, port))
        status = roles.watch(timeout)
        # With a role gone no step can complete: the others are likely stuck at a barrier.
        roles.stop(worker_grace=ROLE_GRACE if roles.failed else WORKER_GRACE)
        return status
    except (KeyboardInterrupt, _Stop) as e:
        signum = e.signum if isinstance(e, _Stop) else signal.SIGINT
        print(f"launch: {signal.Signals(signum).name}: stopping the workers (they checkpoint), then the servers",
              file=sys.stderr, flush=True)
        roles.stop()
        return 128 + signum
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
