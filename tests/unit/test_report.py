"""Unit tests for raydefense.report: tables, plots and the report writer (no Ray, no torch)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from raydefense.report import write_report
from raydefense.report.markdown import (
    attack_table_markdown,
    headline_rows,
    paper_table_markdown,
    quality_table_markdown,
    sweep_tables_markdown,
    timings_table_markdown,
)
from raydefense.report.plots import grid_layout
from raydefense.roster import sort_targets

RULE = "TPR@α = max TPR over ROC points with FPR ≤ α (test split)"
TARGETS = ["student", "teacher_2", "baseline", "teacher_1"]  # deliberately out of report order


def _row(
    target: str,
    attack: str,
    params: dict,
    auc: float,
    tpr: float,
    ci: list[float] | None = None,
    **extra: object,
) -> dict:
    row = {
        "target": target,
        "attack": attack,
        "params": params,
        "auc": auc,
        "tpr_at_1pct_fpr": tpr,
        "tpr_rule": RULE,
        "n_members": 500,
        "n_nonmembers": 500,
    }
    if ci is not None:
        row["auc_ci"] = ci
        row["tpr_at_1pct_fpr_ci"] = [max(0.0, tpr - 0.05), min(1.0, tpr + 0.05)]
    row.update(extra)
    return row


def _results() -> dict:
    """Two attacks x four targets; CIs and ASR on some rows only (absent fields stay absent)."""
    secmi = {"k": 10, "t_sec": 100}
    pia = {"t": 200, "pia_n": False}
    attacks = [
        _row(
            "baseline",
            "secmi",
            secmi,
            0.99,
            0.71,
            [0.97, 1.0],
            asr_calibrated=0.951,
            asr_oracle=0.962,
            **{"tpr_at_0.1pct_fpr": 0.402},
        ),
        _row("baseline", "pia", pia, 0.934, 0.352, [0.902, 0.951]),
        _row("teacher_2", "secmi", secmi, 0.612, 0.031),
        _row("teacher_2", "pia", pia, 0.55, 0.02, [0.51, 0.59]),
        _row("student", "secmi", secmi, 0.511, 0.012, [0.48, 0.54], asr_calibrated=0.503),
        _row("student", "pia", pia, 0.503, 0.009),
        _row("teacher_1", "secmi", secmi, 0.603, 0.028),
        _row("teacher_1", "pia", pia, 0.547, 0.019, [0.5, 0.6]),
    ]
    quality = [
        {"target": t, "metric": m, "value": v}
        for t, base in zip(TARGETS, (31.2, 40.5, 28.9, 41.0))
        for m, v in (("fid", base), ("is", 7.5))
    ]
    return {
        "experiment": "digits-unit",
        "config_fingerprint": "3f2a9c0d",
        "versions": {"raydefense": "0.1.0", "numpy": np.__version__},
        "timings": {"prepare": 1.25, "train": 3723.4, "report": 0.5},
        "attacks": attacks,
        "quality": quality,
    }


def _roc(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    fpr = np.concatenate([[0.0], np.sort(rng.uniform(size=40)), [1.0]])
    tpr = np.maximum(fpr, np.sort(rng.uniform(size=42)))
    tpr[0], tpr[-1] = 0.0, 1.0
    return fpr, tpr


@pytest.fixture
def written(tmp_path):
    rng = np.random.default_rng(0)
    results = _results()
    roc = {label: {t: _roc(rng) for t in TARGETS} for label in ("secmi", "pia k=2/x")}
    grids = {
        t: rng.uniform(-1.0, 1.0, size=(16, 1, 8, 8)).astype(np.float32)
        for t in ("baseline", "student")
    }
    paths = write_report(str(tmp_path), results, roc, grids)
    return tmp_path, results, paths


def test_all_files_written_atomically(written):
    out, _, paths = written
    names = {
        "results.json",
        "report.md",
        "report.html",
        "roc_secmi.png",
        "roc_pia_k_2_x.png",
        "samples_baseline.png",
        "samples_student.png",
    }
    assert {os.path.basename(p) for p in paths} == names
    assert all(os.path.isfile(p) and os.path.dirname(p) == str(out) for p in paths)
    assert set(os.listdir(out)) == names  # no temporary files left behind
    assert os.path.basename(paths[-1]) == "report.md"  # written last: its links already resolve


def test_results_json_round_trips(written):
    out, results, _ = written
    with open(out / "results.json", encoding="utf-8") as fh:
        assert json.load(fh) == results


def test_report_markdown_tables_and_links(written):
    out, _, _ = written
    text = (out / "report.md").read_text(encoding="utf-8")
    assert text.startswith("# ") and "digits-unit" in text
    assert "AUC 0.5" in text or "0.5 is chance" in text
    assert "calibration split" in text and "test split" in text
    # Paper-style: attacks as lines, targets as columns in report order.
    assert "| Attack | baseline | teacher_1 | teacher_2 | student |" in text
    assert (
        "| secmi | 0.990 [0.970, 1.000] / 0.71 | 0.603 / 0.03 | 0.612 / 0.03 | "
        "0.511 [0.480, 0.540] / 0.01 |"
    ) in text  # no CI on the teacher rows
    # Operating points: present values, "–" for absent ones, counts.
    assert "ASR (calibrated)" in text and "ASR (oracle)" in text
    assert (
        "| baseline | secmi | k=10, t_sec=100 | – / – | – / – | 0.402 | 0.951 | 0.962 | 500 | 500 |"
    ) in text
    assert "| student | pia | t=200, pia_n=False | – / – | – / – | – | – | – | 500 | 500 |" in text
    assert text.count(RULE) == 1
    # Quality and timings.
    assert "| Target | fid | is |" in text and "| baseline | 28.900 | 7.500 |" in text
    assert "No swept attacks." in text
    assert "| train | 3723.4 | 1h 02m 03s |" in text
    for link in (
        "![roc](roc_secmi.png)",
        "![roc](roc_pia_k_2_x.png)",
        "![samples](samples_baseline.png)",
        "![samples](samples_student.png)",
    ):
        assert link in text


def test_report_html_is_self_contained(written):
    import base64

    out, _, _ = written
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "<title>raydefense report: digits-unit" in page
    # markdown-it puts each cell on its own line, with the column's alignment
    page = re.sub(r' style="text-align:\w+"', "", re.sub(r">\s+<", "><", page))
    # the same tables as report.md, as HTML
    assert "<th>Attack</th><th>baseline</th><th>teacher_1</th><th>teacher_2</th>" in page
    assert "<td>0.990 [0.970, 1.000] / 0.71</td>" in page
    # every figure inlined (no links to files next to it), byte-identical to the PNG files
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == 4 and 'src="roc_' not in page and "http" not in page.split("<body>")[1]
    pngs = {
        (out / f).read_bytes()
        for f in (
            "roc_secmi.png",
            "roc_pia_k_2_x.png",
            "samples_baseline.png",
            "samples_student.png",
        )
    }
    assert {base64.b64decode(u) for u in uris} == pngs
    assert "<figcaption>secmi</figcaption>" in page


def test_pngs_are_valid_images_of_expected_size(written):
    out, _, _ = written
    cols, rows, scale, h, w = grid_layout(16, 8, 8)
    assert (cols, rows, scale) == (4, 4, 4)  # 8x8 digits upscaled to 32 px tiles
    assert (h, w) == (4 * 32 + 5 * 2, 4 * 32 + 5 * 2)
    for target in ("baseline", "student"):
        with Image.open(out / f"samples_{target}.png") as im:
            im.load()
            assert im.format == "PNG" and im.mode == "L" and im.size == (w, h)
    with Image.open(out / "roc_secmi.png") as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 300


def test_grid_pixels_follow_value_range(tmp_path):
    from raydefense.report.plots import image_grid

    images = np.full((2, 3, 4, 4), -1.0, dtype=np.float32)
    images[1] = 1.0
    grid = image_grid(images, nrow=2, padding=1)
    assert grid.shape == (32 + 2, 2 * 32 + 3, 3)
    assert grid[1, 1].tolist() == [0, 0, 0]  # -1 -> black
    assert grid[1, 34].tolist() == [255, 255, 255]  # +1 -> white


@pytest.mark.parametrize("key", ["experiment", "versions", "attacks", "quality"])
def test_missing_top_level_key_raises(tmp_path, key):
    results = _results()
    del results[key]
    with pytest.raises(ValueError, match=repr(key)):
        write_report(str(tmp_path), results)
    assert os.listdir(tmp_path) == []  # nothing written on a contract violation


@pytest.mark.parametrize("key", ["auc", "tpr_rule", "n_nonmembers", "params"])
def test_missing_attack_key_raises(tmp_path, key):
    results = copy.deepcopy(_results())
    del results["attacks"][3][key]
    with pytest.raises(ValueError, match=rf"\['attacks'\]\[3\].*{key}"):
        write_report(str(tmp_path), results)


def test_repeated_attack_row_raises(tmp_path):
    results = _results()
    results["attacks"].append(dict(results["attacks"][0]))
    with pytest.raises(ValueError, match="repeats"):
        write_report(str(tmp_path), results)


def test_same_attack_with_several_params_gets_compact_labels():
    rows = [
        _row("baseline", "secmi", {"k": 10, "t_sec": 100}, 0.9, 0.5),
        _row("baseline", "secmi", {"k": 20, "t_sec": 100}, 0.8, 0.4),
        _row("dualmd", "secmi", {"k": 10, "t_sec": 100}, 0.6, 0.1),
    ]
    table = attack_table_markdown(rows)
    assert "| Target | secmi (k=10) | secmi (k=20) |" in table
    assert "| dualmd | 0.600 / 0.10 | – |" in table


def test_target_order_and_other_tables():
    assert sort_targets(
        ["other", "student", "dualmd", "teacher_10", "teacher_2", "baseline", "teacher_1"]
    ) == ["baseline", "teacher_1", "teacher_2", "teacher_10", "dualmd", "student", "other"]
    assert quality_table_markdown([]) == "No quality results."
    assert "| fid | 12.500 |" not in quality_table_markdown(
        [{"target": "student", "metric": "fid", "value": 12.5}]
    )
    assert "| student | 12.500 |" in quality_table_markdown(
        [{"target": "student", "metric": "fid", "value": 12.5}]
    )
    assert "**total**" in timings_table_markdown({"a": 1.0, "b": 2.0})
    assert attack_table_markdown([]) == "No attack results."


def test_paper_table_headline_settings_and_refusals():
    rows = [
        _row(
            "baseline",
            "pia",
            {"t": t, "p": 4, **({"canonical": True} if t == 200 else {})},
            auc,
            0.1,
            auc_calibration=cal,
        )
        for t, auc, cal in ((100, 0.8, 0.85), (200, 0.7, 0.75), (300, 0.9, 0.6))
    ]
    rows.append(
        _row(
            "dualmd",
            "pia",
            {"t": 200, "p": 4, "canonical": True},
            0.6,
            0.02,
            auc_calibration=0.6,
            note="gray-box via DualMD's step router",
        )
    )
    skipped = [{"target": "dualmd", "attack": "gsa1", "reason": "needs white-box access"}]
    rows.append(_row("baseline", "gsa1", {"num_timesteps": 10}, 0.99, 0.9))
    head = headline_rows(rows)
    best = [
        h for h in head if h["line"] == "pia (best on calibration)" and h["target"] == "baseline"
    ]
    assert best[0]["params"]["t"] == 100  # best calibration AUC, not best test AUC (t=300)
    table = paper_table_markdown(rows, skipped)
    assert "| Attack | baseline | dualmd |" in table
    assert "| pia (canonical) | 0.700 / 0.10 | 0.600 / 0.02 † |" in table
    assert "| pia (best on calibration) | 0.800 / 0.10 (t=100, p=4) |" in table
    assert "| gsa1 | 0.990 / 0.90 | n/a |" in table
    assert "† gray-box via DualMD's step router." in table
    assert "n/a: gsa1 on dualmd: needs white-box access." in table
    sweeps = sweep_tables_markdown(rows)
    assert "### pia" in sweeps and "| p=4, t=300 | 0.900 (0.600) | – |" in sweeps
    # A recalibrated column keeps its base's canonical flag: no second "(canonical)" line.
    lira = [
        _row("baseline", "lira", {"base": b, "t": 200, "canonical": True}, auc, 0.2)
        for b, auc in (("pia", 0.9), ("pian", 0.6))
    ]
    lines = [h["line"] for h in headline_rows(lira)]
    assert lines == ["lira (best on calibration)"]


@pytest.mark.skipif(
    not shutil.which("chromium"), reason="needs Debian's chromium (.ci/run installs it)"
)
def test_report_html_renders_its_figures_in_headless_chromium(written, tmp_path):
    """A real browser draws the inlined ROC curves and sample grids: the screenshot has coloured
    pixels (the curves), and the same page with its images removed has almost none."""
    from raydefense.report.screenshot import colour_fraction, screenshot

    out, _, _ = written
    page = (out / "report.html").read_text(encoding="utf-8")
    shot = screenshot(str(out / "report.html"), str(tmp_path / "shot.png"), 1200, 6000)
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r'src="data:image/png;base64,[^"]+"', 'src="missing.png"', page))
    blank = screenshot(str(broken), str(tmp_path / "broken.png"), 1200, 6000)
    drawn, missing = colour_fraction(shot), colour_fraction(blank)
    assert drawn > 1e-4 and drawn > 10 * missing, (drawn, missing)


def test_paper_comparison_where_the_dataset_matches():
    from raydefense.report.markdown import paper_comparison_markdown

    def row(target, attack, params, auc):
        return {
            "target": target,
            "attack": attack,
            "params": params,
            "auc": auc,
            "tpr_at_1pct_fpr": 0.1,
            "auc_calibration": auc,
        }

    rows = [
        row("baseline", "secmi_stat", {"t_sec": 100, "k": 10}, 0.91),
        row("student", "secmi_stat", {"t_sec": 100, "k": 10}, 0.55),
        row("baseline", "secmi_nn", {"t_sec": 100, "k": 10}, 0.83),
        row("baseline", "pia", {"t": 200, "canonical": True}, 0.88),
        row("baseline", "pia", {"t": 20}, 0.97),
        row("student", "pia", {"t": 200, "canonical": True}, 0.57),
        row("student", "pia", {"t": 20}, 0.52),
    ]
    text = paper_comparison_markdown(rows, "cifar10")
    from raydefense.report.writer import _meta_lines

    meta = _meta_lines(
        {
            "config_fingerprint": "f",
            "seed": 3,
            "versions": {},
            "dataset": "cifar10",
            "data": {
                "num_members": 64,
                "num_nonmembers": 64,
                "shard_sizes": [32, 32],
                "image_shape": [3, 32, 32],
                "duplicates_dropped": 2,
                "split_file": "/x/CIFAR10_train_ratio0.5.npz",
            },
        }
    )
    assert meta[0] == (
        "- Data: `cifar10` 3x32x32, 64 members (shards [32, 32]) vs 64 "
        "non-members, split CIFAR10_train_ratio0.5.npz, exact duplicates "
        "dropped: 2"
    )
    assert meta[1:3] == ["- Training seed: 3", "- Config fingerprint: `f`"]
    # The paper's SecMIA is SecMI_NN; SecMI_stat stands beside it, labelled.
    assert "| SecMIA (ours: SecMI_NN) | No defense | 0.93 / 0.35 | 0.830 / 0.10 |" in text
    assert "| SecMIA (ours: SecMI_NN) | DistillMD | 0.59 / 0.03 | – |" in text
    assert "| SecMIA (ours: SecMI_stat) | No defense | 0.93 / 0.35 | 0.910 / 0.10 |" in text
    assert "| PIA | DistillMD | 0.59 / 0.02 | 0.570 / 0.10 |" in text  # canonical t, not best
    assert "not expected to match" in text
    assert "no attack numbers for `digits`" in paper_comparison_markdown(rows, "digits")


def test_distinct_notes_get_distinct_footnote_marks():
    from raydefense.report.markdown import paper_table_markdown

    def row(attack, auc, note):
        return {
            "target": "dualmd",
            "attack": attack,
            "params": {},
            "auc": auc,
            "tpr_at_1pct_fpr": 0.1,
            "auc_calibration": auc,
            "note": note,
        }

    text = paper_table_markdown(
        [row("loss", 0.7, "router"), row("dualmd_adaptive", 0.99, "adaptive")]
    )
    assert "| loss | 0.700 / 0.10 † |" in text and "| dualmd_adaptive | 0.990 / 0.10 ‡ |" in text
    assert "† router." in text and "‡ adaptive." in text
