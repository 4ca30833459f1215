"""`raydefense submit`: send a raydefense command to a Ray cluster as a job.

What `ray job submit --working-dir .` leaves to the user, done here:
- token auth: a cluster started with `ray start --head` (Ray 2.59+) requires the cluster's token,
  and the job client sends it only under RAY_AUTH_MODE=token; with a token at hand (RAY_AUTH_TOKEN,
  RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) the mode is switched on for this client;
- a frozen working dir: the project is copied to a snapshot without logs, outputs, virtualenvs
  and caches, so nothing changes between Ray's two hashes of it (a growing log file inside the
  working dir fails the job with "Failed to download runtime_env file package");
- the environment: the S3 endpoint and region and the MLflow tracking URI travel to the job;
  credentials never do (nodes have their own: an instance profile, or the raylets' environment),
  and neither does MLFLOW_RUN_ID (it would hijack the job's parent run).
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional

from raydefense.errors import ConfigError, RaydefenseError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never copied into the job's working dir (matched against each path component).
SNAPSHOT_EXCLUDES = (
    ".git",
    ".venv*",
    "venv",
    "runs",
    "mlruns",
    "mlflow.db*",
    "*.log",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "*.egg-info",
    "node_modules",
    ".ipynb_checkpoints",
)
# Ray refuses working dirs over 500 MiB; well before that the upload is the problem.
MAX_SNAPSHOT_BYTES = 100 * 2**20
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "MLFLOW_TRACKING_URI",
)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _excluded(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def snapshot_files(project: Path, excludes: Iterable[str] = SNAPSHOT_EXCLUDES) -> list[Path]:
    """The files a snapshot of `project` would hold (excluded names pruned as directories are
    walked, so a 100 GB ./runs costs nothing to skip)."""
    patterns, out = tuple(excludes), []
    for here, dirs, files in os.walk(project):
        dirs[:] = [d for d in dirs if not _excluded(d, patterns)]
        out += [Path(here) / f for f in files if not _excluded(f, patterns)]
    return out


def snapshot(project: Path, dest: Path, excludes: Iterable[str] = SNAPSHOT_EXCLUDES) -> int:
    """Copy `project` into `dest` without the excluded names; returns the bytes copied.

    The size is checked before anything is copied: a dataset left inside the project is refused
    in one line, not copied to a temporary folder first.

    Raises:
        ConfigError: the project has no raydefense package, or the snapshot would be too large.
    """
    if not (project / "raydefense" / "__init__.py").is_file():
        raise ConfigError(
            f"{project} is not a raydefense project (no raydefense/__init__.py); run "
            "`raydefense submit` from the project root or pass --working-dir"
        )
    patterns = tuple(excludes)
    sizes = {p: p.lstat().st_size for p in snapshot_files(project, patterns)}
    size = sum(sizes.values())
    if size > MAX_SNAPSHOT_BYTES:
        big = max(sizes, key=sizes.__getitem__)
        raise ConfigError(
            f"the working dir snapshot would be {size / 2**20:.0f} MiB (largest file "
            f"{big.relative_to(project)}, {sizes[big] / 2**20:.0f} MiB; the limit is "
            f"{MAX_SNAPSHOT_BYTES / 2**20:.0f} MiB); move data out of the project or pass "
            "--working-dir"
        )

    def ignore(_dir: str, names: list[str]) -> set[str]:
        return {n for n in names if _excluded(n, patterns)}

    shutil.copytree(project, dest, ignore=ignore, symlinks=True)
    return size


# Config fields that name files or folders the job reads (data, weights, feature models).
INPUT_FIELDS = (
    "data.root",
    "data.split_file",
    "data.nonmember_root",
    "model.pipeline",
    "quality.inception_weights",
    "quality.sscd_model",
    "quality.clip_model",
)


def local_inputs(cfg: Any) -> list[tuple[str, str]]:
    """(config key, path) of every local input the job's config reads ("tiny" and URIs are not
    local files)."""
    out = []
    for key in INPUT_FIELDS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name, None)
        if value:
            out.append((key, str(value)))
    for i, root in enumerate(cfg.data.member_roots or []):
        out.append((f"data.member_roots[{i}]", str(root)))
    return [(k, v) for k, v in out if "://" not in v and v != "tiny"]


def unstaged_inputs(
    inputs: list[tuple[str, str]], working_dir: Path, shared: Iterable[str]
) -> list[tuple[str, str]]:
    """The inputs no node but this one can read: not inside the working dir (whose snapshot
    travels to every node) and not under a `--shared-path` (a volume every node mounts at the
    same path)."""
    root, prefixes = working_dir.resolve(), [Path(p) for p in shared]
    out = []
    for key, value in inputs:
        path = Path(value)
        if not path.is_absolute():
            inside = root / path
            if root == inside.resolve() or root in inside.resolve().parents:
                continue
        if any(path == p or p in path.parents for p in prefixes):
            continue
        out.append((key, value))
    return out


def check_inputs_staged(
    inputs: list[tuple[str, str]],
    working_dir: Path,
    shared: Iterable[str],
    address: str,
    count_nodes: Callable[[str], int],
) -> None:
    """Raise ConfigError (one line) when an input only this machine can read would be read on
    a cluster of more than one node; the node count is asked only when such an input exists."""
    unstaged = unstaged_inputs(inputs, working_dir, shared)
    if unstaged and (nodes := count_nodes(address)) > 1:
        key, value = unstaged[0]
        raise ConfigError(
            f"{key}={value} is a path on this machine, but the job runs on a cluster of {nodes} "
            "nodes that do not share its files: put it on a volume every node mounts at the "
            "same path and pass --shared-path THAT_MOUNT, or (if small) inside the working dir"
        )


def alive_nodes(address: str) -> int:
    """How many nodes the cluster behind the dashboard has alive (the state API; it sends the
    token when token auth is on).

    Counted here, not with a state filter: Ray 2.60 pushes a node filter down to the GCS and
    then reports the nodes it filtered out (a dead worker) as truncated output, which
    `list_nodes` raises on."""
    from ray.util.state import list_nodes

    return count_alive(list_nodes(address=address, limit=10_000))


def count_alive(nodes: Iterable[Any]) -> int:
    """Nodes whose state is ALIVE, from the state API's node records (objects or dicts)."""

    def state(node: Any) -> str:
        return str(node.get("state") if isinstance(node, dict) else getattr(node, "state", ""))

    return sum(1 for node in nodes if state(node) == "ALIVE")


def token_available(env: Optional[dict[str, str]] = None) -> bool:
    env = dict(os.environ if env is None else env)
    if env.get("RAY_AUTH_TOKEN"):
        return True
    path = env.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return os.path.isfile(path)


def enable_token_auth() -> bool:
    """Switch this client to token auth when a token is at hand and no mode was chosen."""
    if "RAY_AUTH_MODE" not in os.environ and token_available():
        os.environ["RAY_AUTH_MODE"] = "token"
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def job_env(env: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The variables a job inherits from the submitting shell: endpoints, never secrets."""
    env = dict(os.environ if env is None else env)
    return {k: env[k] for k in FORWARDED_ENV if env.get(k)}


def entrypoint(command: list[str]) -> str:
    """The job's command line: the snapshot's own raydefense (the working dir is first on
    sys.path), so the code that runs is the code that was submitted."""
    return shlex.join(["python", "-m", "raydefense.cli", *command])


def mlflow_ui(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    return f"{tracking_uri} (a store on the cluster's head; serve it with `mlflow ui` there)"


def submit(
    command: list[str],
    tracking_uri: str,
    address: Optional[str] = None,
    working_dir: str = ".",
    follow: bool = False,
    submission_id: Optional[str] = None,
    out: Callable[[str], None] = print,
    inputs: Iterable[tuple[str, str]] = (),
    shared_paths: Iterable[str] = (),
    count_nodes: Callable[[str], int] = alive_nodes,
) -> int:
    """Submit `raydefense <command>` as a Ray job; with `follow`, stream its logs and return 0
    only when it succeeded. Returns the process exit status.

    `inputs`: the (config key, path) pairs the job reads (`local_inputs`); on a cluster of more
    than one node, a path outside the working dir and every `shared_paths` prefix is refused
    before anything is uploaded (the other nodes cannot read this machine's files).

    Raises:
        RaydefenseError: the dashboard is unreachable or refuses the client, or an input is
            not staged where every node can read it (one line).
    """
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    if not address.startswith(("http://", "https://")):
        raise ConfigError(
            f"--address {address!r} is not a dashboard URL; give http://HOST:8265 (the Ray "
            "dashboard; `ray dashboard cluster.yaml` forwards it to http://127.0.0.1:8265)"
        )
    token = enable_token_auth()
    try:
        client = JobSubmissionClient(address)
    except Exception as e:  # ConnectionError, auth errors, bad versions: one line each
        text = str(e).strip()
        first = text.splitlines()[0].rstrip(". ") if text else type(e).__name__
        hint = (
            ""
            if token
            else " (a cluster with token auth needs RAY_AUTH_TOKEN or ~/.ray/auth_token here)"
        )
        raise RaydefenseError(
            f"cannot use the Ray dashboard at {address}: {first[:300]}{hint}; start the "
            "cluster (`ray up cluster.yaml`, `ray dashboard cluster.yaml`) or pass --address"
        ) from None
    check_inputs_staged(list(inputs), Path(working_dir), shared_paths, address, count_nodes)
    with tempfile.TemporaryDirectory(prefix="raydefense-submit-") as tmp:
        snap = Path(tmp) / "raydefense"
        size = snapshot(Path(working_dir).resolve(), snap)
        job_id = client.submit_job(
            entrypoint=entrypoint(command),
            runtime_env={"working_dir": str(snap), "env_vars": job_env()},
            submission_id=submission_id,
            metadata={"raydefense.command": shlex.join(command)[:1000]},
        )
    out(f"raydefense: submitted job {job_id} ({size / 2**20:.1f} MiB working dir)")
    out(f"  dashboard: {address.rstrip('/')}/#/jobs/{job_id}")
    out(f"  MLflow UI: {mlflow_ui(tracking_uri)}")
    out(f"  logs:      ray job logs --address {address} --follow {job_id}")
    if not follow:
        return 0
    status = asyncio.run(_follow(client, job_id, out))
    out(f"raydefense: job {job_id} {status}")
    return 0 if status == "SUCCEEDED" else 1


async def _follow(client: Any, job_id: str, out: Callable[[str], None]) -> str:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()
    # tail ends when the job ends; the status may lag it by a moment
    for _ in range(100):
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(0.2)
    return status
