"""Exception hierarchy. Every message says what is wrong and what to change."""

from __future__ import annotations


class RaydefenseError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(RaydefenseError):
    """A config key is unknown or a value is invalid."""


class UnknownComponentError(ConfigError):
    """A registry lookup failed (unknown dataset, attack, model preset)."""


class DataError(RaydefenseError):
    """Input data is missing, malformed, or violates a split invariant."""


class SplitOverlapError(DataError):
    """Members/non-members or shards overlap (by index or by content hash)."""


class PrivacyInvariantError(RaydefenseError):
    """A privacy invariant (DESIGN.md) was violated at run time."""


class ResourceError(RaydefenseError):
    """The requested resources cannot be satisfied by the cluster."""


class StorageError(RaydefenseError):
    """The storage root is unreachable, unwritable or holds inconsistent outputs."""
