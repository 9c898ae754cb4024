"""A real two-node Ray cluster on this machine, for the job submission tests.

``ray start --head`` and ``ray start --address`` run as two ``--block`` processes, each in a
session of its own, with token authentication on and a token of their own (never the user's
``~/.ray/auth_token``), their own temp dir and free ports, so they cannot meet another Ray on the
machine. ``stop()`` ends exactly what they started: each process group, then any process that
still carries this cluster's marker variable (a job's entrypoint runs in a session of its own).
Never ``ray stop``: it would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, suppress
from pathlib import Path

from rerank_ray.training.faults import NODE_ENV

RAY = str(Path(sys.executable).with_name("ray"))
#: Ports `ray start` would otherwise take at fixed defaults (10001, 52365, 8265, ...).
PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)
MARKER = "RERANK_TEST_CLUSTER"


def free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


class LocalCluster:
    def __init__(self, env_extra: dict[str, str] | None = None, cpus_per_node: int = 3):
        # Short: Ray's socket paths under the temp dir must stay below ~107 characters.
        self.root = Path(tempfile.mkdtemp(prefix="rr-", dir="/tmp"))
        self.token = secrets.token_hex(32)
        token_file = self.root / "auth_token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        self.marker = uuid.uuid4().hex
        self.cpus_per_node = cpus_per_node
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_file),
            # `python` in a job's entrypoint is the interpreter of this test run.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0",
            # A lost node is declared dead after 3 missed 1-second health checks, not 5 of 3 s.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
            MARKER: self.marker,
            **(env_extra or {}),
        }
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.env.pop("RAY_ADDRESS", None)
        self.processes: list[subprocess.Popen] = []
        self.gcs_port, self.dashboard_port, self.client_port = free_ports(3)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        ports = free_ports(len(PORT_FLAGS))
        command = [
            RAY,
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.cpus_per_node}",
            "--num-gpus=0",
            f"--object-store-memory={200 * 1024 * 1024}",
            "--disable-usage-stats",
            *(f"{flag}={port}" for flag, port in zip(PORT_FLAGS, ports)),
            *args,
        ]
        log = (self.root / f"{name}.log").open("a")
        # Every process of the node (raylet, its workers) inherits NODE_ENV: a fault armed for a
        # node finds its workers by it, and kill_node() finds the node's processes by it.
        env = {**self.env, NODE_ENV: name}
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def start(self, timeout: float = 240.0) -> LocalCluster:
        self._start(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                f"--temp-dir={self.root / 'ray-head'}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={self.client_port}",
                f"--resources={json.dumps({'node_head': 1})}",
            ],
        )
        self._wait_for_dashboard(timeout)
        self.start_worker_node(timeout)
        return self

    def start_worker_node(self, timeout: float = 240.0) -> None:
        """The second node (again, after :meth:`kill_node`)."""
        self._start(
            "worker",
            [
                f"--address={self.gcs_address}",
                # A temp dir of its own, as on a separate machine: nodes sharing one would share
                # the job's unpacked working dir, and the first to finish would delete it.
                f"--temp-dir={self.root / 'ray-worker'}",
                f"--resources={json.dumps({'node_worker': 1})}",
            ],
        )
        self._wait_for_nodes(2, timeout)

    def kill_node(self, name: str = "worker") -> int:
        """A node lost at once, as a spot instance goes: SIGKILL to every process of it (its
        ``ray start``, raylet, agents and workers), nothing told first. Returns how many."""
        needle = f"{NODE_ENV}={name}".encode()
        pids = [pid for pid in self.marked_pids() if needle in _environ(pid)]
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        for process in self.processes:
            if process.pid in pids:
                process.wait(timeout=30)
        self.processes = [p for p in self.processes if p.poll() is None]
        return len(pids)

    def _check_alive(self) -> None:
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"ray start exited with {process.returncode}:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.root.glob("*.log")))

    def _wait_for_dashboard(self, timeout: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                request = urllib.request.Request(f"{self.dashboard_url}/api/version", headers=self.auth_headers)
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the dashboard did not come up in {timeout:.0f} s:\n{self.logs()}")

    def alive_nodes(self) -> list[dict]:
        from ray.util.state import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        client = StateApiClient(address=self.dashboard_url, headers=self.auth_headers)
        nodes = client.list(StateResource.NODES, options=ListApiOptions(detail=True), raise_on_missing_output=False)
        return [n for n in nodes if n.state == "ALIVE"]

    def actors(self, class_name: str) -> list:
        from ray.util.state import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        client = StateApiClient(address=self.dashboard_url, headers=self.auth_headers)
        options = ListApiOptions(filters=[("class_name", "=", class_name)], detail=True)
        return client.list(StateResource.ACTORS, options=options, raise_on_missing_output=False)

    def _wait_for_nodes(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if len(self.alive_nodes()) >= count:
                    return
            except Exception:  # noqa: BLE001 - the state API answers once the node registered
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{count} nodes did not join in {timeout:.0f} s:\n{self.logs()}")

    def stop(self) -> None:
        """End what this cluster started: each `ray start --block` process group, then whatever
        still carries the marker (by PID), then the temp dir. SIGTERM first; `ray start --block`
        and the raylet take 30 s and more to act on it, so SIGKILL follows after a few seconds
        (nothing of a test cluster needs a graceful end)."""
        for process in reversed(self.processes):
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        for _ in range(20):
            left = self.marked_pids()
            if not left:
                break
            for pid in left:
                _signal(pid, signal.SIGKILL)
            time.sleep(0.25)
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)

    def marked_pids(self) -> list[int]:
        """Processes whose environment carries this cluster's marker: only ours."""
        return marked_pids(self.marker)


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries ``MARKER=marker`` (this process left out)."""
    needle = f"{MARKER}={marker}".encode()
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and int(entry.name) != os.getpid() and needle in _environ(int(entry.name))
    ]


def kill_marked(marker: str) -> None:
    """SIGKILL every process that carries ``MARKER=marker``, until none is left."""
    for _ in range(40):
        left = marked_pids(marker)
        if not left:
            return
        for pid in left:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.25)


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def _signal_group(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, sig)  # the session leader's pid is its group id (start_new_session)


def _signal(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)
