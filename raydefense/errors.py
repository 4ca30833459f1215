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


class TrainingError(RaydefenseError):
    """A fit could not finish."""


class NonFiniteLossError(TrainingError):
    """The training loss became nan or inf; `step` is the first such step (1-based)."""

    def __init__(self, step: int, value: float, model: str = "") -> None:
        self.step, self.value, self.model = step, value, model
        where = f"train {model}: " if model else ""
        super().__init__(
            f"{where}the loss became {value} at step {step}; the fit stopped there. Lower "
            "train.lr or raise train.warmup_steps (a changed config trains the model afresh)"
        )

    def __reduce__(self) -> tuple[type, tuple[int, float, str]]:  # crosses Ray processes
        return (type(self), (self.step, self.value, self.model))


class FitsFailed(TrainingError):
    """Some fits of a stage failed; `failed` maps each to its error, `done` lists those that
    finished (their models are complete)."""

    def __init__(self, failed: dict[str, BaseException], done: list[str]) -> None:
        self.failed, self.done = failed, done
        first = next(iter(failed.values()))
        more = f" ({len(failed) - 1} more fit(s) failed too)" if len(failed) > 1 else ""
        super().__init__(f"{str(first).splitlines()[0] if str(first) else repr(first)}{more}")
