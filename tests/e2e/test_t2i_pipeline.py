"""End to end, text-to-image: `raydefense run --preset tiny_t2i` (trimmed) as a user runs it: a
tiny random Stable-Diffusion-shaped pipeline built offline, captioned digits, prepare (encode) ->
train (baseline + 2 teachers) -> soft targets -> student -> attacks (latent SecMI/PIA, CLiD,
Pang & Wang, ReDiffuse) -> report; bad input through the CLI; and (slow) the prompt-
diversification study."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from processes import run_cli

from raydefense.diffusion.tiny_sd import TINY_VERSION

# The whole module is in the slow suite (about 5 min for the run + bad input, 5 more for the
# study): the default suite keeps the text-to-image unit tests (tests/unit/test_t2i*.py).
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

T2I_ATTACKS = ["secmi_stat", "pia", "clid", "pang_wang", "rediffuse"]
TRIM = [
    "data.num_members=32",
    "data.num_nonmembers=32",
    "train.steps=40",
    "train.checkpoint_every=20",
    "train.log_every=10",
    "distill.draws_per_row=2",
    f"attacks.enabled=[{','.join(T2I_ATTACKS)}]",
    "attacks.bootstrap=20",
    "attacks.pia.timesteps=[100]",
    "attacks.clid.timesteps=[450]",
    "attacks.pang_wang.num_generations=1",
    "attacks.rediffuse.average=2",
    "sampling.num_steps=4",
    "sampling.num_images=4",
    "quality.num_generated=16",
]


def cli(cwd: Path, cache: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAYDEFENSE_CACHE"] = str(cache)
    return run_cli(cwd, *args, timeout=timeout, env=env)


def sets(*extra: str) -> list[str]:
    out = []
    for s in [*TRIM, *extra]:
        out += ["--set", s]
    return out


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path) -> tuple[Path, Path]:
    cwd, cache = tmp_path_factory.mktemp("t2i"), tiny_cache
    res = cli(cwd, cache, "run", "--preset", "tiny_t2i", *sets())
    assert res.returncode == 0, res.stderr[-4000:]
    return cwd, cache


def test_results_have_the_text_to_image_attacks_and_table(t2i_run: tuple[Path, Path]) -> None:
    cwd, _ = t2i_run
    report = cwd / "runs" / "tiny_t2i" / "report"
    results = json.loads((report / "results.json").read_text())
    pairs = {(r["target"], r["attack"]) for r in results["attacks"]}
    for t in ("baseline", "teacher_1", "teacher_2", "dualmd", "student"):
        assert {(t, a) for a in T2I_ATTACKS} <= pairs, t
    for r in results["attacks"]:
        assert 0.0 <= r["auc"] <= 1.0 and r["auc_calibration"] >= 0.5
    clid = [r for r in results["attacks"] if r["attack"] == "clid" and r["target"] == "student"]
    assert {r["params"]["term"] for r in clid} >= {"loss", "clid", "combined"}
    table = results["text_to_image"]
    assert table["columns"] == ["w/o prompt div."]
    assert table["lines"]["CLiD"]["w/o prompt div."]["dualmd"]["attack"] == "clid"
    assert table["lines"]["Pang & Wang (black-box)"]["w/o prompt div."]["student"] is not None
    md = (report / "report.md").read_text()
    assert "## Text-to-image" in md and "ReDiffuse (black-box)" in md


def test_rows_are_encoded_once_and_soft_targets_carry_their_caption(
    t2i_run: tuple[Path, Path],
) -> None:
    cwd, _ = t2i_run
    root = cwd / "runs" / "tiny_t2i"
    text = pq.read_table(root / "prepare" / "text.parquet")
    latents = pq.read_table(root / "prepare" / "latents.parquet")
    assert latents.num_rows == 64  # every plan row, once
    assert text.num_rows == 64 * 7 + 1  # 7 captions per digit + the empty prompt
    assert "" in text.column("caption").to_pylist()
    soft = pq.read_table(root / "distill" / "soft_targets")
    assert "caption" in soft.column_names and soft.num_rows == 32 * 2
    assert set(soft.column("caption").to_pylist()) == {0}  # no diversification: the original


def test_models_are_plain_diffusers_condition_unets(t2i_run: tuple[Path, Path]) -> None:
    from diffusers import UNet2DConditionModel

    cwd, _ = t2i_run
    unet = UNet2DConditionModel.from_pretrained(
        str(cwd / "runs" / "tiny_t2i" / "models" / "student" / "ema"), low_cpu_mem_usage=False
    )
    assert unet.config.cross_attention_dim == 32


def _one_line_error(res: subprocess.CompletedProcess, needle: str) -> None:
    assert res.returncode == 2, res.stderr[-2000:]
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("raydefense: error:")]
    assert len(err) == 1 and needle in err[0], res.stderr[-2000:]


def test_bad_text_to_image_input_is_one_line_and_writes_nothing(
    t2i_run: tuple[Path, Path], tmp_path: Path
) -> None:
    _, cache = t2i_run
    import shutil

    broken = tmp_path / "sd"
    shutil.copytree(cache / f"tiny-sd-v{TINY_VERSION}", broken)
    shutil.rmtree(broken / "text_encoder")
    res = cli(
        tmp_path, cache, "prepare", "--preset", "tiny_t2i", "--set", f"model.pipeline={broken}"
    )
    _one_line_error(res, "has no text_encoder/")
    assert not (tmp_path / "runs" / "tiny_t2i" / "prepare" / "_COMPLETE.json").exists()

    # a parquet source whose caption column is missing
    import pyarrow as pa

    from raydefense.config import DataConfig
    from raydefense.data.sources import load_digits_captioned

    pool = load_digits_captioned(DataConfig(source="digits_captioned"))
    assert pool.captions is not None
    # raw uint8 pixels as nested lists [H][W][C], one caption per image
    lists = pa.table(
        {
            "image": pa.array(
                [im.transpose(1, 2, 0).tolist() for im in pool.images[:40]],
                pa.list_(pa.list_(pa.list_(pa.uint8()))),
            ),
            "text": [c[0] for c in pool.captions[:40]],
        }
    )
    pq.write_table(lists, tmp_path / "caps.parquet")
    base = ["--preset", "tiny_t2i", "--set", "data.source=parquet"]
    base += ["--set", f"data.root={tmp_path / 'caps.parquet'}"]
    base += ["--set", "data.num_members=16", "--set", "data.num_nonmembers=16"]
    res = cli(tmp_path, cache, "prepare", *base, "--set", "data.caption_column=caption")
    _one_line_error(res, "no column 'caption'")
    # one caption per image, but prompt diversification asks for extras
    res = cli(
        tmp_path,
        cache,
        "prepare",
        *base,
        "--set",
        "data.caption_column=text",
        "--set",
        "data.prompt_diversification=true",
    )
    _one_line_error(res, "prompt_diversification")
    assert not (tmp_path / "runs" / "tiny_t2i" / "prepare" / "_COMPLETE.json").exists()
    # an RGB parquet with captions and no diversification prepares (and encodes) fine
    res = cli(tmp_path, cache, "prepare", *base, "--set", "data.caption_column=text")
    assert res.returncode == 0, res.stderr[-3000:]
    enc = pq.read_table(tmp_path / "runs" / "tiny_t2i" / "prepare" / "text.parquet")
    assert enc.num_rows == 32 + 1


def test_prompt_diversification_study(t2i_run: tuple[Path, Path]) -> None:
    """The study on the module's run: its "w/o" column is that complete run (nothing retrains),
    the "w/" experiment reuses its targets and distils its own student. It runs on the
    in-process executor (`--executor local`): the study's orchestration, and the labeller and
    scorer of a latent family on the in-process pool, without a second Ray session (the
    module's run covers the Ray path)."""
    cwd, cache = t2i_run
    res = cli(
        cwd, cache, "promptdiv", "--preset", "tiny_t2i", "--executor", "local", *sets(),
        timeout=2400,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    root = cwd / "runs"
    summary = json.loads((root / "tiny_t2i" / "promptdiv" / "summary.json").read_text())
    assert summary["experiments"] == {
        "w/o prompt div.": "tiny_t2i",
        "w/ prompt div.": "tiny_t2i-promptdiv",
    }
    for line in ("CLiD", "Pang & Wang (black-box)", "worst case (every attack)"):
        for col in summary["columns"]:
            assert all(summary["lines"][line][col][t] is not None for t in summary["targets"])
    results = json.loads((root / "tiny_t2i" / "report" / "results.json").read_text())
    assert results["text_to_image"]["columns"] == ["w/o prompt div.", "w/ prompt div."]
    soft = pq.read_table(root / "tiny_t2i-promptdiv" / "distill" / "soft_targets")
    caps = np.array(soft.column("caption").to_pylist())
    assert len(set(caps.tolist())) > 1 and caps.max() < 7  # captions drawn among the 7
