"""Quality and memorization of generated samples: FID, precision/recall, IS, domain FID, NN ratio.

Pure torch/numpy/scipy (no Ray, no MLflow). Inception FID/IS is optional and needs torch-fidelity
plus a local weights file (`quality.inception_weights`); everything else runs offline on CPU.
"""

from __future__ import annotations

from raydefense.quality.domain import DomainClassifier, embed, train_domain_classifier
from raydefense.quality.fid import (
    feature_stats,
    fid_from_features,
    frechet_distance,
    inception_score,
    precision_recall,
)
from raydefense.quality.inception import inception_features, inception_fid_is
from raydefense.quality.memorization import memorization_summary, nearest_neighbour_ratio

__all__ = [
    "DomainClassifier",
    "embed",
    "feature_stats",
    "fid_from_features",
    "frechet_distance",
    "inception_features",
    "inception_fid_is",
    "inception_score",
    "memorization_summary",
    "nearest_neighbour_ratio",
    "precision_recall",
    "train_domain_classifier",
]
