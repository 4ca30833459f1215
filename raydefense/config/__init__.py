"""Typed config tree, YAML presets shipped with the package, and `--set a.b=v` overrides.

A config is an `ExperimentConfig` (pydantic, unknown keys forbidden), one section per concern:
`data_section`, `families` (the model, validated by its family's schema), `train_section`,
`distill_section`, `attack_sections`, `runtime_sections` (quality, sampling, tracking, storage,
resources), `sweep_section`, `audit_section`; `experiment` joins them and `loader` reads presets
(`raydefense/presets/*.yaml`; a user file may name one in `base:`) and overrides.
"""

from __future__ import annotations

from raydefense.config.attack_sections import (
    ATTACK_SETTINGS,
    AttacksConfig,
    BlackboxNNConfig,
    CLiDConfig,
    CombinedConfig,
    DualMDAdaptiveConfig,
    GSAConfig,
    LiRAConfig,
    LossAttackConfig,
    PangWangConfig,
    PIAConfig,
    QuantileConfig,
    ReDiffuseConfig,
    RMIAConfig,
    SecMIConfig,
    SecMINNConfig,
    ShadowConfig,
    SimAConfig,
)
from raydefense.config.audit_section import AUDIT_ROLE, AuditConfig
from raydefense.config.data_section import CaptionerConfig, DataConfig
from raydefense.config.distill_section import DistillConfig
from raydefense.config.experiment import ExperimentConfig, first_error
from raydefense.config.loader import (
    DEFAULT_PRESET,
    EXPERIMENT_PRESETS,
    HARDWARE_PRESETS,
    HARDWARE_SECTIONS,
    experiment_preset_names,
    hardware_preset_names,
    load_config,
    preset_names,
    set_path,
    split_presets,
    switch_family,
)
from raydefense.config.runtime_sections import (
    QualityConfig,
    ResourcesConfig,
    SamplingConfig,
    StorageConfig,
    TrackingConfig,
)
from raydefense.config.sections import Section
from raydefense.config.sweep_section import AshaConfig, SweepConfig
from raydefense.config.train_section import (
    TRAIN_ROLES,
    VARIANT_PREFIX,
    DPConfig,
    EarlyStoppingConfig,
    RoleTrainConfig,
    TrainConfig,
    VariantConfig,
)
from raydefense.families import (
    DEFAULT_FAMILY,
    MODEL_FAMILIES,
    ModelConfig,
    as_family,
    model_families,
    model_family,
)

__all__ = [
    "ATTACK_SETTINGS",
    "AUDIT_ROLE",
    "AshaConfig",
    "AttacksConfig",
    "AuditConfig",
    "BlackboxNNConfig",
    "CLiDConfig",
    "CaptionerConfig",
    "CombinedConfig",
    "DEFAULT_FAMILY",
    "DEFAULT_PRESET",
    "DPConfig",
    "DataConfig",
    "DistillConfig",
    "DualMDAdaptiveConfig",
    "EXPERIMENT_PRESETS",
    "EarlyStoppingConfig",
    "ExperimentConfig",
    "GSAConfig",
    "HARDWARE_PRESETS",
    "HARDWARE_SECTIONS",
    "LiRAConfig",
    "LossAttackConfig",
    "MODEL_FAMILIES",
    "ModelConfig",
    "PIAConfig",
    "PangWangConfig",
    "QualityConfig",
    "QuantileConfig",
    "RMIAConfig",
    "ReDiffuseConfig",
    "ResourcesConfig",
    "RoleTrainConfig",
    "SamplingConfig",
    "SecMIConfig",
    "SecMINNConfig",
    "Section",
    "ShadowConfig",
    "SimAConfig",
    "StorageConfig",
    "SweepConfig",
    "TRAIN_ROLES",
    "TrackingConfig",
    "TrainConfig",
    "VARIANT_PREFIX",
    "VariantConfig",
    "as_family",
    "experiment_preset_names",
    "first_error",
    "hardware_preset_names",
    "load_config",
    "model_families",
    "model_family",
    "preset_names",
    "set_path",
    "split_presets",
    "switch_family",
]
