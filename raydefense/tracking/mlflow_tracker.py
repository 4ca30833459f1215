"""MLflow implementation of the tracker, through MlflowClient with explicit run ids."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional
from urllib.parse import urlsplit

from raydefense.errors import ConfigError

# The pyfunc's code, logged with every model ("model from code": loading needs no raydefense).
SAMPLER_MODEL = os.path.join(os.path.dirname(__file__), "sampler_model.py")
# A run's first MLflow call must fail fast: MLflow's own HTTP retries (7, exponential backoff)
# take minutes before anything says the server is missing.
PROBE_TIMEOUT_S = 5.0


def _resolve_uri(uri: str) -> str:
    """Make relative sqlite paths absolute, so Ray workers in other cwds hit the same DB."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + os.path.abspath(uri[len(prefix) :])
    return uri


def check_reachable(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """For an http(s) tracking URI, a TCP connect to its host and port within timeout_s.

    Raises:
        ConfigError: one line naming the URI, what failed and the fix.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    t0 = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConfigError(
            f"tracking.uri {uri!r} is unreachable ({reason} after "
            f"{time.monotonic() - t0:.1f}s); start the MLflow server, fix tracking.uri, or "
            "set tracking.enabled=false"
        ) from None


@contextmanager
def _few_retries(timeout_s: float) -> Iterator[None]:
    """MLflow HTTP calls inside the block retry at most once, each within timeout_s."""
    saved = {k: os.environ.get(k) for k in _RETRY_ENV}
    os.environ.update(
        {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout_s))}
    )
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_RETRY_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


class MlflowTracker:
    """One experiment (named after the config's experiment); runs nested by mlflow.parentRunId."""

    def __init__(self, uri: str, experiment: str, artifact_location: Optional[str] = None) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = _resolve_uri(uri)
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri=self.uri)
        check_reachable(self.uri)
        # Creating/migrating a fresh SQLite DB happens here, once, on the driver: concurrent
        # first use from several processes races in the schema migration.
        try:
            with _few_retries(PROBE_TIMEOUT_S):
                exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                exp.experiment_id
                if exp is not None
                else self.client.create_experiment(experiment, artifact_location)
            )
        except Exception as e:  # MLflow raises several types for a bad URI
            raise ConfigError(
                f"tracking.uri {uri!r} is not usable: {str(e).splitlines()[0]}"
            ) from None

    def start_run(self, name, parent_id=None, params=None, tags=None):
        all_tags = dict(tags or {})
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        if params:
            from mlflow.entities import Param

            items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):
                self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id

    def log_metrics(self, run_id, metrics, step=None):
        if run_id is None or not metrics:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        )

    def log_artifact(self, run_id, local_path, artifact_path=None):
        if run_id is None:
            return
        if os.path.isdir(local_path):
            self.client.log_artifacts(run_id, local_path, artifact_path)
        else:
            self.client.log_artifact(run_id, local_path, artifact_path)

    def set_tags(self, run_id, tags):
        if run_id is None:
            return
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    def end_run(self, run_id, status="FINISHED"):
        if run_id is not None:
            self.client.set_terminated(run_id, status)

    def log_model(self, run_id, model_dir, meta, registered_name=None):
        """The model directory (ema/ and unet/; the optimizer state is left out) as an MLflow
        pyfunc that generates images (raydefense/tracking/sampler_model.py, logged as code),
        with its signature and pip requirements; registered as `registered_name`."""
        if run_id is None:
            return None
        import mlflow

        from raydefense.tracking.signature import pip_requirements, sampler_signature

        with tempfile.TemporaryDirectory(prefix="raydefense-model-") as tmp:
            weights = os.path.join(tmp, "weights")
            for sub in ("ema", "unet"):
                shutil.copytree(os.path.join(model_dir, sub), os.path.join(weights, sub))
            meta_path = os.path.join(tmp, "model.json")
            with open(meta_path, "w") as f:
                json.dump(meta, f, indent=2)
            # The fluent API is the only way MLflow logs a model; point it at this tracker's URI
            # (not restored: mlflow.get_tracking_uri() resolves a default path against the cwd,
            # which a Ray job driver may no longer have, and raydefense uses explicit clients).
            mlflow.set_tracking_uri(self.uri)
            try:  # log_model inspects the cwd (a uv project?): a vanished one fails it
                os.getcwd()
            except FileNotFoundError:
                os.chdir(tmp)
            with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
                # "no input example": generating one would run the sampler at log time
                warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=SAMPLER_MODEL,
                    artifacts={"weights": weights, "model.json": meta_path},
                    signature=sampler_signature(meta),
                    pip_requirements=pip_requirements(meta),
                    registered_model_name=registered_name,
                )
        version = info.registered_model_version
        return {
            "model_uri": info.model_uri,
            "name": registered_name,
            "version": None if version is None else str(version),
            "run_id": run_id,
        }

    def tag_model_version(self, name, version, tags, description=None):
        for k, v in tags.items():
            self.client.set_model_version_tag(name, str(version), k, str(v))
        if description:
            self.client.update_model_version(name, str(version), description=description)

    def log_inputs(self, run_id, datasets):
        if run_id is None or not datasets:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag

        self.client.log_inputs(
            run_id,
            datasets=[
                DatasetInput(
                    dataset=Dataset(
                        name=d["name"],
                        digest=d["digest"],
                        source_type="raydefense",
                        source=json.dumps({"uri": d["source"]}),
                        schema=json.dumps(d.get("schema", {})),
                        profile=json.dumps(d.get("profile", {})),
                    ),
                    tags=[InputTag("mlflow.data.context", d["context"])],
                )
                for d in datasets
            ],
        )

    def close_orphans(self, host: str, alive: Callable[[int], bool]) -> list[str]:
        """Mark KILLED the RUNNING pipeline runs that an earlier invocation on this host left
        behind when its driver died (SIGKILL, a lost node), and their RUNNING children.

        A run is an orphan when its `raydefense.host` tag is `host` and its `raydefense.pid`
        is no longer alive. Returns the ids of the runs it closed.
        """
        closed: list[str] = []
        parents = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`raydefense.host` = '{host}'",
            max_results=200,
        )
        for run in parents:
            pid = run.data.tags.get("raydefense.pid", "")
            if not pid.isdigit() or alive(int(pid)):
                continue
            children = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"attributes.status = 'RUNNING' and "
                f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
                max_results=500,
            )
            for r in [*children, run]:
                self.client.set_terminated(r.info.run_id, "KILLED")
                closed.append(r.info.run_id)
        return closed


def make_tracker(
    uri: str, experiment: str, enabled: bool = True, storage_uri: Optional[str] = None
):
    """The configured tracker (NullTracker when tracking is disabled).

    With an S3 storage root and a local tracking store (SQLite, file), a new MLflow experiment
    keeps its artifacts next to the run's other outputs (`<storage root>/<experiment>/mlflow`).
    An MLflow server (http[s]://) decides its artifact store itself (`--artifacts-destination`).
    """
    from raydefense.tracking.tracker import NullTracker

    if not enabled:
        return NullTracker()
    remote = uri.startswith(("http://", "https://", "databricks"))
    location = (
        f"{storage_uri.rstrip('/')}/mlflow"
        if storage_uri and storage_uri.startswith("s3://") and not remote
        else None
    )
    return MlflowTracker(uri, experiment, artifact_location=location)
