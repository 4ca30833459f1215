"""The attack base classes, access levels and registry.

Every attack orients its output **higher = more likely a member** and declares:
- `name`: its registry name;
- `access`: what it needs from a target, one of ACCESS_LEVELS (weakest first):
  "black-box" (generated images only), "gray-box" (eps(x_t, t) queries), "white-box" (parameters
  and gradients);
- `kind`: how it is computed:
  - "query": per-row scores from eps queries, `score(q: Query) -> [B, S]`, one column per setting;
    its siblings "text" (eps queries under caption-derived conditions, `score_text(q, text)`) and
    "interface" (the target's public sampler, `score_interface(q: PublicQuery)`) give columns
    the same way: every ColumnAttack answers `columns(batch, eps)` from the view it reads;
  - "learned": per-row features (`features(q: Query) -> [B, F]`) that a classifier turns into
    scores;
    `trains_on` says whether that classifier is fitted on the target's calibration part
    ("calibration", out-of-fold scores there) or on shadow models' rows ("shadow");
  - "generated": scores from the target's generated images (`score_generated(...) -> [B, S]`);
  - "reference": per-row recalibration of base query columns against reference models that
    never trained on the row and/or population rows (LiRA, RMIA, quantile regression).
- `settings()`: one params dict per output column (a t sweep is several settings of one attack).

Attacks never touch Ray, MLflow or the file system. A `Query` is one batch of rows put to one
model (eps, schedule, x0, row ids, seed, cond) with a per-batch cache that attacks use to share
work (`Query.shared`: SecMI_stat and SecMI_NN share one DDIM round trip, GSA1 and GSA2 one
gradient pass).

`Query.cond`: the targets' conditioning, [B, L, D] text embeddings aligned with x0
for text-to-image models, None for unconditional ones. It reaches every eps / network call,
expanded the way the attack expands x (`repeat_cond`, `repeat_interleave_cond`, `slice_cond`);
with cond=None eps is called as eps(x_t, t), exactly as before (`call_eps`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional, Protocol, TypeVar

import numpy as np
import torch

from raydefense.diffusion.eps import EpsModel
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import ConfigError
from raydefense.registry import Registry

_T = TypeVar("_T")

ACCESS_LEVELS = ("black-box", "gray-box", "white-box")
ACCESS_MEANING = {
    "black-box": "generated images only",
    "gray-box": "noise predictions eps(x_t, t)",
    "white-box": "model parameters and gradients",
}


class AccessError(ConfigError):
    """An attack needs more access than a target exposes."""


def check_access(attack: Attack, target: str, target_access: str) -> None:
    """Raise AccessError when `attack` needs more than `target_access` gives."""
    need, have = ACCESS_LEVELS.index(attack.access), ACCESS_LEVELS.index(target_access)
    if need > have:
        raise AccessError(
            f"attack {attack.name!r} needs {attack.access} access "
            f"({ACCESS_MEANING[attack.access]}) but target {target!r} exposes only "
            f"{target_access} access ({ACCESS_MEANING[target_access]}); drop it from "
            f"attacks.enabled or from attacks.targets"
        )


Access = Literal["black-box", "gray-box", "white-box"]
AttackKind = Literal[
    "query", "learned", "generated", "adaptive", "text", "interface", "reference", "combined"
]


class Attack(ABC):
    """What every attack declares (class attributes) and offers; subclass one of QueryAttack,
    LearnedAttack, GeneratedAttack (or, for attacks on DualMD's router, set needs_router)."""

    name: ClassVar[str] = ""
    access: ClassVar[Access]
    kind: ClassVar[AttackKind]
    # learned attacks: where their classifier's training rows come from
    trains_on: ClassVar[Optional[Literal["calibration", "shadow"]]] = None
    # applies only to DualMD's step router (raydefense.attacks.adaptive)
    needs_router: ClassVar[bool] = False
    # needs captions: text-to-image targets only (model.kind=sd)
    text_only: ClassVar[bool] = False
    # reference-calibrated attacks (raydefense.attacks.lira_rmia): they compare the target with
    # OUT reference models (the attacker's shadows) and/or with population rows
    uses_references: ClassVar[bool] = False
    uses_population: ClassVar[bool] = False

    def __init__(self, cfg: Any, num_train_timesteps: int = 1000) -> None:
        """cfg: the attack's config section (raydefense.config.AttacksConfig.<name>) or its
        dict; num_train_timesteps: T of the audited models' schedule."""
        self.cfg = cfg

    @abstractmethod
    def settings(self) -> list[dict[str, Any]]:
        """One params dict per output column."""
        ...

    def weights(self, default: str) -> str:
        """Which weights of a target ("ema" | "raw") the attack reads: attacks.weights
        (`default`) unless its own section says otherwise (GSA: the raw training weights)."""
        return default


@dataclass(frozen=True, eq=False)
class Query:
    """One batch of audited rows put to one model: what a gray- or white-box attack reads.

    eps: the target's noise predictor, eps(x_t, t) or eps(x_t, t, cond) -> like x_t (a FrozenEps
        gives white-box attacks its `.net`; a step router serves DualMD).
    schedule: the target's noise schedule.
    x0: [B, C, H, W] in [-1, 1] (latents [B, c, h, w] for text-to-image families).
    row_ids: [B] int64 stable row ids: randomness is seeded per row, so a batch's composition
        never changes a score.
    seed: the run's base seed.
    cond: [B, L, D] text embeddings aligned with x0 (cond[i] conditions x0[i]) for text-to-image
        targets, None for unconditional models.
    cache: per-batch work shared between attacks (`shared`); one dict for every attack of a batch.
    """

    eps: EpsModel
    schedule: NoiseSchedule
    x0: torch.Tensor
    row_ids: torch.Tensor
    seed: int = 0
    cond: Optional[torch.Tensor] = None
    cache: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = self.x0.shape[0]
        if self.row_ids.dim() != 1 or self.row_ids.shape[0] != b:
            raise ValueError(
                f"a query needs one row id per image of x0 (batch {b}); got row_ids of shape "
                f"{tuple(self.row_ids.shape)}"
            )
        check_cond("query", self.x0, self.cond)

    @property
    def batch_size(self) -> int:
        return int(self.x0.shape[0])

    def shared(self, key: tuple[Any, ...], compute: Callable[[], _T]) -> _T:
        """compute() once per batch for `key` (extended by cond's identity when cond is given,
        `cond_cache_key`): how SecMI_stat and SecMI_NN share one DDIM round trip, GSA1 and GSA2
        one gradient pass."""
        k = cond_cache_key(key, self.cond, self.cache)
        if k not in self.cache:
            self.cache[k] = compute()
        return self.cache[k]


@dataclass(frozen=True, eq=False)
class PublicQuery:
    """One batch of audited rows put to a target's public interface (black-box attacks).

    interface: what the target's users can call (PublicInterface).
    images: [B, C, H, W] in [-1, 1], the rows' pixels (what a black-box attacker holds).
    row_ids: [B] int64 stable row ids. seed: the run's base seed.
    cond: [B, L, D] the rows' caption embeddings (text-to-image targets), else None.
    feature_fn: images -> [N, D] features, when a feature extractor is configured.
    """

    interface: PublicInterface
    images: torch.Tensor
    row_ids: torch.Tensor
    seed: int = 0
    cond: Optional[torch.Tensor] = None
    feature_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


class AttackBatch(Protocol):
    """What a scoring worker offers the attacks for one batch of one target's rows: the views
    an attack can ask for, built on demand (a text view exists only for text-to-image targets)."""

    def query(self, eps: EpsModel) -> Query:
        """The gray-box view: the rows put to `eps` (one cache per batch)."""
        ...

    def text(self) -> TextBatch:
        """The rows' captions and text encoder (text-to-image targets)."""
        ...

    def public(self, eps: EpsModel) -> PublicQuery:
        """The black-box view: the rows and the public interface of the target behind `eps`."""
        ...


class ColumnAttack(Attack):
    """An attack whose per-row scores are its columns, computed from one batch (no classifier):
    one column per setting. Its subclasses differ in the view of the batch they read."""

    @abstractmethod
    def columns(self, batch: AttackBatch, eps: EpsModel) -> torch.Tensor:
        """[B, S] float32, S = len(settings()), higher = member."""
        ...


class QueryAttack(ColumnAttack):
    """Scores from eps queries on the rows (any target)."""

    kind: ClassVar[AttackKind] = "query"

    def columns(self, batch: AttackBatch, eps: EpsModel) -> torch.Tensor:
        return self.score(batch.query(eps))

    @abstractmethod
    def score(self, q: Query) -> torch.Tensor:
        """q: the batch (Query). Returns [B, S] float32, S = len(settings()), higher = member."""
        ...


class LearnedAttack(Attack):
    kind: ClassVar[AttackKind] = "learned"

    @abstractmethod
    def features(self, q: Query) -> torch.Tensor:
        """[B, F] float32 features per row (flattened) of the batch q."""
        ...

    @abstractmethod
    def fit_predict(
        self,
        train_x: np.ndarray,
        train_y: np.ndarray,
        eval_x: list[np.ndarray],
        seed: int,
        image_shape: Optional[tuple[int, int, int]] = None,
    ) -> list[np.ndarray]:
        """Fit the attack model on (train_x [N, F], train_y [N] in {0, 1}) and score each
        matrix of eval_x ([M_i, F] -> [M_i], higher = member). image_shape: (C, H, W) of the
        audited images, for features that keep their spatial layout."""
        ...


class CalibrationTrainedAttack(LearnedAttack):
    """A learned attack whose classifier trains on the audited target's calibration part."""

    trains_on: ClassVar[Optional[Literal["calibration", "shadow"]]] = "calibration"

    @abstractmethod
    def cross_fit_predict(
        self,
        train_x: np.ndarray,
        train_y: np.ndarray,
        eval_x: list[np.ndarray],
        seed: int,
        image_shape: Optional[tuple[int, int, int]] = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Out-of-fold scores of train_x [N] (each fold scored by a model trained on the
        others) and scores of every eval matrix, as fit_predict's."""
        ...


@dataclass
class TextBatch:
    """The text side of a batch of a text-to-image target's rows, for attacks that vary the
    condition (CLiD). `cond` conditions the other attacks' queries too.

    captions: each row's original caption (B strings). cond: [B, L, D] their embeddings.
    null: [L, D] the empty prompt's embedding. token_ids(captions) -> [N, L] long, the
    tokenizer's padded ids (position 0 = start token); embed_ids(ids [N, L]) -> [N, L, D];
    end_id: the end-of-text token id (what CLiD writes over removed tokens).
    """

    captions: list[str]
    cond: torch.Tensor
    null: torch.Tensor
    token_ids: Callable[[list[str]], torch.Tensor]
    embed_ids: Callable[[torch.Tensor], torch.Tensor]
    end_id: int


class TextQueryAttack(ColumnAttack):
    """A gray-box attack on text-to-image targets that queries eps under conditions it derives
    from the caption (weakened, null): a sibling of QueryAttack that also reads the captions."""

    text_only: ClassVar[bool] = True
    kind: ClassVar[AttackKind] = "text"

    def columns(self, batch: AttackBatch, eps: EpsModel) -> torch.Tensor:
        return self.score_text(batch.query(eps), batch.text())

    @abstractmethod
    def score_text(self, q: Query, text: TextBatch) -> torch.Tensor:
        """q: the batch (x0 [B, C, h, w] latents); text: the rows' captions and text encoder.
        Returns: [B, S] float32, higher = member."""
        ...


class PublicInterface(Protocol):
    """A target's black-box interface: what its users can call, images in and out.

    `generate(cond, seeds)`: one image per prompt embedding, cond [N, L, D] (None for an
    unconditional model, then N = len(seeds)), each from its own seed -> [N, C, H, W] in
    [-1, 1]. `vary(images, t_start, num_steps, seeds, cond)`: image-to-image variations: each
    image noised to t_start (its seed's noise) and denoised by the public sampler in num_steps
    steps (DualMD: alternating teachers, teacher 1 first) -> [N, C, H, W] in [-1, 1].
    """

    def generate(self, cond: Optional[torch.Tensor], seeds: list[int]) -> torch.Tensor: ...

    def vary(
        self,
        images: torch.Tensor,
        t_start: int,
        num_steps: int,
        seeds: list[int],
        cond: Optional[torch.Tensor] = None,
    ) -> torch.Tensor: ...


class InterfaceAttack(ColumnAttack):
    """A black-box attack that queries a target's public interface per audited row (Pang &
    Wang: generations from the row's caption; ReDiffuse: variations of the row's image)."""

    access: ClassVar[Access] = "black-box"
    kind: ClassVar[AttackKind] = "interface"

    def columns(self, batch: AttackBatch, eps: EpsModel) -> torch.Tensor:
        return self.score_interface(batch.public(eps))

    @abstractmethod
    def score_interface(self, q: PublicQuery) -> torch.Tensor:
        """q: the rows and the target's public interface. Returns: [B, S] float32, higher =
        member."""
        ...


class GeneratedAttack(Attack):
    kind: ClassVar[AttackKind] = "generated"

    @abstractmethod
    def settings(self, with_features: bool = False) -> list[dict[str, Any]]:
        """One params dict per output column; with_features: a feature extractor is set."""
        ...

    @abstractmethod
    def score_generated(
        self,
        generated: torch.Tensor,
        x0: torch.Tensor,
        feature_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Args: generated [M, C, H, W] and x0 [B, C, H, W], both in [-1, 1]; feature_fn maps
        images to [N, D] features when a feature extractor is configured.
        Returns: [B, S] float32, higher = member."""
        ...


ATTACKS: Registry[type[Attack]] = Registry("attack")

# The attack families the suite can cover, strongest-informed last: what the report's worst
# case says it was taken over.
FAMILIES = {
    "threshold": "a threshold on one query statistic (loss, SecMI_stat, PIA, PIAN, SimA, CLiD)",
    "learned": "a classifier over per-row features, fitted on calibration rows or on shadow "
    "models (SecMI_NN, GSA)",
    "black-box": "generated images or the public sampler only (nearest neighbour, Pang & Wang, "
    "ReDiffuse)",
    "router-aware": "DualMD's public step routing: one timestep per teacher, combined",
    "population": "per-example thresholds learned on population rows the target never saw "
    "(quantile regression)",
    "reference": "the target's statistic against reference models trained like it, same "
    "noise (offline LiRA and RMIA: OUT references; online LiRA: IN and OUT)",
    "combined": "a classifier over every attack column of the target, nested cross-validation",
}
# Variants the suite implements but runs only when asked (costly on a CPU): the report names
# the ones a run left out.
ONLINE_LIRA_OFF = (
    "online LiRA: reference models trained IN on half of the audited rows "
    "(not enabled: attacks.lira.online_models = 0)"
)


def variants_not_run(lira_online_models: int, lira_enabled: bool) -> list[str]:
    """The costly variants a run left out (ONLINE_LIRA_OFF when LiRA ran offline only)."""
    return [ONLINE_LIRA_OFF] if lira_enabled and not lira_online_models else []


def attack_family(attack: type[Attack] | Attack) -> str:
    """The family (a FAMILIES key) an attack belongs to."""
    kind = attack.kind
    if kind in ("query", "text"):
        return "threshold"
    if kind == "learned":
        return "learned"
    if kind in ("generated", "interface"):
        return "black-box"
    if kind == "adaptive":
        return "router-aware"
    if kind == "reference":
        return "reference" if attack.uses_references else "population"
    if kind == "combined":
        return "combined"
    raise ValueError(f"attack {attack.name!r} has kind {kind!r}, which has no family")


def scaled_timestep(t: int, schedule: NoiseSchedule) -> int:
    """A timestep given for T = 1000 (the papers' schedule), scaled to this schedule's length."""
    T = schedule.num_train_timesteps
    return int(min(T - 1, max(0, round(t * T / 1000))))


def check_timesteps(name: str, timesteps: list[int], schedule: NoiseSchedule) -> None:
    if not timesteps:
        raise ValueError(f"attacks.{name}.timesteps is empty; list at least one timestep")
    for t in timesteps:
        if not 0 <= t < schedule.num_train_timesteps:
            raise ValueError(
                f"attacks.{name}.timesteps has {t}, outside [0, {schedule.num_train_timesteps})"
            )


# ------------------------------------------------------------------------------- conditioning


def check_cond(name: str, x0: torch.Tensor, cond: Optional[torch.Tensor]) -> None:
    """Raise unless cond is None or has one entry per image of x0 (cond[i] conditions x0[i])."""
    if cond is not None and (cond.dim() < 1 or cond.shape[0] != x0.shape[0]):
        raise ValueError(
            f"attack {name!r}: cond must have one entry per image of x0 (batch "
            f"{x0.shape[0]}); got cond of shape {tuple(cond.shape)}"
        )


def proximal_timestep(eps: EpsModel, t: int) -> int:
    """The timestep of PIA's proximal query eps(x0, .) for an attack at t: 0 for a single model;
    for a step router (DualMD), the first timestep served by the teacher that answers t (its
    `proximal_timestep`), so both queries reach the same model."""
    router = getattr(eps, "proximal_timestep", None)
    return 0 if router is None else int(router(t))


def call_eps(
    eps: EpsModel, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor]
) -> torch.Tensor:
    """eps(x_t, t) when cond is None (the unconditional call, unchanged), else
    eps(x_t, t, cond); cond must already be expanded to x_t's batch."""
    if cond is None:
        return eps(x_t, t)
    return eps(x_t, t, cond)


def repeat_cond(cond: Optional[torch.Tensor], k: int) -> Optional[torch.Tensor]:
    """cond as x.repeat(k, 1, 1, 1) expands x (the whole batch k times); None stays None."""
    if cond is None:
        return None
    return cond.repeat(k, *([1] * (cond.dim() - 1)))


def repeat_interleave_cond(cond: Optional[torch.Tensor], k: int) -> Optional[torch.Tensor]:
    """cond as x.repeat_interleave(k, dim=0) expands x (each item k times); None stays None."""
    if cond is None:
        return None
    return cond.repeat_interleave(k, dim=0)


def slice_cond(cond: Optional[torch.Tensor], sl: slice) -> Optional[torch.Tensor]:
    """cond[sl] (the rows x[sl] holds); None stays None."""
    return None if cond is None else cond[sl]


def cond_cache_key(
    key: tuple[Any, ...], cond: Optional[torch.Tensor], cache: dict
) -> tuple[Any, ...]:
    """The per-batch cache key of work done under `cond`: `key` itself for cond=None, else key
    extended by the identity of the cond tensor (so a conditioned and an unconditioned call, or
    two calls with different cond objects, never share an entry). The cache keeps a reference to
    cond, so its id cannot be reused by another tensor while the cache lives."""
    if cond is None:
        return key
    cache.setdefault(("cond", id(cond)), cond)
    return (*key, "cond", id(cond))
