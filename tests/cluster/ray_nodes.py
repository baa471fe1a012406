"""A Ray cluster of separate node processes on this machine, for the multi-node test.

Each node is one ``ray start --block`` in its own process group (Ray makes that process a
group leader; its raylet, agents and workers stay in the group), with its own temp dir
and explicit ports for everything, so it coexists with the test session's local Ray and
any other Ray on the machine. `Node.kill` SIGKILLs one node's group: a node lost without
goodbye. Never `ray stop`: that stops every Ray on the host.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
WORKER_PORTS = 40  # per node: each actor or task worker takes one


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def _free_range(taken: set[int], width: int) -> int:
    """The first port of `width` free consecutive ports below the ephemeral range."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        first = rng.randrange(12_000, 30_000 - width)
        ports = set(range(first, first + width))
        if ports & taken:
            continue
        try:
            for port in ports:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        taken.update(ports)
        return first
    raise RuntimeError("no free range of worker ports")


@dataclass
class Node:
    """One `ray start --block` process (group) and how it was started."""

    name: str
    temp_dir: Path
    args: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, env: Mapping[str, str]) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [RAY, "start", "--block", *self.args], env=dict(env), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the node's whole process group (raylet, agents, workers)."""
        if self.process is not None and self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None:
            return
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(self.process.pid, signal.SIGKILL)  # whatever of the group is left
        if self.process.poll() is None:
            self.process.wait(timeout=30)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@dataclass
class Cluster:
    """A head and worker nodes; `address` is the GCS, `dashboard` the State/Jobs API."""

    root: Path
    address: str
    dashboard: str
    env: dict[str, str]
    nodes: dict[str, Node] = field(default_factory=dict)

    def tails(self) -> str:
        return "\n".join(f"--- {n.name} ---\n{n.tail()}" for n in self.nodes.values())


def _node_args(name: str, temp_dir: Path, taken: set[int], *, num_cpus: float,
               resources: Mapping[str, float]) -> list[str]:
    first = _free_range(taken, WORKER_PORTS)
    return ["--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir),
            "--node-manager-port", str(_free_port(taken)),
            "--object-manager-port", str(_free_port(taken)),
            "--dashboard-agent-listen-port", str(_free_port(taken)),
            "--dashboard-agent-grpc-port", str(_free_port(taken)),
            "--metrics-export-port", str(_free_port(taken)),
            "--runtime-env-agent-port", str(_free_port(taken)),
            "--min-worker-port", str(first), "--max-worker-port", str(first + WORKER_PORTS - 1),
            "--num-cpus", str(num_cpus), "--num-gpus", "0",
            "--resources", json.dumps(dict(resources)),
            "--object-store-memory", str(80 * 1024**2), "--disable-usage-stats"]


@contextmanager
def ray_cluster(workers: Mapping[str, tuple[float, Mapping[str, float]]], *,
                head_resources: Mapping[str, float], env: Mapping[str, str],
                start_timeout: float = 180.0) -> Iterator[Cluster]:
    """Start a head (no CPU) and `workers` ({name: (cpus, resources)}); stop all on exit.

    Waits until every node is alive in the GCS, at most `start_timeout` seconds.
    """
    root = Path(tempfile.mkdtemp(prefix="atpmn", dir="/tmp"))  # short: Unix socket paths
    taken: set[int] = set()
    gcs_port, dashboard_port, client_port = (_free_port(taken) for _ in range(3))
    token = secrets.token_hex(32)
    node_env = {**os.environ, **env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                "RAY_USAGE_STATS_ENABLED": "0",
                # Notice a lost node within seconds, not the default ~30 s.
                "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3"}
    node_env.pop("RAY_ADDRESS", None)
    cluster = Cluster(root, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", node_env)
    head_dir = root / "head"
    head = Node("head", head_dir, ["--head", "--port", str(gcs_port),
                                   "--ray-client-server-port", str(client_port),
                                   "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                                   "--dashboard-port", str(dashboard_port),
                                   *_node_args("head", head_dir, taken, num_cpus=0,
                                               resources=head_resources)],
                root / "head.log")
    cluster.nodes["head"] = head
    for name, (cpus, resources) in workers.items():
        cluster.nodes[name] = Node(name, root / name,
                                   ["--address", cluster.address,
                                    *_node_args(name, root / name, taken, num_cpus=cpus,
                                                resources=resources)],
                                   root / f"{name}.log")
    try:
        head.start(node_env)
        _wait_for_port(gcs_port, start_timeout, cluster)
        for node in cluster.nodes.values():
            if node is not head:
                node.start(node_env)
        yield cluster
    finally:
        for node in reversed(list(cluster.nodes.values())):
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_port(port: int, timeout: float, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if any(n.process is not None and n.process.poll() is not None for n in cluster.nodes.values()):
            raise RuntimeError(f"a Ray node exited while starting:\n{cluster.tails()}")
        time.sleep(0.5)
    raise TimeoutError(f"the head's GCS did not listen on {port} within {timeout:g} s:\n{cluster.tails()}")
