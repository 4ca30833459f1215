"""Models trained elsewhere, audited as targets (`raydefense audit`; config `audit.models`).

Each imported model takes a target role of the roster: `baseline` (trained on all members),
`teacher_k` (trained on shard k; DualMD's step router is audited when all K teachers are given)
or `student`. Its weights are copied into `models/<role>/` as the train stage would have written
them (`unet/` = raw, `ema/` = EMA; one set of weights serves both when the source has one), so
evaluation, calibration, the report and the MLflow tree are the pipeline's own.

A source is a local directory or an MLflow URI (downloaded with the run's tracking URI):
- a diffusers UNet directory (`config.json` naming UNet2DModel / UNet2DConditionModel + weights);
- a diffusers pipeline directory (`model_index.json` + `unet/`; its `scheduler/` is checked
  against `model.*`);
- a raydefense model directory (`models/<name>`: `unet/` raw + `ema/` EMA weights);
- `models:/<name>/<version>` (the Model Registry), `runs:/<run id>/<path>`: any of the above
  inside the downloaded artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional

from raydefense.audit.targets import audit_targets
from raydefense.config import DEFAULT_FAMILY, ExperimentConfig, model_families
from raydefense.diffusion.backbones import backbone_of, data_shape
from raydefense.diffusion.checkpoint import WEIGHTS_DIRS
from raydefense.errors import ConfigError
from raydefense.layout import model_dir
from raydefense.storage import Storage

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
SEARCH_DEPTH = 4  # how deep into downloaded MLflow artifacts a model directory is looked for


def unet_classes() -> dict[str, str]:
    """{diffusers class name: model.kind} of the registered families that save one."""
    return {f.diffusers_class: k for k, f in model_families().items() if f.diffusers_class}


@dataclass(frozen=True)
class ImportedModel:
    """One model to audit: its role, where it came from, and local weight directories."""

    role: str
    uri: str
    raw: str  # a diffusers UNet directory: the raw (training) weights
    ema: str  # the EMA weights (the same directory when the source has one set)
    scheduler: Optional[str] = None  # a pipeline's scheduler_config.json, when it has one

    def digest(self) -> str:
        """SHA-256 over both weight directories' files (relative paths and bytes)."""
        h = hashlib.sha256()
        for name, directory in (("raw", self.raw), ("ema", self.ema)):
            h.update(name.encode())
            for rel in sorted(_files(directory)):
                h.update(rel.encode())
                with open(os.path.join(directory, rel), "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
        return h.hexdigest()


def _files(directory: str) -> list[str]:
    out = []
    for root, _, names in os.walk(directory):
        out += [os.path.relpath(os.path.join(root, n), directory) for n in names]
    return out


def _unet_class(directory: str) -> Optional[str]:
    """The diffusers class a directory's config.json names, when it is a UNet."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            name = json.load(f).get("_class_name")
    except (OSError, ValueError):
        return None
    return name if name in unet_classes() else None


def _as_model(role: str, uri: str, path: str) -> Optional[ImportedModel]:
    """The model a directory holds (UNet, raydefense model or pipeline dir), else None."""
    if _unet_class(path):
        return ImportedModel(role, uri, path, path)
    raw, ema = (os.path.join(path, WEIGHTS_DIRS[w]) for w in ("raw", "ema"))
    if _unet_class(raw) and _unet_class(ema):
        return ImportedModel(role, uri, raw, ema)
    if os.path.isfile(os.path.join(path, "model_index.json")) and _unet_class(raw):
        sched = os.path.join(path, "scheduler", "scheduler_config.json")
        return ImportedModel(role, uri, raw, raw, sched if os.path.isfile(sched) else None)
    return None


def locate(role: str, uri: str, path: str) -> ImportedModel:
    """The model in a local directory, or (MLflow artifacts) in the shallowest subdirectory that
    holds one.

    Raises:
        ConfigError: no such directory, or no model in it (one line naming the accepted forms).
    """
    if not os.path.isdir(path):
        raise ConfigError(
            f"audit model {role}={uri}: {path!r} is not a directory; give a diffusers UNet or "
            "pipeline directory, a raydefense model directory or an MLflow models:/ URI"
        )
    level = [path]
    for _ in range(SEARCH_DEPTH + 1):  # breadth first: the shallowest model wins
        for directory in level:
            found = _as_model(role, uri, directory)
            if found is not None:
                return found
        level = [
            os.path.join(d, sub)
            for d in level
            for sub in sorted(os.listdir(d))
            if os.path.isdir(os.path.join(d, sub))
        ]
    raise ConfigError(
        f"audit model {role}={uri}: no diffusers UNet under {path!r}; give a UNet directory "
        "(config.json naming UNet2DModel or UNet2DConditionModel + weights), a pipeline "
        "directory (model_index.json + unet/) or a raydefense model directory (unet/ + ema/)"
    )


def fetch(uri: str, tracking_uri: Optional[str], cache_dir: str) -> str:
    """A local directory holding `uri`: the path itself, or the downloaded MLflow artifacts."""
    if not uri.startswith(MLFLOW_SCHEMES):
        return os.path.abspath(os.path.expanduser(uri))
    import mlflow
    from mlflow.exceptions import MlflowException

    dest = tempfile.mkdtemp(prefix="model-", dir=cache_dir)
    try:
        return str(
            mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=dest, tracking_uri=tracking_uri
            )
        )
    except MlflowException as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"audit model {uri}: MLflow could not fetch it ({first}); check the name and "
            f"version against the tracking server {tracking_uri}"
        ) from None


def precheck(cfg: ExperimentConfig) -> None:
    """What can be checked before anything is written or fetched: the roles form targets, and
    every local source holds a model (MLflow URIs are fetched later).

    Raises:
        ConfigError: one line, as `audit_targets` and `locate`.
    """
    audit_targets(cfg)
    for role, uri in sorted(cfg.audit.models.items()):
        if not uri.startswith(MLFLOW_SCHEMES):
            locate(role, uri, fetch(uri, None, ""))


def resolve_imports(
    cfg: ExperimentConfig, tracking_uri: Optional[str], cache_dir: str
) -> tuple[ExperimentConfig, dict[str, ImportedModel]]:
    """Locate every `audit.models` source (fetching MLflow URIs into cache_dir) and return the
    config with `audit.digests` set. The audit's targets are the imported roles
    (raydefense.audit.targets.default_targets)."""
    models = {
        role: locate(role, uri, fetch(uri, tracking_uri, cache_dir))
        for role, uri in sorted(cfg.audit.models.items())
    }
    out = cfg.model_copy(deep=True)
    out.audit.digests = {role: m.digest() for role, m in models.items()}
    return out, models


def check_imported(cfg: ExperimentConfig, m: ImportedModel, image_shape: tuple[int, ...]) -> None:
    """The model loads as `model.kind`'s backbone, takes the data's shape, and (when it comes
    with a scheduler) was trained with `model.*`'s noise schedule.

    Raises:
        ConfigError: one line naming the mismatch and the setting that fixes it.
    """
    cls = _unet_class(m.raw)
    kinds = unet_classes()
    if cls is None or kinds[cls] != cfg.model.kind:
        raise ConfigError(
            f"audit model {m.role}={m.uri} is a {cls}, but model.kind={cfg.model.kind}: set "
            f"model.kind={kinds.get(cls or '', DEFAULT_FAMILY)}"
        )
    with open(os.path.join(m.raw, "config.json")) as f:
        conf = json.load(f)
    want = data_shape(cfg.model, (image_shape[0], image_shape[1], image_shape[2]))
    size = conf.get("sample_size")
    sizes = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    got = (conf.get("in_channels"), *sizes)
    if got != want:
        raise ConfigError(
            f"audit model {m.role}={m.uri} takes {got[0]}x{got[1]}x{got[2]} inputs, but the "
            f"data are {want[0]}x{want[1]}x{want[2]}: point data.* at the images it was "
            "trained on (data.source, data.resolution)"
        )
    if m.scheduler:
        with open(m.scheduler) as f:
            sched = json.load(f)
        for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule"):
            mine, theirs = getattr(cfg.model, key), sched.get(key)
            same = theirs == mine or (
                isinstance(mine, float) and theirs is not None and abs(float(theirs) - mine) < 1e-12
            )
            if not same:
                raise ConfigError(
                    f"audit model {m.role}={m.uri} was trained with {key}={theirs!r}, but "
                    f"model.{key}={mine!r}: set model.{key}={theirs!r}"
                )
    for directory in {m.raw, m.ema}:
        try:
            backbone_of(cfg.model).load(directory)
        except (OSError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"audit model {m.role}={m.uri}: its weights do not load ({first})"
            ) from None


def import_model(storage: Storage, m: ImportedModel) -> None:
    """Copy the weights into models/<role>/ (unet/ raw, ema/ EMA), staged then published."""
    with tempfile.TemporaryDirectory(prefix="raydefense-import-") as tmp:
        for weights, src in (("raw", m.raw), ("ema", m.ema)):
            shutil.copytree(src, os.path.join(tmp, WEIGHTS_DIRS[weights]))
        with open(os.path.join(tmp, "imported.json"), "w") as f:
            json.dump({"role": m.role, "uri": m.uri, "sha256": m.digest()}, f)
        storage.upload_dir(tmp, model_dir(m.role))
