"""The ablation benchmark: each row's flags mean what the row says, the tables come out in the
paper's layout, and a two-row miniature grid runs end to end through open_clip_train."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from openclip_unimlip import train_args
from openclip_unimlip.ablation import BASELINE, ROWS, TABLE3, TABLE4, format_tables, summarize

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("key", list(ROWS))
def test_row_flags_parse_to_the_row(key):
    from open_clip_train.params import parse_args

    row = ROWS[key]
    options, rest, _ = train_args.split_argv(row.flags(simclr_start_epoch=1))
    args = parse_args(["--model", "unimlip-tiny", "--epochs", "2", *rest])
    assert train_args.validate(options, args) is None
    active = {t for t, w in train_args.loss_weights(options).items() if w > 0}
    assert active == set(row.terms)
    overrides = train_args.cfg_overrides(options)
    assert overrides.get("feed_views_without_simclr", False) == (row.views_fed and "simclr" not in row.terms)
    if row.views_fed:
        assert options.unimlip_simclr_start_epoch == 1
        assert overrides.get("freeze_bn_with_simclr", True) == row.freeze_bn


def _record(row, seed, i2t, t2i):
    return {"row": row, "seed": seed, "train_seconds": 1.0,
            "metrics": {"image_to_text_R@1": i2t, "text_to_image_R@1": t2i,
                        "image_to_text_R@10": 2 * i2t, "text_to_image_R@10": 2 * t2i},
            "metrics_bn_reestimated": {"image_to_text_R@1": i2t / 2, "text_to_image_R@1": t2i / 2}}


def test_summary_and_tables():
    records = [_record("itc_mlm", 0, 0.10, 0.20), _record("itc_mlm", 1, 0.12, 0.22),
               _record("simclr_freeze", 0, 0.15, 0.25), _record("simclr_freeze", 1, 0.17, 0.27)]
    summary = summarize(records, ["itc_mlm", "simclr_freeze"])
    assert summary["itc_mlm"]["i2t"]["mean"] == pytest.approx(11.0)
    assert summary["itc_mlm"]["i2t"]["std"] == pytest.approx(math.sqrt(2))
    assert summary["simclr_freeze"]["gain"] == pytest.approx({"i2t": 5.0, "t2i": 5.0, "i2t_bn": 2.5, "t2i_bn": 2.5})
    table = format_tables(summary)
    assert "11.0 ± 1.4" in table and "+5.0 / +5.0" in table
    assert "re-estimated" in table and "| 5.5 ± 0.7 |" in table and "+2.5 / +2.5" in table
    assert "**Table 3**" in table and "**Table 4**" in table
    assert set(TABLE3) | set(TABLE4) == set(ROWS) and BASELINE in TABLE3 and BASELINE in TABLE4


@pytest.mark.slow
def test_two_row_miniature_grid(tmp_path):
    out = tmp_path / "ablation"
    command = [sys.executable, str(REPO / "scripts" / "ablate.py"), "--out", str(out),
               "--data-root", str(tmp_path / "data"), "--rows", "itc_mlm", "simclr_freeze", "--seeds", "0",
               "--num-samples", "80", "--epochs", "2", "--batch-size", "16"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]

    table = (out / "ablation.md").read_text()
    assert "| V, Va, Vb | ITC, MLM, I2I (SimCLR) | ✓ |" in table
    summary = json.loads((out / "ablation.json").read_text())["summary"]
    assert set(summary) == {"itc_mlm", "simclr_freeze"}
    for entry in summary.values():
        assert all(math.isfinite(entry[d]["mean"]) for d in ("i2t", "t2i", "i2t_bn", "t2i_bn"))
        assert all(math.isfinite(v) for v in entry["gain"].values())
    assert (out / "ablation.png").stat().st_size > 0
    assert not list(out.glob("logs/*/checkpoints/*.pt"))  # deleted after evaluation
