"""Report stage output: results.json, report.md, ROC plots and sample grids (no Ray, no torch)."""

from __future__ import annotations

from raydefense.report.writer import write_report

__all__ = ["write_report"]
