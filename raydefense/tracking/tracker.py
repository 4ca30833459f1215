"""The tracker protocol and its null implementation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Protocol


class Tracker(Protocol):
    """Explicit run ids everywhere (no thread-local 'active run'), so threads and Ray workers can
    log to the run the driver created."""

    @property
    def uri(self) -> Optional[str]:
        """The tracking server workers log to (None: nothing is tracked)."""
        ...

    def close_orphans(self, host: str, alive: Callable[[int], bool]) -> list[str]:
        """Mark KILLED the runs an earlier invocation on `host` left RUNNING when its process
        (pid tag) is no longer `alive`; returns their ids."""
        ...

    def start_run(
        self,
        name: str,
        parent_id: Optional[str] = None,
        params: Optional[dict[str, str]] = None,
        tags: Optional[dict[str, str]] = None,
    ) -> Optional[str]: ...

    def log_metrics(
        self, run_id: Optional[str], metrics: dict[str, float], step: Optional[int] = None
    ) -> None: ...

    def log_artifact(
        self, run_id: Optional[str], local_path: str, artifact_path: Optional[str] = None
    ) -> None: ...

    def set_tags(self, run_id: Optional[str], tags: dict[str, str]) -> None: ...

    def end_run(self, run_id: Optional[str], status: str = "FINISHED") -> None: ...

    def log_model(
        self,
        run_id: Optional[str],
        model_dir: str,
        meta: dict[str, Any],
        registered_name: Optional[str] = None,
    ) -> Optional[dict[str, Any]]:
        """Log a model directory to the run as an MLflow model (and register it); returns
        {model_uri, name, version, run_id}, or None when nothing was logged."""
        ...

    def tag_model_version(
        self, name: str, version: str, tags: dict[str, str], description: Optional[str] = None
    ) -> None:
        """Set tags (and the description, shown first in the registry UI) of a model version."""
        ...

    def log_inputs(self, run_id: Optional[str], datasets: list[dict[str, Any]]) -> None:
        """Datasets as the run's MLflow inputs: each {name, digest, source, context, schema,
        profile}."""
        ...


class NullTracker:
    """Logs nothing (tracking.enabled = false, tests)."""

    uri: Optional[str] = None

    def close_orphans(self, host, alive):
        return []

    def start_run(self, name, parent_id=None, params=None, tags=None):
        return None

    def log_metrics(self, run_id, metrics, step=None):
        pass

    def log_artifact(self, run_id, local_path, artifact_path=None):
        pass

    def set_tags(self, run_id, tags):
        pass

    def end_run(self, run_id, status="FINISHED"):
        pass

    def log_model(self, run_id, model_dir, meta, registered_name=None):
        return None

    def tag_model_version(self, name, version, tags, description=None):
        pass

    def log_inputs(self, run_id, datasets):
        pass
