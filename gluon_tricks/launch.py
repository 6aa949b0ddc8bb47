"""`gluon-tricks launch`: MXNet's parameter-server job, started and watched.

MXNet's own `tools/launch.py` fails on Python 3.11 (`Thread.isAlive`) and binds the
first non-loopback address, so the roles are started here directly, each with the
`DMLC_*` environment ps-lite reads: one scheduler and S servers (processes that only
`import mxnet`: the import turns them into their role) and N workers running the
training command with `--kvstore dist_sync`.

Local mode runs everything on 127.0.0.1. With a hostfile, the scheduler and servers
run here and worker i runs on host i mod len(hosts) through ssh.

The launcher watches its children: when any worker or server exits non-zero (or is
killed), it names it, stops the rest and exits non-zero, so a dead worker never leaves
the others waiting forever at a kvstore barrier. ps-lite's own liveness checks are
switched on too (PS_HEARTBEAT_INTERVAL / PS_HEARTBEAT_TIMEOUT, in seconds).
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

HEARTBEAT_INTERVAL = 5
HEARTBEAT_TIMEOUT = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_command(command: list[str], gpus: bool = False) -> list[str]:
    """The worker command: `train ...` becomes this Python's gluon_tricks; a gluon-tricks
    train command gets the distributed kvstore unless it names one."""
    if not command:
        raise UserError("launch needs a command after --, e.g. -- train recipes/demo/cosine.toml --out runs/x")
    if command[0] == "train":
        command = [sys.executable, "-m", "gluon_tricks"] + command
    is_train = "train" in command or any(c.endswith(("train_cifar.py", "train_imagenet.py")) for c in command)
    if is_train and "--kvstore" not in command:
        command = command + ["--kvstore", "dist_device_sync" if gpus else "dist_sync"]
    return command


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
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
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
    server_cmd = [sys.executable, "-c", "import mxnet"]
    out = [("scheduler", server_cmd, role_env("scheduler", uri, port, workers, servers, uri, iface))]
    for s in range(servers):
        out.append((f"server {s}", server_cmd, role_env("server", uri, port, workers, servers, uri, iface)))
    for w in range(workers):
        host = "127.0.0.1" if local else hosts[w % len(hosts)]
        env = role_env("worker", uri, port, workers, servers, host, iface)
        env["GLUON_TRICKS_WORKER_INDEX"] = str(w)
        argv = command if local else ssh_command(host, env, command, workdir or os.getcwd())
        out.append((f"worker {w}" + ("" if local else f" on {host}"), argv, env))
    return out


def run(workers: int, servers: int, command: list[str], hostfile: str | None = None, port: int = 0,
        timeout: float | None = None) -> int:
    if workers < 1 or servers < 1:
        raise UserError("launch needs at least one worker (-n) and one server (-s)")
    hosts = read_hostfile(Path(hostfile)) if hostfile else None
    command = training_command(command)
    roles: list[Role] = []
    t0 = time.time()

    def stop_all():
        for r in roles:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for r in roles:
            try:
                r.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                r.proc.kill()

    try:
        for name, argv, env in plan(workers, servers, command, hosts, port):
            roles.append(Role(name, subprocess.Popen(argv, env=dict(os.environ, **env))))
            print(f"launch: started {name} (pid {roles[-1].proc.pid})", file=sys.stderr, flush=True)
        worker_roles = [r for r in roles if r.name.startswith("worker")]
        while True:
            if all(r.proc.poll() == 0 for r in worker_roles):
                stop_all()
                return 0
            for r in roles:
                code = r.proc.poll()
                # The scheduler and servers exit 0 once the workers deregister, just before
                # the worker processes themselves end: only a non-zero exit is a failure.
                if code not in (None, 0):
                    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                    print(f"launch: {r.name} (pid {r.proc.pid}) {how}; stopping the job", file=sys.stderr, flush=True)
                    stop_all()
                    return 1
            if timeout and time.time() - t0 > timeout:
                print(f"launch: the job ran past --timeout {timeout:g}s; stopping it", file=sys.stderr, flush=True)
                stop_all()
                return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop_all()
        return 130
