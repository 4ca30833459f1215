"""The pipeline: prepare -> train -> distill -> evaluate -> report, one module per stage and the
graph as data (`graph.GRAPH`).

Each stage has a fingerprint (`raydefense.run.fingerprints`) and publishes `<stage>/_COMPLETE.json`
only after all its outputs are written (invariant 7). A rerun skips complete stages with a matching
fingerprint and resumes the rest (training resumes from its last checkpoint). Heavy work goes
through the run's roles (`RunContext`: fitter, labeller, scorer); the stages stay plain Python.
"""

from __future__ import annotations

from raydefense.pipeline.distill_stage import stage_distill
from raydefense.pipeline.evaluate_stage import stage_evaluate
from raydefense.pipeline.graph import GRAPH, STAGES, Stage, run_pipeline
from raydefense.pipeline.prepare_stage import stage_prepare
from raydefense.pipeline.report_stage import stage_report
from raydefense.pipeline.train_stage import registered_model_name, stage_train

__all__ = [
    "GRAPH",
    "STAGES",
    "Stage",
    "registered_model_name",
    "run_pipeline",
    "stage_distill",
    "stage_evaluate",
    "stage_prepare",
    "stage_report",
    "stage_train",
]
