"""Fingerprints: what each stage, model and sweep depends on (its config sections, its inputs'
fingerprints, the code version), hashed with `raydefense.hashing.stable_hash`."""

from __future__ import annotations

from typing import Any

import raydefense
from raydefense.audit.targets import online_needed, online_roles, shadow_roles, shadows_needed
from raydefense.config import (
    TRAIN_ROLES,
    VARIANT_PREFIX,
    CLiDConfig,
    EarlyStoppingConfig,
    ExperimentConfig,
    PangWangConfig,
    ReDiffuseConfig,
)
from raydefense.families.schema import FORMER_MODEL_FIELDS
from raydefense.hashing import stable_hash
from raydefense.roster import ONLINE, STUDENT, is_variant, parse_draw, training_role


def _hash(*parts: object) -> str:
    return stable_hash(list(parts))


# The rows early stopping validates on (`Plan.validation_rows`): changing them changes which
# weights an early-stopping fit keeps, so fits that stop early hash the rule.
VALIDATION_RULE = "outside_audit"

# Fields added after models were first trained, with their defaults: left out of the hashed
# config while they keep them, so earlier models keep their fingerprints.
LATE_FIELDS: dict[str, dict[str, Any]] = {
    "data": {
        "extra_caption_column": None,
        "prompt_diversification": False,
        "member_roots": None,
        "nonmember_root": None,
        "captioner": None,
    },
    "model": {
        "kind": "unet2d",
        "downsample_padding": 1,
        "freq_shift": 0,
        "pipeline": None,
        "beta_schedule": "linear",
        "gradient_checkpointing": False,
    },
    "attacks": {
        "clid": CLiDConfig().model_dump(mode="json"),
        "pang_wang": PangWangConfig().model_dump(mode="json"),
        "rediffuse": ReDiffuseConfig().model_dump(mode="json"),
    },
    "distill": {
        "synthetic_per_teacher": 0,
        "synthetic_steps": 50,
        "member_inputs": True,
        "public_inputs": False,
        "target_dtype": "float32",
    },
    "sampling": {"guidance_scale": 1.0},
    # quality.domain_rows_from: its default changed the evaluation, so only "spare" (what
    # evaluations before it did) keeps their fingerprints.
    "quality": {"sscd_model": None, "clip_model": None, "domain_rows_from": "spare"},
    "audit": {"models": {}, "digests": {}},
    "train": {
        "hflip": False,
        "ema_warmup": "none",
        "precision": "fp32",
        "tf32": False,
        "channels_last": False,
        "compile": False,
        "early_stopping": EarlyStoppingConfig().model_dump(mode="json"),
        "dp": None,
        "variants": {},
        **{
            r: {"steps": None, "lr": None, "ema_decay": None, "early_stopping": None}
            for r in TRAIN_ROLES
        },
    },
}


# Fields added later inside a subsection ((section, subsection): {field: default}), likewise.
LATE_SUBFIELDS: dict[tuple[str, str], dict[str, Any]] = {
    ("attacks", "lira"): {"online_models": 0},
    ("attacks", "pang_wang"): {"feature_model": None},
    ("attacks", "rediffuse"): {"distance": "lp"},
}


def _without_unset_dp(train: dict[str, Any]) -> dict[str, Any]:
    """A dumped train section with each role's `dp` left out while unset (DP-SGD came after
    the role sections), so that LATE_FIELDS finds an untouched role section at its default."""
    for r in TRAIN_ROLES:
        if train.get(r, {}).get("dp", 0) is None:
            del train[r]["dp"]
    return train


def config_tree(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as hashed: LATE_FIELDS and LATE_SUBFIELDS at their defaults are left out."""
    d = cfg.model_dump(mode="json")
    _without_unset_dp(d["train"])
    for k, former in FORMER_MODEL_FIELDS.items():  # then left out below at their defaults
        d["model"].setdefault(k, former)
    for section, fields in LATE_FIELDS.items():
        for k, default in fields.items():
            if k in d[section] and d[section][k] == default:
                del d[section][k]
    for (section, sub), fields in LATE_SUBFIELDS.items():
        for k, default in fields.items():
            if d[section].get(sub, {}).get(k, default) == default:
                d[section].get(sub, {}).pop(k, None)
    # Never hashed: whether soft targets store x_t or the student regenerates them from their
    # seeds, and whether it holds them in RAM or on disk, change no byte a student sees.
    for where in ("store_x_t", "disk_dir"):
        d["distill"].pop(where, None)
    if not d["audit"]:  # a section added later, empty unless models are audited
        del d["audit"]
    return d


def stage_fingerprints(cfg: ExperimentConfig) -> dict[str, str]:
    """Fingerprint of each stage's inputs. Resources, tracking and sampling-only settings do not
    change what a model learns, so they are not part of the training fingerprints."""
    d = config_tree(cfg)
    v = raydefense.__version__
    fp: dict[str, str] = {}
    shadows = shadows_needed(cfg)
    roles = shadow_roles(cfg)
    # The shadow rows (and a baseline-like shadow's fingerprint) do not depend on the regime;
    # the plan's models do: the roles join the prepare fingerprint only when they differ from
    # the one baseline-like shadow per draw that regime "baseline" plans.
    shadow = {k: x for k, x in d["attacks"]["shadow"].items() if k != "regime"} if shadows else None
    plan_shadows = (
        shadow if shadow is None or roles == ("baseline",) else {**shadow, "roles": list(roles)}
    )
    # A latent family's prepare also encodes the rows (sd: with its pipeline's VAE and text
    # encoder): the family and the fields that choose its encoder join the fingerprint.
    encoder = (
        [d["model"]["kind"], *(d["model"][f] for f in cfg.model.encoder_fields)]
        if cfg.model.latent
        else []
    )
    # Online LiRA's draws (over the audited rows) join the plan only when there are some.
    online = (
        [{"online_models": online_needed(cfg), "roles": list(online_roles(cfg))}]
        if online_needed(cfg)
        else []
    )
    fp["prepare"] = _hash("prepare", v, cfg.seed, d["data"], plan_shadows, *encoder, *online)
    # How often a fit logs, checkpoints or validates does not change the model it produces,
    # unless it stops early (its reports then decide where it stops, on the validation rows).
    stops_early = any(cfg.train.stops_early(r) for r in TRAIN_ROLES)
    cadence = (
        ("checkpoint_every",) if stops_early else ("log_every", "checkpoint_every", "val_rows")
    )
    # The student's own overrides (train.student) change the student alone.
    student_train = [d["train"]["student"]] if "student" in d["train"] else []
    # A variant trains its own target (and shadows): it changes no other model.
    variants = [d["train"]["variants"]] if "variants" in d["train"] else []
    train = {k: x for k, x in d["train"].items() if k not in (*cadence, "student", "variants")}
    if stops_early:  # which rows early stopping reads (#27: outside the audit, no longer
        train["validation_rule"] = VALIDATION_RULE  # the calibration non-members)
    # An audit imports its target models: their identity is their weights' digests (by role),
    # not where they were read from.
    imported = [d["audit"].get("digests", {})] if "audit" in d else []
    fp["train"] = _hash("train", v, fp["prepare"], d["model"], train, *imported, *variants)
    # The target models (and so the student) do not depend on the attacker's shadow models.
    trained = _hash("targets", v, cfg.seed, d["data"], d["model"], train)
    fp["targets"] = _hash("targets", v, cfg.seed, d["data"], d["model"], train, *imported)
    # Each target model's own fingerprint: its role's resolved settings (another role's
    # overrides do not retrain it; without overrides it is fp["targets"]).
    for role in ("baseline", "teacher"):
        own = _role_train(cfg, role)
        fp[f"model.{role}"] = _hash("targets", v, cfg.seed, d["data"], d["model"], own, *imported)
    fp["shadows"] = _hash("shadows", trained, shadow)  # the same whatever an audit imports
    # A variant's models: its resolved settings and its departures (a dropout is the model's).
    for role in cfg.train.variant_targets():
        departs = d["train"]["variants"][role.removeprefix(VARIANT_PREFIX)]
        resolved = _role_train(cfg, role)
        fp[f"model.{role}"] = _hash(
            "variant", v, cfg.seed, d["data"], d["model"], resolved, departs
        )
        fp[f"shadows.{role}"] = _hash("variant-shadows", fp["shadows"], resolved, departs)
    fp["student"] = _hash("distill", v, fp["targets"], d["distill"], *student_train)
    fp["shadow_students"] = _hash("shadow_students", fp["shadows"], d["distill"], *student_train)
    fp["online"] = _hash("online", trained, *online)  # the same whatever an audit imports
    for role in cfg.train.variant_targets():
        fp[f"online.{role}"] = _hash("variant-online", fp["online"], fp[f"model.{role}"])
    fp["online_students"] = _hash("online_students", fp["online"], d["distill"], *student_train)
    students = [fp["shadow_students"]] if "student" in roles else []
    students += [fp["online_students"]] if "student" in online_roles(cfg) else []
    fp["distill"] = _hash("distill", fp["student"], *students) if students else fp["student"]
    fp["evaluate"] = _hash(
        "evaluate", v, fp["train"], fp["distill"], d["attacks"], d["sampling"], d["quality"]
    )
    fp["report"] = _hash("report", v, fp["evaluate"])
    return fp


def _role_train(cfg: ExperimentConfig, role: str) -> dict[str, Any]:
    """The train settings one role's fits use, as hashed: the role's resolved settings
    (`TrainConfig.for_role`) with LATE_FIELDS at their defaults left out, and the report cadence
    left out unless the role stops early. Equal to stage_fingerprints' `train` for a role
    without overrides."""
    t = _without_unset_dp(cfg.train.for_role(role).model_dump(mode="json"))
    for k, default in LATE_FIELDS["train"].items():
        if t.get(k) == default:
            del t[k]
    cadence: tuple[str, ...] = ("checkpoint_every",)
    if not cfg.train.stops_early(role):
        cadence += ("log_every", "val_rows")
    out = {k: x for k, x in t.items() if k not in cadence}
    if cfg.train.stops_early(role):
        out["validation_rule"] = VALIDATION_RULE
    return out


def model_fingerprint(fps: dict[str, str], model: str) -> str:
    """Per-model fingerprint of a fit (its run name and completion marker)."""
    if model == STUDENT:
        return fps["student"]
    draw = parse_draw(model)
    if draw is None:
        role = training_role(model)
        return fps.get(f"model.{role}", fps["targets"])
    kind = "online" if draw[0] == ONLINE else "shadows"
    if is_variant(draw[2]):
        return fps[f"{kind}.{draw[2]}"]
    if draw[0] == ONLINE:
        return fps["online_students"] if draw[2] == "student" else fps["online"]
    return fps["shadow_students"] if draw[2] == "student" else fps["shadows"]


def attack_sweep_fingerprint(cfg: ExperimentConfig, fps: dict[str, str]) -> str:
    """What the sweep's scores depend on: the trained models (train, distill), the swept
    attacks' base sections and grids, targets/access/weights, and sampling (DualMD's router)."""
    d = config_tree(cfg)
    attacks = {k: d["attacks"][k] for k in ("targets", "dualmd_access", "weights")}
    attacks.update({n: d["attacks"][n] for n in d["sweep"]["attacks"]})
    payload = [
        "sweep-scores",
        raydefense.__version__,
        cfg.seed,
        fps["train"],
        fps["distill"],
        attacks,
        d["sampling"],
        d["sweep"]["attacks"],
    ]
    return stable_hash(payload)


def training_sweep_fingerprint(cfg: ExperimentConfig) -> str:
    """The Tune run's identity: everything but tracking, storage, resources and the attack
    sweep's own fields."""
    d = config_tree(cfg)
    for k in ("tracking", "storage", "resources"):
        d.pop(k)
    d["sweep"] = {
        k: v
        for k, v in d["sweep"].items()
        if k not in ("attacks", "max_concurrent_trials", "cpus_per_trial", "utility_budget")
    }
    payload = ["training-sweep", raydefense.__version__, d]
    return stable_hash(payload)
