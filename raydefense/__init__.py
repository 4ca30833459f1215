"""raydefense: DualMD / DistillMD membership-inference defenses for diffusion models, on Ray.

The core (everything outside `raydefense.distributed` and `raydefense.cli`) is plain PyTorch and
imports without Ray.
"""

__version__ = "0.1.0"
