"""Membership-inference attacks behind one protocol and a registry (`ATTACKS`).

Importing this package registers every built-in attack.
"""

# Registration side effects.
from raydefense.attacks import (  # noqa: F401
    adaptive,
    blackbox,
    clid,
    combined,
    gsa,
    lira_rmia,
    loss,
    pang_wang,
    pia,
    quantile,
    rediffuse,
    secmi,
    secmi_nn,
    sima,
)
from raydefense.attacks.base import ATTACKS, Attack  # noqa: F401
