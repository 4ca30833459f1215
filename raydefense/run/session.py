"""Session setup shared by every command: config checks that need the registries, absolute
paths for workers, library versions, local copies of stored files for MLflow artifacts."""

from __future__ import annotations

import os
import platform
import tempfile

import raydefense
from raydefense.attacks.lira_rmia import ReferenceAttack
from raydefense.audit.reference import base_attacks
from raydefense.audit.targets import adaptive_bases, build_attacks, check_explicit_targets
from raydefense.config import ExperimentConfig
from raydefense.data import DATASETS
from raydefense.errors import ConfigError, DataError
from raydefense.storage import Storage


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
