"""``--dataset medpix --data-root DIR`` of the demo and the ablation: a wrong folder stops with one
message before anything starts, the MedPix preset, rows and kept weights, and the two extra rows
(untrained, plain CLIP) in the tables. The end-to-end runs are in test_real_data_pretraining.py."""
import json

import pytest

from openclip_unimlip.commands import ablation as ablation_command
from openclip_unimlip.commands import demo as demo_command
from openclip_unimlip.studies import ablation
from openclip_unimlip.studies.experiment import DataConfig, MedpixConfig
from openclip_unimlip.studies.grid import settings_hash

from paths import REPO  # noqa: E402

MEDPIX = REPO.parent / "shared" / "data" / "medpix-2.0"
needs_medpix = pytest.mark.skipif(
    not (MEDPIX / "Descriptions.json").is_file(),
    reason=f"the real MedPix 2.0 release is not at {MEDPIX} (../shared/data beside the checkout; CI has it)")


@pytest.mark.parametrize("parse", [ablation_command.parse_args, demo_command.parse_args])
def test_a_wrong_or_missing_release_folder_stops_with_one_message(parse, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        parse(["--dataset", "medpix", "--data-root", str(tmp_path), "--out", str(out)])
    assert "is not the MedPix 2.0 release" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--dataset", "medpix", "--out", str(out)])
    assert "--dataset medpix needs --data-root" in capsys.readouterr().err
    assert not out.exists()


def test_embedded_options_are_refused_with_medpix(capsys):
    with pytest.raises(SystemExit):
        ablation_command.parse_args(["--dataset", "medpix", "--data-root", "x", "--num-samples", "100"])
    assert "embedded dataset only" in capsys.readouterr().err


def test_the_embedded_defaults_are_unchanged():
    config = ablation_command.config_from_args(ablation_command.parse_args(["--out", "o"]))
    assert isinstance(config.data, DataConfig) and config.rows == ablation.RUN_ORDER and config.keep_rows == ()
    assert config.extra["preset"] == "cpu"
    args = demo_command.parse_args([])
    assert args.dataset == "embedded" and isinstance(demo_command.data_config(args, REPO / "runs" / "x"), DataConfig)


@needs_medpix
def test_the_medpix_grid_config(tmp_path):
    config = ablation_command.config_from_args(ablation_command.parse_args(
        ["--dataset", "medpix", "--data-root", str(MEDPIX), "--out", str(tmp_path / "grid")]))
    assert isinstance(config.data, MedpixConfig) and config.data.image_size == 96  # unimlip-tiny's input
    assert config.data.root == str(tmp_path / "grid" / "data-medpix-96px") and config.data.release == str(MEDPIX)
    assert config.rows[:2] == ("itc_mlm", "all_five") and set(config.rows) == set(ablation.ROWS)
    assert sum(ablation.ROWS[key].trains for key in config.rows) == 8
    assert config.keep_rows == ("itc_mlm", "all_five") and config.extra["preset"] == "medpix"
    subset = ablation_command.config_from_args(ablation_command.parse_args(
        ["--dataset", "medpix", "--data-root", str(MEDPIX), "--rows", "all_five", "itc_mlm", "--keep-rows"]))
    assert subset.rows == ("all_five", "itc_mlm") and subset.keep_rows == ()
    default = ablation_command.config_from_args(ablation_command.parse_args([]))
    assert ablation.stage1_dir(subset) != ablation.stage1_dir(default)


def test_the_extra_rows():
    assert not ablation.ROWS["untrained"].trains and ablation.ROWS["clip"].terms == ("itc",)
    with pytest.raises(ValueError, match="does not train"):
        ablation.ROWS["untrained"].flags(0)
    flags = ablation.ROWS["clip"].flags(0)
    for term in ("mlm", "simclr", "image-perturbed-itc", "text-perturbed-itc"):
        assert flags[flags.index(f"--unimlip-{term}-weight") + 1] == "0"


def _record(row, seed, ranks, checkpoint=None):
    scored = {"metrics": {f"{d}_{m}": v for d in ("image_to_text", "text_to_image")
                          for m, v in (("R@1", sum(r <= 1 for r in ranks) / len(ranks)),
                                       ("R@10", sum(r <= 10 for r in ranks) / len(ranks)),
                                       ("mean_rank", sum(ranks) / len(ranks)))},
              "ranks": {"image_to_text": ranks, "text_to_image": ranks}}
    return {"row": row, "seed": seed, "evaluations": {"as_trained": scored, "bn_reestimated": scored},
            "train_seconds": 0.0, "checkpoint": checkpoint}


def test_reference_rows_are_tabled_against_the_baseline():
    records = [_record("itc_mlm", 0, [1, 2, 3, 4]), _record("untrained", 0, [3, 4, 4, 4]),
               _record("clip", 0, [1, 1, 3, 4])]
    summary = ablation.summarize(records, ["itc_mlm", "untrained", "clip"], num_resamples=500)
    table = ablation.format_tables(summary)
    assert table.count("**Reference rows**") == 2  # as trained, and with precise BN
    untrained_line = next(line for line in table.splitlines() if line.startswith("| untrained"))
    # mean rank 3.75 against the baseline's 2.5: +1.2 ranks in both directions
    assert "| 3.8 / 3.8 |" in untrained_line and "+1.2 [" in untrained_line


def test_kept_weights_make_a_record_complete_and_are_listed(tmp_path):
    config = ablation.AblationConfig(data=DataConfig(root=str(tmp_path / "data")), pretrain=ablation.PretrainConfig(),
                                     out=tmp_path, stage1_epochs=None, rows=("itc_mlm", "untrained"),
                                     keep_rows=("itc_mlm",))
    origin = settings_hash(ablation.run_settings(config))
    grid = ablation.AblationGrid(config, data=None, stage1=None)
    (tmp_path / "runs").mkdir()
    weights = tmp_path / "checkpoints" / "itc_mlm-seed0.pt"
    for row, checkpoint in (("itc_mlm", str(weights)), ("untrained", None)):
        record = {**_record(row, 0, [1, 2, 3]), "origin": origin, "checkpoint": checkpoint}
        (tmp_path / "runs" / f"{row}-seed0.json").write_text(json.dumps(record))
    assert grid.finished(ablation.AblationRun("itc_mlm", 0)) is None  # no weights yet
    assert grid.finished(ablation.AblationRun("untrained", 0)) is not None
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    assert grid.finished(ablation.AblationRun("itc_mlm", 0)) is not None
    ablation.write_outputs(config, "val")  # the embedded dataset scores its val pairs
    assert json.loads((tmp_path / "ablation.json").read_text())["checkpoints"] == {"itc_mlm": {"0": str(weights)}}
