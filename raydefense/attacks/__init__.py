"""Membership-inference attacks behind one protocol and a registry (`ATTACKS`).

Importing this package registers every built-in attack.
"""

# Registration side effects.
from raydefense.attacks import adaptive, blackbox, gsa, loss, pia, secmi, secmi_nn, sima  # noqa: F401
from raydefense.attacks.base import ATTACKS, Attack  # noqa: F401
