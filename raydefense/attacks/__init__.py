"""Membership-inference attacks behind one protocol and a registry (`ATTACKS`).

Importing this package registers every built-in attack.
"""

from raydefense.attacks.base import ATTACKS, Attack  # noqa: F401
from raydefense.attacks import loss, secmi  # noqa: F401  (registration side effects)
