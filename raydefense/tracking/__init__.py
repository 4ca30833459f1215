"""Experiment tracking: an MLflow run tree (parent per invocation, children per model/evaluation),
or a null tracker. Only the driver and rank 0 of a fit log."""

from raydefense.tracking.tracker import NullTracker, Tracker  # noqa: F401
