"""The two defenses: DualMD (alternating inference) and DistillMD (soft-target distillation)."""
