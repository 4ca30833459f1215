"""A multi-node Ray cluster on one machine: a head and worker nodes, each its own raylet started
with `ray start --block` on loopback, with token auth on as on a real cluster.

Each node runs in a session of its own, so one node can be killed (its raylet and every worker
process on it) while the others keep running: a node loss. Nodes get the environment a cloud
node would have (say S3 credentials, as an instance profile gives them); the job client gets
only the address and the token.

    with LocalRayCluster(workdir, node_env=s3.env()) as cluster:
        cluster.add_worker(num_cpus=1)
        cluster.add_worker(num_cpus=1)
        cluster.wait_for_nodes(3)
        ... raydefense submit --address {cluster.dashboard} ...
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


class PortPool:
    """Distinct ports, each bindable when chosen, below the kernel's ephemeral range (outgoing
    connections take their source ports there and could grab one before a raylet binds it)."""

    def __init__(self, lo: int = 20000) -> None:
        self.lo, self.hi = lo, min(_ephemeral_range()[0], 32768)
        self.used: set[int] = set()
        self._rng = random.Random()

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        for _ in range(100 * n):
            if len(out) == n:
                break
            port = self._rng.randrange(self.lo, self.hi)
            if port in self.used:
                continue
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            self.used.add(port)
            out.append(port)
        if len(out) < n:
            raise RuntimeError(f"no {n} free ports in [{self.lo}, {self.hi})")
        return out


def _ray_cli() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else "ray"


def _session(sid: int) -> list[int]:
    """Pids of the live processes of session sid (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) != sid:
                continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(pid)
        except (OSError, IndexError):
            pass
    return out


class Node:
    """One `ray start --block` process and its session (raylet, agents, workers)."""

    def __init__(self, name: str, proc: subprocess.Popen, log: Path) -> None:
        self.name, self.proc, self.log = name, proc, log
        self.killed = False

    def kill(self) -> float:
        """SIGKILL every process of the node; returns the seconds it took until none is left."""
        self.killed = True
        t0 = time.monotonic()
        while pids := _session(self.proc.pid):
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() - t0 > 60:
                raise RuntimeError(f"node {self.name}: processes survive SIGKILL: {pids}")
            time.sleep(0.1)
        self.proc.wait(timeout=10)
        return time.monotonic() - t0

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class LocalRayCluster:
    """See the module docstring. `dashboard` is the job-submission address, `address` the GCS."""

    def __init__(
        self,
        workdir: Path,
        node_env: Optional[dict[str, str]] = None,
        head_cpus: int = 0,
        object_store_bytes: int = 300 * 2**20,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Ray's socket paths must stay short: the session lives in a short /tmp dir.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rdc-", dir="/tmp"))
        self.token_path = self.workdir / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.ports = PortPool()
        gcs, dash = self.ports.take(2)
        self.address = f"127.0.0.1:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dash}"
        self.node_env = dict(node_env or {})
        self.head_cpus = head_cpus
        self.object_store_bytes = object_store_bytes
        self.nodes: list[Node] = []

    def client_env(self, base: Optional[dict[str, str]] = None) -> dict[str, str]:
        """What a job client needs: the token (RAY_AUTH_MODE=token) and no cluster of its own."""
        env = {k: v for k, v in (base or os.environ).items() if k != "RAY_ADDRESS"}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        return env

    def _env(self) -> dict[str, str]:
        env = self.client_env()
        env.update(self.node_env)
        # Jobs run `python`: this interpreter's environment first on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _start(self, name: str, args: list[str]) -> Node:
        # Every port of a raylet and its agents is its own: nodes share the loopback interface.
        agent, grpc, runtime_env, metrics, node_manager, object_manager = self.ports.take(6)
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    _ray_cli(),
                    "start",
                    "--block",
                    f"--dashboard-agent-listen-port={agent}",
                    f"--dashboard-agent-grpc-port={grpc}",
                    f"--runtime-env-agent-port={runtime_env}",
                    f"--metrics-export-port={metrics}",
                    f"--node-manager-port={node_manager}",
                    f"--object-manager-port={object_manager}",
                    f"--object-store-memory={self.object_store_bytes}",
                    "--disable-usage-stats",
                    *args,
                ],
                cwd=self.workdir,
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        node = Node(name, proc, log)
        self.nodes.append(node)
        return node

    def start(self) -> LocalRayCluster:
        port = self.address.rsplit(":", 1)[1]
        (client_port,) = self.ports.take(1)
        self._start(
            "head",
            [
                "--head",
                f"--port={port}",
                f"--num-cpus={self.head_cpus}",
                "--num-gpus=0",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
                f"--temp-dir={self.temp_dir}",
                "--include-dashboard=true",
                f"--ray-client-server-port={client_port}",
            ],
        )
        self.wait_for_nodes(1)
        return self

    def add_worker(
        self, num_cpus: int, resources: Optional[dict[str, float]] = None, attempts: int = 2
    ) -> Node:
        """Start a worker node and wait until the cluster sees it (one node at a time: a GCS on
        two busy cores registers raylets slowly). A raylet that dies starting (a port taken
        meanwhile, a registration timeout) is retried on fresh ports."""
        args = [f"--address={self.address}", f"--num-cpus={num_cpus}", "--num-gpus=0"]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        want = len(self.alive_nodes()) + 1
        for attempt in range(attempts):
            node = self._start(f"worker{len(self.nodes)}", args)
            try:
                self.wait_for_nodes(want, timeout_s=90)
                return node
            except RuntimeError as e:
                if node.alive:
                    node.kill()
                node.killed = True  # a failed start, not a node of the cluster
                if attempt == attempts - 1:
                    raise RuntimeError(f"{e}\n{self.error_lines()}") from None
        raise AssertionError("unreachable")

    def error_lines(self, limit: int = 20) -> str:
        """The error lines of this cluster's raylet and GCS logs (what `ray start` hides)."""
        out: list[str] = []
        for log in sorted(self.temp_dir.glob("session_*/logs/*")):
            if not log.name.startswith(("raylet", "gcs_server")):
                continue
            for line in log.read_text(errors="replace").splitlines():
                if " E " in line or "Address already in use" in line:
                    out.append(f"{log.name}: {line[:300]}")
        return "\n".join(out[-limit:])

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The dashboard's view of the live nodes: [{node_id, resources_total, is_head_node}]."""
        req = urllib.request.Request(
            f"{self.dashboard}/api/v0/nodes?detail=1&limit=100",
            headers={"Authorization": f"Bearer {self.token_path.read_text().strip()}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            data = json.loads(r.read())
        rows = data["data"]["result"]["result"]
        return [n for n in rows if n.get("state") == "ALIVE"]

    def wait_for_nodes(self, n: int, timeout_s: float = 120) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            dead = [x.name for x in self.nodes if not x.alive and not x.killed]
            if dead:
                logs = "\n".join(x.log.read_text(errors="replace")[-2000:] for x in self.nodes)
                raise RuntimeError(f"ray node(s) {dead} exited:\n{logs}")
            try:
                nodes = self.alive_nodes()
                if len(nodes) >= n:
                    return nodes
                last = len(nodes)
            except OSError as e:
                last = e
            time.sleep(0.5)
        raise RuntimeError(f"{n} live Ray nodes not reached in {timeout_s}s (last: {last})")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.alive or _session(node.proc.pid):
                node.kill()
        self.nodes = []
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
