"""`raydefense` command line: run the pipeline, or up to one stage, on a local Ray or a cluster.

raydefense run [--preset NAME ... | --config FILE.yaml] [--set KEY=VALUE ...] [--force STAGE]
raydefense prepare|train|distill|attack|report  (same options; runs up to that stage)
raydefense sweep  (same options; the `sweep` section: kind=attacks after distill, or
                   kind=training, one small pipeline per grid point)
raydefense seeds  (same options) --seeds 0,1,2 [--aggregate-only]: `run` once per training
                  seed, then mean ± sd over the seeds in <experiment>/seeds/
raydefense promptdiv  (same options) [--aggregate-only]: text-to-image; `run` without and with
                  prompt diversification, one table comparing them in <experiment>/promptdiv/
raydefense audit  (same options) --model ROLE=URI ... [--split FILE]: audit existing models
                  (diffusers dirs, raydefense model dirs, MLflow models:/ URIs) with the suite
raydefense profile  (same options) [--timesteps 10,50,...] [--draws N]: every target's eps-MSE
                  per timestep on its members and non-members, the student's gap taken apart
raydefense config [show] (same options) | --schema | --reference: the resolved config, the JSON
                  schema, or the Markdown reference of every key
raydefense submit [--address URL] [--follow] COMMAND [options]: any command above as a job on
                  a Ray cluster
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Optional

from raydefense.config import (
    experiment_preset_names,
    hardware_preset_names,
    load_config,
)
from raydefense.console import result
from raydefense.errors import RaydefenseError

if TYPE_CHECKING:
    pass

COMMANDS = {
    "run": "report",
    "prepare": "prepare",
    "train": "train",
    "distill": "distill",
    "attack": "evaluate",
    "report": "report",
    "sweep": "distill",
}
HELP = {
    "run": "the whole pipeline: prepare, train, distill, evaluate, report",
    "prepare": "split the data and write the Parquet tables and membership matrix",
    "train": "train the baseline and the shard teachers (Ray Train), after prepare",
    "distill": "soft targets (Ray Data actor pool) and the DistillMD student, after train",
    "attack": "run the membership-inference attacks against every target, after distill",
    "report": "regenerate report/ from stored scores (no model is touched)",
    "sweep": "Ray Tune sweep (config section `sweep`): attack hyperparameters after distill "
    "(sweep.kind=attacks), or training hyperparameters with ASHA and a privacy-utility "
    "Pareto front (sweep.kind=training)",
}
SUBMIT_HELP = (
    "submit a command (run, a stage, sweep, seeds) to a Ray cluster as a job: token auth, a "
    "frozen snapshot of the project as its working dir, S3 endpoint and MLflow URI forwarded "
    "(never credentials); prints the job id and the dashboard and MLflow URLs"
)
PROMPTDIV_HELP = (
    "prompt-diversification study (text-to-image, model.kind=sd): `run` without (this "
    "experiment) and with it (<experiment>-promptdiv), then the text-to-image table of both in "
    "<experiment>/promptdiv/summary.{json,md} and the base report"
)
AUDIT_HELP = (
    "audit models trained elsewhere: each --model takes a target role (baseline, teacher_k, "
    "student) and is imported instead of trained; the same attacks, scoring actors, "
    "calibration, report and MLflow tree as `run` (DualMD is audited when every teacher is "
    "given)"
)
CONFIG_HELP = (
    "print the resolved config of --preset/--config/--set as YAML (`config show`), the JSON "
    "schema (--schema) or the Markdown reference of every key (--reference)"
)
PROFILE_HELP = (
    "after `run`: every target's denoising error (eps-MSE) per timestep on its test members "
    "and non-members, and the student's gap taken apart (its error on members against its "
    "labelling teachers', on non-members against the teachers'); report/timestep_profile."
    "{json,md}, in-process on this machine"
)
SEEDS_HELP = (
    "training-seed study: `run` once per seed, then mean ± sd per target x attack "
    "(and of each target's worst case) in <experiment>/seeds/summary.{json,md}"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raydefense", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        s = sub.add_parser(name, help=HELP[name], description=HELP[name])
        add_config_args(s)
    s = sub.add_parser("seeds", help=SEEDS_HELP, description=SEEDS_HELP)
    add_config_args(s)
    s.add_argument(
        "--seeds",
        nargs="+",
        required=True,
        metavar="SEEDS",
        help="training seeds, e.g. 0,1,2 (at least 2); the config's `seed` keeps its "
        "experiment, seed s runs in <experiment>-seed<s>",
    )
    s.add_argument(
        "--aggregate-only",
        action="store_true",
        help="run nothing: aggregate the seeds' existing report/results.json",
    )
    s = sub.add_parser("promptdiv", help=PROMPTDIV_HELP, description=PROMPTDIV_HELP)
    add_config_args(s)
    s.add_argument(
        "--aggregate-only",
        action="store_true",
        help="run nothing: tabulate both runs' existing report/results.json",
    )
    s = sub.add_parser("profile", help=PROFILE_HELP, description=PROFILE_HELP)
    add_config_args(s)
    s.add_argument(
        "--timesteps",
        help="the timesteps to profile, e.g. 10,50,100 (default: eight from 10 to 500, "
        "raydefense.audit.profile.DEFAULT_TIMESTEPS)",
    )
    s.add_argument(
        "--draws", type=int, default=4, help="noise draws per row and timestep (default: 4)"
    )
    s = sub.add_parser("audit", help=AUDIT_HELP, description=AUDIT_HELP)
    add_config_args(s)
    s.add_argument(
        "--model",
        dest="models",
        action="append",
        required=True,
        metavar="ROLE=URI",
        help="a model to audit, repeatable: ROLE is baseline (trained on all members), "
        "teacher_1..teacher_K (shard k) or student; URI a diffusers UNet or pipeline "
        "directory, a raydefense model directory, or models:/<name>/<version> (the MLflow "
        "Model Registry), runs:/<run id>/<path>",
    )
    s.add_argument(
        "--split",
        metavar="FILE",
        help="the members and non-members: a SecMI/PIA split .npz (mia_train_idxs, "
        "mia_eval_idxs; member_shards for teachers) over data.source's images; sets "
        "data.split_file",
    )
    s.add_argument(
        "--members",
        action="append",
        metavar="PATH",
        help="instead of --split: the members as an image folder or Parquet file(s) in "
        "data.source's format (imagefolder / parquet); repeat once per shard for teachers; "
        "sets data.member_roots",
    )
    s.add_argument(
        "--nonmembers",
        metavar="PATH",
        help="with --members: the non-members (sets data.nonmember_root)",
    )
    s = sub.add_parser("config", help=CONFIG_HELP, description=CONFIG_HELP)
    s.add_argument(
        "show",
        nargs="?",
        choices=["show"],
        help="print the resolved config as YAML (the default)",
    )
    add_config_args(s)
    s.add_argument("--schema", action="store_true", help="print the JSON schema instead")
    s.add_argument(
        "--reference",
        action="store_true",
        help="print the Markdown configuration reference (docs/config-reference.md) instead",
    )
    s = sub.add_parser("submit", help=SUBMIT_HELP, description=SUBMIT_HELP)
    s.add_argument(
        "--address",
        help="the cluster's dashboard, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS, "
        "else http://127.0.0.1:8265, where `ray dashboard cluster.yaml` forwards it)",
    )
    s.add_argument(
        "--follow", action="store_true", help="stream the job's logs; exit with its status"
    )
    s.add_argument(
        "--working-dir", default=".", help="the project to ship (default: the current dir)"
    )
    s.add_argument("--submission-id", help="a job id of your choosing (default: Ray's)")
    s.add_argument(
        "--shared-path",
        action="append",
        default=[],
        metavar="MOUNT",
        help="a folder every node mounts at the same path (repeatable): inputs under it are "
        "allowed on a multi-node cluster",
    )
    s.add_argument(
        "job",
        nargs=argparse.REMAINDER,
        metavar="COMMAND ...",
        help="the raydefense command and its options, e.g. run --preset smoke",
    )
    return p


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="NAME",
        help=f"a shipped preset, repeatable: one experiment preset "
        f"({', '.join(experiment_preset_names())}; default digits) and any hardware presets "
        f"({', '.join(hardware_preset_names())}), e.g. --preset digits --preset cpu2",
    )
    p.add_argument(
        "--config",
        help="a YAML file (may name an experiment preset in `base:`; combines "
        "with hardware presets)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=500 (repeatable)",
    )
    p.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="rerun a stage even if it is complete (repeatable)",
    )
    p.add_argument(
        "--executor",
        choices=("ray", "local"),
        default="ray",
        help="where the work runs: ray (default; Ray Train, Data and Tune on a local Ray or the "
        "cluster) or local (this process, no Ray: fits one after another, sweeps without early "
        "stopping; for debugging and small runs)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own logs (workers, Ray Data, the raylet) on the console; by default "
        "they go to a log file and Ray's session log, and the console shows raydefense's "
        "stages, one progress line per job, and the summary",
    )


def config_text(args: argparse.Namespace) -> str:
    """What `raydefense config` prints."""
    from raydefense import config_reference

    if args.schema:
        return config_reference.json_schema()
    if args.reference:
        return config_reference.reference_markdown()
    import yaml

    cfg = load_config(args.preset, args.config, args.overrides)
    return str(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def audit_overrides(
    models: list[str],
    split: Optional[str],
    members: Optional[list[str]] = None,
    nonmembers: Optional[str] = None,
) -> list[str]:
    """`audit --model ROLE=URI (--split FILE | --members DIR --nonmembers DIR)` as config
    overrides (audit.models.<role>, data.split_file or data.member_roots / nonmember_root);
    values are JSON-quoted so that no path is read as a number."""
    import json

    out = []
    for item in models:
        role, sep, uri = item.partition("=")
        if not sep or not role.strip() or not uri.strip():
            raise RaydefenseError(
                f"--model {item!r} is not ROLE=URI (for example baseline=./my_unet or "
                "student=models:/digits-student/1)"
            )
        out.append(f"audit.models.{role.strip()}={json.dumps(uri.strip())}")
    if split and (members or nonmembers):
        raise RaydefenseError("give either --split or --members/--nonmembers, not both")
    if split:
        out.append(f"data.split_file={json.dumps(split)}")
    if members or nonmembers:
        if not (members and nonmembers):
            raise RaydefenseError("--members and --nonmembers go together: give both")
        out.append(f"data.member_roots={json.dumps(members)}")
        out.append(f"data.nonmember_root={json.dumps(nonmembers)}")
    return out


def config_argv(args: argparse.Namespace) -> list[str]:
    """The config options of parsed `add_config_args` arguments, back as CLI arguments (for the
    Ray job entrypoints in jobs/, which forward them to `main`)."""
    argv: list[str] = []
    for name in args.preset:
        argv += ["--preset", name]
    if args.config:
        argv += ["--config", args.config]
    for o in args.overrides:
        argv += ["--set", o]
    for f in args.force:
        argv += ["--force", f]
    if getattr(args, "executor", "ray") != "ray":
        argv += ["--executor", args.executor]
    if getattr(args, "verbose", False):
        argv.append("--verbose")
    return argv


def submit_command(args: argparse.Namespace) -> int:
    """`raydefense submit`: check the job's command and config here, then submit it."""
    from pathlib import Path

    from raydefense.distributed.submit import local_inputs, submit

    job = list(args.job)
    if job[:1] == ["--"]:
        job = job[1:]
    if not job or job[0] not in (*COMMANDS, "seeds", "promptdiv", "audit"):
        raise RaydefenseError(
            "submit needs a command: raydefense submit [--address URL] [--follow] "
            f"{{{','.join((*COMMANDS, 'seeds', 'promptdiv', 'audit'))}}} [options], e.g. run "
            "--preset smoke"
        )
    try:
        inner = build_parser().parse_args(job)
    except SystemExit as e:  # argparse printed why
        raise RaydefenseError(f"the job's command line is invalid: {' '.join(job)}") from e
    if inner.config:
        root, path = Path(args.working_dir).resolve(), Path(inner.config).resolve()
        if root not in path.parents or Path(inner.config).is_absolute():
            raise RaydefenseError(
                f"--config {inner.config} must be a relative path inside the working dir "
                f"{root} (the job sees only the snapshot of it)"
            )
    cfg = load_config(inner.preset, inner.config, inner.overrides)
    return submit(
        job,
        tracking_uri=cfg.tracking.uri if cfg.tracking.enabled else "(tracking disabled)",
        address=args.address,
        working_dir=args.working_dir,
        follow=args.follow,
        submission_id=args.submission_id,
        inputs=local_inputs(cfg),
        shared_paths=args.shared_path,
    )


def profile_command(args: argparse.Namespace) -> None:
    from raydefense.audit.profile import DEFAULT_TIMESTEPS, PROFILE_JSON, parse_timesteps
    from raydefense.report.profile_tables import profile_markdown
    from raydefense.run.profile_command import run_profile
    from raydefense.run.session import absolutize
    from raydefense.storage import Storage

    # bad input fails before anything loads
    timesteps = (
        list(DEFAULT_TIMESTEPS) if args.timesteps is None else parse_timesteps(args.timesteps)
    )
    cfg = absolutize(load_config(args.preset, args.config, args.overrides))
    storage = Storage(cfg.storage.root, cfg.experiment)
    prof = run_profile(cfg, timesteps, args.draws, storage)
    result(profile_markdown(prof) + f"\nwritten to {storage.uri(PROFILE_JSON)}")


QUIET_NOISY = ("mlflow", "alembic", "urllib3", "filelock", "botocore", "boto3", "s3transfer")


def main(argv: Optional[list[str]] = None) -> int:
    from raydefense.console import VERBOSE_ENV, close_console, open_console

    args = build_parser().parse_args(argv)
    loud = bool(getattr(args, "verbose", False))
    if loud:
        os.environ[VERBOSE_ENV] = "1"
    # The real CLI (argv from the command line) gets the quiet console for commands that run
    # stages; config and submit print as they are, and in-process callers keep their stderr.
    quiet = argv is None and not loud and args.command not in ("config", "submit")
    console = open_console(quiet, args.command)
    for noisy in QUIET_NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def fail(message: str) -> None:
        console.print(f"raydefense: error: {message}")

    try:
        if args.command == "submit":
            return submit_command(args)
        if args.command == "promptdiv":
            from raydefense.commands import run_promptdiv_study

            run_promptdiv_study(
                args.preset,
                args.config,
                args.overrides,
                args.force,
                args.aggregate_only,
                args.executor,
            )
        elif args.command == "seeds":
            from raydefense.commands import run_seed_study
            from raydefense.sweeps.seeds import parse_seeds

            run_seed_study(
                args.preset,
                args.config,
                args.overrides,
                args.force,
                parse_seeds(" ".join(args.seeds)),
                args.aggregate_only,
                args.executor,
            )
        elif args.command == "config":
            print(config_text(args), end="")
        elif args.command == "profile":
            profile_command(args)
        else:
            from raydefense.commands import execute

            overrides = args.overrides
            if args.command == "audit":
                overrides = overrides + audit_overrides(
                    args.models, args.split, args.members, args.nonmembers
                )
            execute(args.command, args.preset, args.config, overrides, args.force, args.executor)
    except RaydefenseError as e:
        fail(str(e))
        return 2
    except KeyboardInterrupt:
        console.print("raydefense: interrupted; rerun the same command to resume")
        return 130
    except Exception as e:  # unexpected: one line here, the traceback in the log
        import traceback

        traceback.print_exc()  # to stderr: the log file when quiet
        where = f" (traceback in {console.log_path})" if console.log_path else ""
        fail(
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}{where}"
        )
        return 1
    finally:
        close_console()
    if console.log_path:
        logging.getLogger("raydefense").info(
            "Ray's and the libraries' messages: %s; Ray's worker logs: "
            "/tmp/ray/session_latest/logs (--verbose shows them here)",
            console.log_path,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
