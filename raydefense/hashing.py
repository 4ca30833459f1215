"""One stable hash for fingerprints: SHA-256 of canonical JSON (sorted keys; values JSON cannot
encode are written with str()). Stage, model, sweep and config fingerprints all use it, so equal
inputs give equal fingerprints in every process and on every platform."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(value: Any) -> str:
    """Hex SHA-256 of `json.dumps(value, sort_keys=True, default=str)` (tuples hash as lists)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
