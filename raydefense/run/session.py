"""Session setup shared by every command: config checks that need the registries, absolute
paths for workers, library versions, local copies of stored files for MLflow artifacts, and
`open_run` (a command's run: storage, tracker, parent run, the executor's roles, cleanup)."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import raydefense
from raydefense.attacks.lira_rmia import ReferenceAttack
from raydefense.audit.reference import base_attacks
from raydefense.audit.targets import adaptive_bases, build_attacks, check_explicit_targets
from raydefense.config import ExperimentConfig
from raydefense.data import DATASETS
from raydefense.errors import ConfigError, DataError
from raydefense.run.context import Backend, RunContext
from raydefense.storage import Storage
from raydefense.tracking.tracker import Tracker

log = logging.getLogger("raydefense")


def validate_config(cfg: ExperimentConfig) -> None:
    """Checks that need the registries (they are not expressible in the pydantic schema)."""
    DATASETS.get(cfg.data.source)
    attacks = build_attacks(cfg)
    check_explicit_targets(cfg)
    adaptive_bases(cfg)
    for a in attacks:  # a reference attack's bases must be enabled query attacks
        if isinstance(a, ReferenceAttack):
            base_attacks(cfg, a)
    if cfg.data.split_file and not os.path.isfile(cfg.data.split_file):
        raise DataError(f"data.split_file {cfg.data.split_file!r} does not exist")
    if cfg.data.root and not os.path.exists(cfg.data.root):
        raise DataError(f"data.root {cfg.data.root!r} does not exist; point it at the dataset")
    for key, path in [
        *(("data.member_roots", r) for r in cfg.data.member_roots or []),
        ("data.nonmember_root", cfg.data.nonmember_root),
    ]:
        if path is not None and not os.path.exists(path):
            raise DataError(f"{key} {path!r} does not exist; point it at the images")
    if cfg.train.batch_size % cfg.resources.workers_per_model:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by "
            f"resources.workers_per_model={cfg.resources.workers_per_model}"
        )


def absolutize(cfg: ExperimentConfig) -> ExperimentConfig:
    """Local storage roots and split files become absolute, so Ray workers in other working
    directories read the same files."""
    cfg = cfg.model_copy(deep=True)
    if "://" not in cfg.storage.root:
        cfg.storage.root = os.path.abspath(os.path.expanduser(cfg.storage.root))
    if cfg.data.split_file:
        cfg.data.split_file = os.path.abspath(cfg.data.split_file)
    if cfg.data.root:
        cfg.data.root = os.path.abspath(cfg.data.root)
    if cfg.data.member_roots is not None and cfg.data.nonmember_root is not None:
        cfg.data.member_roots = [os.path.abspath(r) for r in cfg.data.member_roots]
        cfg.data.nonmember_root = os.path.abspath(cfg.data.nonmember_root)
    cfg.audit.models = {
        role: uri
        if uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/"))
        else os.path.abspath(os.path.expanduser(uri))
        for role, uri in cfg.audit.models.items()
    }
    return cfg


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"raydefense": raydefense.__version__, "python": platform.python_version()}
    for pkg in ("torch", "diffusers", "ray", "mlflow", "pyarrow", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def local_copy(storage: Storage, rel: str) -> str:
    """A temporary local copy of a stored file (MLflow logs local files)."""
    path = os.path.join(tempfile.mkdtemp(prefix="raydefense-art-"), os.path.basename(rel))
    with open(path, "wb") as f:
        f.write(storage.read_bytes(rel))
    return path


# A run's executor: (checked config, tracking server URI, tracker) -> its Backend.
BackendFactory = Callable[[ExperimentConfig, Optional[str], Tracker], Backend]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def git_sha() -> Optional[str]:
    """The commit of the raydefense checkout in use (None outside a git checkout)."""
    try:
        return (
            subprocess.check_output(
                ["git", "rev-parse", "HEAD"],
                cwd=os.path.dirname(os.path.abspath(raydefense.__file__)),
                stderr=subprocess.DEVNULL,
                timeout=5,
            )
            .decode()
            .strip()
        )
    except (OSError, subprocess.SubprocessError):
        return None


@contextmanager
def open_run(
    command: str, cfg: ExperimentConfig, force: Sequence[str], backend: BackendFactory
) -> Iterator[RunContext]:
    """A run of `command` on a checked config, as a RunContext: its storage (writable), its
    tracker (runs a killed earlier invocation on this host left RUNNING are closed), an audit's
    models located and digested, the parent MLflow run with its tags and the config as an
    artifact, and the executor's roles. On exit the parent run ends FINISHED, or FAILED when the
    block raised, and the run's temporary files go."""
    from raydefense.tracking.mlflow_tracker import make_tracker

    storage = Storage(cfg.storage.root, cfg.experiment)
    storage.check_writable()
    tracker = make_tracker(cfg.tracking.uri, cfg.experiment, cfg.tracking.enabled, storage.uri())
    imports: dict[str, Any] = {}
    audit_cache = tempfile.mkdtemp(prefix="raydefense-audit-") if cfg.audit.models else ""
    try:
        if cfg.audit.models:  # locate (fetch) the models, digest their weights, pick the targets
            from raydefense.audit.imported import resolve_imports

            cfg, imports = resolve_imports(cfg, tracker.uri, audit_cache)
        host = socket.gethostname()
        closed = tracker.close_orphans(host, _pid_alive)
        if closed:
            log.info(
                "marked %d MLflow run(s) of a killed earlier invocation as KILLED", len(closed)
            )
        tags = {
            "raydefense.command": command,
            "raydefense.host": host,
            "raydefense.pid": str(os.getpid()),
            **{f"version.{k}": v for k, v in versions().items()},
        }
        sha = git_sha()
        if sha:
            tags["mlflow.source.git.commit"] = sha
        parent = tracker.start_run(f"pipeline/{command}", params=cfg.flat_params(), tags=tags)
        status = "FAILED"
        try:
            _log_config(tracker, parent, cfg)
            yield RunContext(
                cfg=cfg,
                storage=storage,
                backend=backend(cfg, tracker.uri, tracker),
                tracker=tracker,
                parent_run=parent,
                force=set(force),
                imports=imports,
            )
            status = "FINISHED"
        finally:
            tracker.end_run(parent, status)
    finally:
        if audit_cache:
            shutil.rmtree(audit_cache, ignore_errors=True)


def _log_config(tracker: Tracker, run_id: Optional[str], cfg: ExperimentConfig) -> None:
    with tempfile.TemporaryDirectory(prefix="raydefense-cfg-") as d:
        path = os.path.join(d, "config.json")
        with open(path, "w") as f:
            json.dump(cfg.model_dump(mode="json"), f, indent=2)
        tracker.log_artifact(run_id, path)
