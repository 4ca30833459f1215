"""Every path under `<storage.root>/<experiment>/`, relative to it (Storage resolves them).

prepare/rows.parquet            row_id, hash, split, shard, part, label, image (uint8 bytes)
prepare/membership.parquet      row_id + one bool column per trained model
prepare/shadow_draws.parquet    row_id + shadow_j:train, shadow_j:heldout per shadow draw
prepare/plan.json               sizes, models, image shape, source
prepare/latents.parquet         latent models: row_id, VAE posterior mean and std (float32 bytes)
prepare/text.parquet            latent models: row_id, caption_index, caption, embedding; the
                                empty prompt as row_id -1 (encoded.json: their shapes)
ray_train/<run name>/           Ray Train run storage (checkpoints; the resume source)
models/<model>/                 final checkpoint (diffusers dirs + state.pt); registered.json: its
                                MLflow Model Registry version; imported.json: an audit's source
distill/soft_targets/           the student's soft targets (Parquet)
distill/<shadow student>/soft_targets/   a shadow student's
distill[/<shadow student>]/synthetic/, public.parquet   extra student inputs (row_id, image):
                                teachers' samples, spare pool rows (distill.*_inputs)
evaluate/scores.parquet         raw per-row scores; quality.json, skipped.json, shadows.json,
                                samples/<target>.npy
report/                         results.json, report.md/html, figures, timings.json;
                                timestep_profile.{json,md} (`raydefense profile`)
sweeps/<name>/                  an attack-grid sweep; training_sweeps/<name>/ a training sweep
seeds/summary.{json,md}         a training-seed study whose base is this experiment
promptdiv/summary.{json,md}     a prompt-diversification study (text-to-image) whose base this is
<stage>/_COMPLETE.json, models/<model>/_COMPLETE.json, <soft targets>/_COMPLETE.json
                                completion markers: fingerprint + manifest, written last
"""

from __future__ import annotations

from raydefense.roster import STUDENT

MARKER = "_COMPLETE.json"

ROWS = "prepare/rows.parquet"
MEMBERSHIP = "prepare/membership.parquet"
SHADOW_DRAWS = "prepare/shadow_draws.parquet"
PLAN_JSON = "prepare/plan.json"
LATENTS = "prepare/latents.parquet"
TEXT = "prepare/text.parquet"
ENCODED_JSON = "prepare/encoded.json"
RAY_TRAIN = "ray_train"
SOFT_TARGETS = "distill/soft_targets"
SCORES = "evaluate/scores.parquet"
QUALITY = "evaluate/quality.json"
SKIPPED = "evaluate/skipped.json"
SHADOWS = "evaluate/shadows.json"
REFERENCES = "evaluate/references.json"
SAMPLES = "evaluate/samples"
REPORT = "report"
RESULTS = "report/results.json"
TIMINGS = "report/timings.json"
SEEDS = "seeds"
SEEDS_SUMMARY = "seeds/summary.json"
PROMPTDIV = "promptdiv"
PROMPTDIV_SUMMARY = "promptdiv/summary.json"


def marker(prefix: str) -> str:
    """The completion marker of a stage (`prepare`) or of any published prefix."""
    return f"{prefix}/{MARKER}"


def model_dir(model: str) -> str:
    return f"models/{model}"


def training_record(model: str) -> str:
    """models/<model>/training.json: the fit's cost and DP-SGD accounting (the final
    checkpoint's record, `raydefense.diffusion.training.training_record`)."""
    return f"{model_dir(model)}/training.json"


def registered(model: str) -> str:
    """Which MLflow registered-model version holds a model (written after it is logged)."""
    return f"models/{model}/registered.json"


def ray_train_run(run_name: str) -> str:
    return f"{RAY_TRAIN}/{run_name}"


def soft_targets_dir(student: str = STUDENT) -> str:
    """Where a student's soft targets live: distill/soft_targets for the target student,
    distill/<name>/soft_targets for a shadow student."""
    return SOFT_TARGETS if student == STUDENT else f"distill/{student}/soft_targets"


def public_rows(student: str = STUDENT) -> str:
    """A student's public input rows (distill.public_inputs): distill/public.parquet, or
    distill/<name>/public.parquet for a shadow student."""
    return "distill/public.parquet" if student == STUDENT else f"distill/{student}/public.parquet"


def synthetic_dir(student: str = STUDENT) -> str:
    """Where a student's synthetic rows (distill.synthetic_per_teacher) live, one Parquet file per
    teacher: distill/synthetic, or distill/<name>/synthetic for a shadow student."""
    return "distill/synthetic" if student == STUDENT else f"distill/{student}/synthetic"


def sample_grid(target: str) -> str:
    return f"{SAMPLES}/{target}.npy"


def attack_sweep_dir(name: str) -> str:
    return f"sweeps/{name}"


def training_sweep_dir(name: str) -> str:
    return f"training_sweeps/{name}"
