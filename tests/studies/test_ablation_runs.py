"""The ablation's two kinds of run, stage 1 (``ensure_stage1``) and a grid row (``run_one``), with
``open_clip_train`` and the retrieval evaluation replaced by stand-ins that keep their contracts: a run
writes ``epoch_<N>.pt`` under ``<logs>/<name>/checkpoints`` holding a DDP-prefixed ``state_dict``, and
refuses a name whose ``out.log`` exists (``experiment.run_pretraining``). Seconds, where
``test_ablation.py``'s miniature grid trains for real; here: what is kept and deleted, what an
interrupted run leaves behind, and which data each evaluation reads."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from openclip_unimlip.studies import ablation
from openclip_unimlip.studies.experiment import DataConfig, ExperimentData, PretrainConfig, PretrainRun, RetrievalResult
from openclip_unimlip.studies.grid import settings_hash

from ablation_records import scored  # noqa: E402

DATA = ExperimentData(name="embedded", train_data="train/{0..1}.tar", train_num_samples=64,
                      val_data="val/0.tar", val_num_samples=8, eval_data="eval/0.tar", eval_num_samples=6,
                      eval_split="test", description="stand-in shards")
WEIGHTS = {"visual.w": torch.arange(6.0).reshape(2, 3), "text.b": torch.tensor([0.5, -1.0])}


class FakeTrainer:
    """``run_pretraining``'s stand-in: records each call, writes the final checkpoint, returns its run."""

    def __init__(self):
        self.calls = []

    def __call__(self, config: PretrainConfig, data, logs, name, with_val=True, progress=True) -> PretrainRun:
        run_dir = Path(logs) / name
        if (run_dir / "out.log").exists():  # run_pretraining's own refusal of a used name
            raise FileExistsError(f"{run_dir} already holds a training run")
        self.calls.append({"config": config, "data": data, "logs": Path(logs), "name": name, "with_val": with_val})
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "out.log").write_text("trained\n")
        checkpoint = run_dir / "checkpoints" / f"epoch_{config.epochs}.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in WEIGHTS.items()}, "optimizer": {}}, checkpoint)
        steps = [{"step": s, "itc_loss": 3.0 - s, "mlm_loss": 2.0, "lr": 0.1} for s in range(5)]
        val = [{"epoch": e, "image_to_text_mean_rank": 10.0 / e, "text_to_image_mean_rank": 12.0 / e,
                "image_to_text_R@1": 0.1 * e, "image_to_text_R@5": 0.2, "image_to_text_R@10": 0.3,
                "text_to_image_R@1": 0.05 * e, "text_to_image_R@5": 0.2, "text_to_image_R@10": 0.4}
               for e in range(1, config.epochs + 1)]
        return PretrainRun(name=name, run_dir=run_dir, checkpoint=checkpoint, seconds=12.5, steps=steps,
                           val_metrics=val)


def _is_plain_state_dict_of_the_run(path: Path) -> bool:
    """The trained weights without the optimizer state and without DDP's ``module.`` prefix."""
    kept = torch.load(path, weights_only=True)
    return kept.keys() == WEIGHTS.keys() and all(torch.equal(kept[k], WEIGHTS[k]) for k in WEIGHTS)


@pytest.fixture
def trainer(monkeypatch):
    fake = FakeTrainer()
    monkeypatch.setattr(ablation, "run_pretraining", fake)
    return fake


@pytest.fixture
def evaluations(monkeypatch):
    """``evaluate_checkpoint``'s stand-in: 6 pairs, each image closest to its own text but images 4 and 5."""
    calls = []

    def evaluate(model, checkpoint, data, *, num_samples, init_seed, device, reestimate_bn_on=None):
        calls.append({"model": model, "checkpoint": checkpoint, "data": data, "num_samples": num_samples,
                      "init_seed": init_seed, "device": device, "reestimate_bn_on": reestimate_bn_on})
        if checkpoint is not None:
            assert torch.load(checkpoint, weights_only=True)["state_dict"]  # scored before any clean-up
        features = torch.eye(6)
        texts = 0.6 * features[[0, 1, 2, 3, 5, 4]] + 0.4 * features  # texts 4 and 5 lean to each other's image
        return RetrievalResult(metrics={"image_to_text_R@1": 4 / 6, "text_to_image_R@1": 4 / 6}, chance={1: 1 / 6},
                               pairs=[None] * 6, image_features=features, text_features=texts)

    monkeypatch.setattr(ablation, "evaluate_checkpoint", evaluate)
    return calls


def _config(tmp_path, **changes):
    config = ablation.AblationConfig(data=DataConfig(root=str(tmp_path / "data")),
                                     pretrain=PretrainConfig(epochs=2, unimlip_flags=["--unimlip-mlm-weight", "0.5"]),
                                     out=tmp_path / "out")
    return replace(config, **changes)


def test_the_defaults_keep_no_training_checkpoint():
    config = ablation.AblationConfig(data=DataConfig(root="d"), pretrain=PretrainConfig(), out=Path("o"))
    assert config.keep_checkpoints is False and config.keep_rows == () and config.two_stage
    assert (config.stage1_epochs, config.stage1_seed, tuple(config.seeds)) == (10, 0, (0, 1, 2))


def test_stage1_keeps_a_plain_state_dict_and_deletes_the_training_checkpoint(tmp_path, trainer):
    config = _config(tmp_path, stage1_epochs=3, stage1_seed=4)
    record = ablation.ensure_stage1(config, DATA)
    folder = ablation.stage1_dir(config)
    (call,) = trainer.calls
    assert (call["logs"], call["name"], call["with_val"], call["data"]) == (folder / "logs", "stage1", True, DATA)
    assert (call["config"].epochs, call["config"].seed) == (3, 4)
    assert not (folder / "logs" / "stage1" / "checkpoints" / "epoch_3.pt").exists()  # the optimizer state goes
    assert _is_plain_state_dict_of_the_run(folder / "stage1.pt")
    assert record["checkpoint"] == str((folder / "stage1.pt").resolve())
    assert (record["train_seconds"], record["num_steps"]) == (12.5, 5)
    assert [point["epoch"] for point in record["curve"]] == [1, 2, 3]
    assert record["curve"][1]["i2t_r1"] == pytest.approx(20.0)  # R@K in %
    assert record["plateaued"] is False  # three epochs: too short to tell
    assert json.loads((folder / "stage1.json").read_text()) == record


def test_stage1_keeps_the_training_checkpoint_when_asked(tmp_path, trainer):
    config = _config(tmp_path, stage1_epochs=2, keep_checkpoints=True)
    ablation.ensure_stage1(config, DATA)
    assert (ablation.stage1_dir(config) / "logs" / "stage1" / "checkpoints" / "epoch_2.pt").is_file()


def test_an_interrupted_stage1_is_trained_again_from_a_clean_folder(tmp_path, trainer):
    config = _config(tmp_path, stage1_epochs=2)
    logs = ablation.stage1_dir(config) / "logs"
    (logs / "stage1").mkdir(parents=True)
    (logs / "stage1" / "out.log").write_text("killed at step 3\n")  # no stage1.json: interrupted
    (logs / "leftover.txt").write_text("x")
    record = ablation.ensure_stage1(config, DATA)
    assert len(trainer.calls) == 1 and not (logs / "leftover.txt").exists()
    assert (logs / "stage1" / "out.log").read_text() == "trained\n"
    assert ablation.ensure_stage1(config, DATA) == record and len(trainer.calls) == 1  # then reused


def test_a_row_starts_from_stage1_and_keeps_only_what_is_asked(tmp_path, trainer, evaluations):
    config = _config(tmp_path, keep_rows=("simclr_freeze",), eval_num_samples=6)
    stage1 = {"checkpoint": "/weights/stage1.pt"}
    record = ablation.run_one(config, DATA, "simclr_freeze", 2, stage1)
    (call,) = trainer.calls
    assert (call["logs"], call["name"], call["with_val"]) == (config.out / "logs", "simclr_freeze-seed2", False)
    assert call["config"].seed == 2
    assert call["config"].extra_flags[-2:] == ["--pretrained", "/weights/stage1.pt"]
    assert call["config"].unimlip_flags == ablation.ROWS["simclr_freeze"].flags(0) + ["--unimlip-mlm-weight", "0.5"]
    assert record["flags"] == call["config"].unimlip_flags + call["config"].extra_flags
    # scored on the evaluation pairs; BatchNorm re-estimated on the training images, never on those
    checkpoint = config.out / "logs" / "simclr_freeze-seed2" / "checkpoints" / "epoch_2.pt"
    assert [(c["checkpoint"], c["data"], c["reestimate_bn_on"], c["init_seed"], c["num_samples"])
            for c in evaluations] == [(checkpoint, DATA.eval_data, None, 2, 6),
                                      (checkpoint, DATA.eval_data, DATA.train_data, 2, 6)]
    assert not checkpoint.exists()  # the default keeps no training checkpoint
    assert _is_plain_state_dict_of_the_run(config.out / "checkpoints" / "simclr_freeze-seed2.pt")
    assert record["checkpoint"] == str((config.out / "checkpoints" / "simclr_freeze-seed2.pt").resolve())
    assert record["final_losses"] == {"itc_loss": -1.0, "mlm_loss": 2.0}  # the last step's, losses only
    assert (record["row"], record["seed"], record["num_steps"], record["train_seconds"], record["num_pairs"]) == (
        "simclr_freeze", 2, 5, 12.5, 6)
    # ranks of the true partner: pairs 4 and 5 swapped their texts
    assert record["evaluations"]["as_trained"]["ranks"]["image_to_text"] == [1, 1, 1, 1, 2, 2]


def test_a_row_from_scratch_keeps_its_training_checkpoint_when_asked(tmp_path, trainer, evaluations):
    config = _config(tmp_path, stage1_epochs=None, simclr_start_epoch=1, keep_checkpoints=True)
    record = ablation.run_one(config, DATA, "itc_mlm", 0, None)
    (call,) = trainer.calls
    assert "--pretrained" not in call["config"].extra_flags
    assert call["config"].unimlip_flags[:-2] == ablation.ROWS["itc_mlm"].flags(1)
    assert (config.out / "logs" / "itc_mlm-seed0" / "checkpoints" / "epoch_2.pt").is_file()
    assert record["checkpoint"] is None and not (config.out / "checkpoints").exists()


def test_an_interrupted_row_is_trained_again_and_its_neighbours_stay(tmp_path, trainer, evaluations):
    config = _config(tmp_path)
    logs = config.out / "logs"
    for name in ("itc_mlm-seed0", "itc_mlm-seed1"):
        (logs / name).mkdir(parents=True)
        (logs / name / "out.log").write_text("killed\n")
    ablation.run_one(config, DATA, "itc_mlm", 0, {"checkpoint": "s1.pt"})
    assert (logs / "itc_mlm-seed0" / "out.log").read_text() == "trained\n"
    assert (logs / "itc_mlm-seed1" / "out.log").read_text() == "killed\n"  # another row's run is not touched


def test_the_untrained_row_scores_the_initial_weights_of_its_seed(tmp_path, trainer, evaluations):
    record = ablation.run_one(_config(tmp_path), DATA, "untrained", 3, {"checkpoint": "s1.pt"})
    assert trainer.calls == []
    assert [(c["checkpoint"], c["init_seed"], c["reestimate_bn_on"]) for c in evaluations] == [
        (None, 3, None), (None, 3, DATA.train_data)]
    assert (record["row"], record["seed"], record["num_steps"], record["train_seconds"], record["num_pairs"]) == (
        "untrained", 3, 0, 0.0, 6)


def test_an_unconverged_stage1_warns_with_the_plateau_rule(tmp_path, trainer, caplog):
    """The fake stage 1 trains 2 epochs, fewer than the rule's window (docs/ablation.md: a baseline has
    plateaued when its last 3 epochs lowered the val mean rank by less than 5 %)."""
    ablation.ensure_stage1(_config(tmp_path, stage1_epochs=2), DATA)
    assert "fell by 5% or more over its last 3 epochs" in caplog.text


def test_the_chart_is_drawn_once_a_run_is_recorded(tmp_path, monkeypatch):
    """``ablation.png`` is drawn from the tables' summary, and not at all before any run has a record."""
    config = _config(tmp_path, rows=("itc_mlm",), seeds=(0,))
    charts = []
    monkeypatch.setattr(ablation, "plot_summary", lambda summary, path: charts.append((set(summary), Path(path))))
    ablation.write_outputs(config, DATA.eval_split)
    assert charts == []
    run = scored({"image_to_text": [1, 1, 2], "text_to_image": [1, 1, 2]})
    record = {"row": "itc_mlm", "seed": 0, "flags": [], "num_pairs": 3, "train_seconds": 1.0, "num_steps": 1,
              "final_losses": {}, "checkpoint": None,
              "evaluations": {"as_trained": run, "bn_reestimated": run}}
    (config.out / "runs").mkdir()
    (config.out / "runs" / "itc_mlm-seed0.json").write_text(json.dumps(
        {**record, "origin": settings_hash(ablation.run_settings(config)), "seconds": 1.0, "units": 1}))
    ablation.write_outputs(config, DATA.eval_split)
    assert charts == [({"itc_mlm"}, config.out / "ablation.png")]


def test_a_run_is_complete_once_scored_with_the_weights_it_keeps(tmp_path):
    config = _config(tmp_path, keep_rows=("all_five", "untrained"))
    grid = ablation.AblationGrid(config, DATA, None)
    kept = tmp_path / "all_five-seed0.pt"
    scored = {"evaluations": {}, "checkpoint": str(kept)}
    assert not grid.is_complete(ablation.AblationRun("itc_mlm", 0), {"checkpoint": None})  # never scored
    assert grid.is_complete(ablation.AblationRun("itc_mlm", 0), {"evaluations": {}, "checkpoint": None})
    assert not grid.is_complete(ablation.AblationRun("all_five", 0), scored)  # its weights are gone
    kept.touch()
    assert grid.is_complete(ablation.AblationRun("all_five", 0), scored)
    assert grid.is_complete(ablation.AblationRun("untrained", 0), {"evaluations": {}, "checkpoint": None})


def test_the_report_leaves_out_stale_and_broken_records_and_lists_the_failures(tmp_path, monkeypatch):
    """Only current records (this grid's settings hash) are tabled; each failed run gets its line."""
    config = _config(tmp_path, rows=("itc_mlm", "clip"), seeds=(0,))
    monkeypatch.setattr(ablation, "plot_summary", lambda summary, path: path)
    runs = config.out / "runs"
    runs.mkdir(parents=True)
    (runs / "clip-seed0.json").write_text(json.dumps({"row": "clip", "seed": 0, "origin": "0" * 16}))  # stale
    (runs / "itc_mlm-seed0.json").write_text("{")  # cut short
    ablation.write_outputs(config, DATA.eval_split)
    report = json.loads((config.out / "ablation.json").read_text())
    assert report["summary"] == {} and report["runs"] == []
    assert "**Problems**" not in (config.out / "ablation.md").read_text()
    failures = [{"row": "clip", "seed": 0, "message": "RuntimeError: out of memory"}]
    ablation.write_outputs(config, DATA.eval_split, failures=failures)
    assert "- clip seed 0: RuntimeError: out of memory" in (config.out / "ablation.md").read_text()


def test_a_grid_started_again_resumes_and_trains_nothing_twice(tmp_path, trainer, monkeypatch):
    """``run_grid`` a second time on the same folder (a resumed study): stage 1 and every row are
    current records, so nothing trains again and the tables are the same."""
    def evaluate(model, checkpoint, data, *, num_samples, init_seed, device, reestimate_bn_on=None):
        values = (("R@1", 0.5), ("R@5", 1.0), ("R@10", 1.0), ("mean_rank", 1.5), ("median_rank", 1.5))
        metrics = {f"{d}_{m}": value for d in ("image_to_text", "text_to_image") for m, value in values}
        return RetrievalResult(metrics=metrics, chance={1: 0.5}, pairs=[None] * 2, image_features=torch.eye(2),
                               text_features=torch.tensor([[1.0, 0.2], [0.6, 0.4]]))

    monkeypatch.setattr(ablation, "ensure_data", lambda data, progress=True: DATA)
    monkeypatch.setattr(ablation, "evaluate_checkpoint", evaluate)
    monkeypatch.setattr(ablation, "plot_summary", lambda summary, path: path)
    config = _config(tmp_path, rows=("itc_mlm", "clip"), seeds=(0,), stage1_epochs=2)
    first = ablation.run_grid(config)
    assert [call["name"] for call in trainer.calls] == ["stage1", "itc_mlm-seed0", "clip-seed0"]
    tables = (config.out / "ablation.md").read_text()
    second = ablation.run_grid(config)
    assert len(trainer.calls) == 3 and set(second) == set(first) == {"itc_mlm", "clip"}
    assert (config.out / "ablation.md").read_text() == tables
