"""The text-to-image table and the prompt-diversification study (no Ray, no models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raydefense import layout
from raydefense.audit.targets import build_attacks
from raydefense.config import load_config
from raydefense.errors import ConfigError, RaydefenseError
from raydefense.report.text_to_image import t2i_markdown, t2i_table
from raydefense.storage import Storage
from raydefense.sweeps.promptdiv import promptdiv_experiment, tabulate_promptdiv


def row(target: str, attack: str, auc: float, cal: float, **params: Any) -> dict[str, Any]:
    return {
        "target": target,
        "attack": attack,
        "params": params,
        "auc": auc,
        "auc_calibration": cal,
        "tpr_at_1pct_fpr_calibrated": 0.1,
        "fpr_at_1pct_fpr_calibrated": 0.008,
        "resolution_limited": [],
    }


def results(shift: float = 0.0) -> dict[str, Any]:
    return {
        "attacks": [
            # on the test split pia looks strongest, on calibration secmi_stat does
            row("baseline", "secmi_stat", 0.80 + shift, 0.90),
            row("baseline", "pia", 0.95 + shift, 0.70, t=200),
            row("baseline", "clid", 0.60, 0.55, term="clid"),
            row("baseline", "clid", 0.99, 0.51, term="loss"),
            row("baseline", "pang_wang", 0.52, 0.53, similarity="ssim"),
            row("dualmd", "rediffuse", 0.50, 0.52),
            row("dualmd", "secmi_stat", 0.61, 0.66),
            row("student", "pia", 0.55, 0.56, t=200),
        ]
    }


def test_every_cell_is_chosen_on_calibration() -> None:
    table = t2i_table({"w/o prompt div.": results()})
    lines = table["lines"]
    strongest = lines["white-/gray-box, strongest (eps queries)"]["w/o prompt div."]
    assert strongest["baseline"]["attack"] == "secmi_stat"  # not the test-best pia
    assert lines["CLiD"]["w/o prompt div."]["baseline"]["params"] == {"term": "clid"}
    assert lines["worst case (every attack)"]["w/o prompt div."]["baseline"]["auc"] == 0.80
    assert lines["ReDiffuse (black-box)"]["w/o prompt div."]["baseline"] is None
    assert lines["SecMI_stat"]["w/o prompt div."]["dualmd"]["auc"] == 0.61
    md = t2i_markdown(table)
    assert "| white-/gray-box, strongest (eps queries) | 0.800 / 0.10 @ 0.8% (secmi_stat)" in md
    assert "w/o prompt div.: dualmd" in md


def test_resolution_limited_cells_say_so() -> None:
    r = results()
    for a in r["attacks"]:
        a["resolution_limited"] = ["tpr_at_1pct_fpr_calibrated"]
        a["tpr_at_1pct_fpr_calibrated"] = None
    md = t2i_markdown(t2i_table({"w/ prompt div.": r}))
    assert "0.800 / res.-limited (secmi_stat)" in md


def test_promptdiv_study_tabulates_both_runs(tmp_path: Path) -> None:
    overrides = [f"storage.root={tmp_path}"]
    cfg = load_config("tiny_t2i", overrides=overrides)
    with pytest.raises(RaydefenseError, match="has no results"):
        tabulate_promptdiv("tiny_t2i", None, overrides)
    Storage(str(tmp_path), cfg.experiment).write_json(layout.RESULTS, results())
    other = promptdiv_experiment(cfg.experiment)
    Storage(str(tmp_path), other).write_json(layout.RESULTS, results(shift=-0.3))
    summary = tabulate_promptdiv("tiny_t2i", None, overrides)
    assert summary["experiments"] == {"w/o prompt div.": "tiny_t2i", "w/ prompt div.": other}
    worst = summary["lines"]["worst case (every attack)"]
    assert worst["w/o prompt div."]["baseline"]["auc"] == 0.80
    assert worst["w/ prompt div."]["baseline"]["auc"] == pytest.approx(0.50)
    base = Storage(str(tmp_path), cfg.experiment)
    assert base.exists(layout.PROMPTDIV_SUMMARY)
    assert "w/ prompt div.: student" in base.read_bytes("promptdiv/summary.md").decode()


def test_promptdiv_refuses_what_it_cannot_compare(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.kind=unet2d"):
        tabulate_promptdiv("smoke", None, [f"storage.root={tmp_path}"])
    with pytest.raises(ConfigError, match="drop data.prompt_diversification=true"):
        tabulate_promptdiv("tiny_t2i", None, ["data.prompt_diversification=true"])


def test_sd15_pokemon_preset_is_the_papers_setting() -> None:
    cfg = load_config("sd15_pokemon")
    assert (cfg.data.num_members, cfg.data.num_nonmembers, cfg.data.resolution) == (416, 417, 512)
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr) == (20000, 16, 1e-5)
    assert cfg.model.kind == "sd" and cfg.model.beta_schedule == "scaled_linear"
    assert cfg.sampling.num_steps == 50 and cfg.sampling.guidance_scale == 7.5
    names = {a.name for a in build_attacks(cfg)}
    assert {"clid", "pang_wang", "rediffuse", "secmi_stat", "pia"} <= names
    # it combines with a GPU hardware preset
    assert load_config(["sd15_pokemon", "h200"]).resources.gpus_per_worker >= 1
