"""The one-command demo, end to end in a smaller setting: pretraining through open_clip_train
must raise val retrieval well above chance and above the untrained model, and the report
folder must be complete."""
import json
import subprocess
import sys

import pytest

from openclip_unimlip.evaluation.retrieval import DIRECTIONS
from openclip_unimlip.studies.pretraining.progress import parse_train_log

from paths import REPO  # noqa: E402

LOG_LINES = "\n".join([  # open_clip_train's own log lines, verbatim
    "2026-01-01,00:00:00 | INFO | Start epoch 0",
    "2026-01-01,00:00:01 | INFO | Train Epoch: 0 [ 32/96 (33%)] Data (t): 0.1 Batch (t): 1.0, 32.0/s, 32.0/s/gpu LR: 0.000100 Logit Scale: 14.286 Itc_loss: 0.70182 (0.70182) Mlm_loss: 5.1506 (5.1506) Loss: 5.8524 (5.8524)",  # noqa: E501
    "2026-01-01,00:00:02 | INFO | Train Epoch: 0 [ 96/96 (100%)] Data (t): 0.1 Batch (t): 1.0, 32.0/s, 32.0/s/gpu LR: 0.000300 Logit Scale: 14.280 Itc_loss: 0.60000 (0.65000) Mlm_loss: 4.0000 (4.5000) Loss: 4.6000 (5.2000)",  # noqa: E501
    "2026-01-01,00:00:03 | INFO | Uni-Mlip epoch 1: SimCLR on, BatchNorm statistics frozen",
    "2026-01-01,00:00:04 | INFO | Train Epoch: 1 [ 32/96 (33%)] Data (t): 0.1 Batch (t): 1.0, 32.0/s, 32.0/s/gpu LR: 0.000400 Logit Scale: 14.270 Itc_loss: 0.50000 (0.50000) Simclr_loss: 2.0000 (2.0000) Mlm_loss: 3.0000 (3.0000) Loss: 5.5000 (5.5000)",  # noqa: E501
]) + "\n"


def test_parse_train_log_reads_steps_and_terms():
    steps = parse_train_log(LOG_LINES)
    assert [s["step"] for s in steps] == [1, 3, 4]
    assert steps[0]["itc_loss"] == pytest.approx(0.70182) and steps[1]["mlm_loss"] == 4.0  # the step's value
    assert "simclr_loss" not in steps[1] and steps[2]["simclr_loss"] == 2.0
    assert steps[2]["loss"] == 5.5 and steps[2]["lr"] == pytest.approx(4e-4) and steps[2]["epoch"] == 1


def test_run_pretraining_refuses_an_existing_run_before_starting(tmp_path):
    """open_clip_train refuses an existing run yet exits 0: refused here first, with nothing started."""
    from openclip_unimlip.data.embedded import EmbeddedDataset
    from openclip_unimlip.studies.experiment import PretrainConfig, run_pretraining

    data = EmbeddedDataset(root=tmp_path, train_data=str(tmp_path / "{00000..00001}.tar"), val_data=None,
                           train_csv=None, val_csv=None, train_num_samples=10, val_num_samples=0, manifest={},
                           built=False)
    (tmp_path / "logs" / "run").mkdir(parents=True)
    (tmp_path / "logs" / "run" / "out.log").write_text("an earlier run")
    with pytest.raises(FileExistsError, match="already holds a training run"):
        run_pretraining(PretrainConfig(), data, tmp_path / "logs", "run", with_val=False)
    assert sorted(p.name for p in (tmp_path / "logs" / "run").iterdir()) == ["out.log"]


@pytest.mark.slow
def test_demo_pretraining_beats_chance_and_writes_the_report(tmp_path):
    out = tmp_path / "report"
    command = [sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(out),
               "--data-root", str(tmp_path / "data"), "--num-samples", "700", "--epochs", "3",
               "--batch-size", "32", "--simclr-start-epoch", "2"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    assert str((out / "report.md").resolve()) in result.stdout

    for name in ("report.md", "results.json", "losses.png", "recall.png", "retrieval_examples.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    before, after = results["before"]["metrics"], results["after"]["metrics"]
    # Judged on R@10 and mean rank: with 70 val pairs R@1 counts 1-4 hits and one hit moves it by
    # 1.4 points. Runs differ even at one --seed: OpenCLIP's webdataset pipeline shuffles samples
    # with a buffer seeded from the process id and the clock (wds.shuffle without an rng). After 2
    # epochs the mean rank (both directions, chance 35.5) spread over 7.4-16.3 in six runs here and
    # reached 22.7 in a CI run, past the 21.3 asserted; 3 epochs (20 steps more) gave 6.2-7.6 in
    # three runs, R@10 74-87 % (chance 14 %). With SimCLR from epoch 1 (after 20 CLIP steps, near the
    # peak learning rate, statistics frozen) one of four runs on 2026-12-07 collapsed in its first SimCLR epoch:
    # ITC back at chance (0.58 = log 32 x 0.167) and every val embedding alike (mean rank 35.5), the
    # small-scale harm of SimCLR docs/results.md reports; from epoch 2 the SimCLR phase still runs.
    pairs = results["val_num_samples"]
    chance_r10, chance_mean_rank = results["after"]["chance"]["R@10"], (pairs + 1) / 2

    def both(metrics, name):  # as experiment.mean_r1 does for R@1, for any metric
        return sum(metrics[f"{direction}_{name}"] for direction in DIRECTIONS) / len(DIRECTIONS)

    assert both(after, "R@10") >= 2 * chance_r10, (after, chance_r10)
    assert both(after, "mean_rank") <= 0.6 * chance_mean_rank, (after, chance_mean_rank)
    assert both(before, "mean_rank") > 0.8 * chance_mean_rank, before  # untrained: at chance
    report = (out / "report.md").read_text()
    assert "| image-to-text | R@1 |" in report and "simclr" in report  # the second phase ran


MEDPIX_RELEASE = REPO.parent / "shared" / "data" / "medpix-2.0"


@pytest.mark.skipif(not (MEDPIX_RELEASE / "splitted_dataset").is_dir(),
                    reason=f"the real MedPix 2.0 release is not at {MEDPIX_RELEASE}")
def test_each_dataset_gets_its_own_defaults_and_flags_still_win():
    from openclip_unimlip.commands.demo import parse_args
    from openclip_unimlip.studies.demo import CPU_PRETRAIN, MEDPIX_PRETRAIN

    embedded = parse_args([])
    medpix = parse_args(["--dataset", "medpix", "--data-root", str(MEDPIX_RELEASE)])
    assert (embedded.epochs, embedded.simclr_start_epoch) == (2, 1) == \
        (CPU_PRETRAIN["epochs"], CPU_PRETRAIN["simclr_start_epoch"])
    # the MedPix stage-1 dev curve (demo.py): a 5-epoch CLIP phase reaches 3x chance; SimCLR for two more
    assert (medpix.epochs, medpix.simclr_start_epoch) == (7, 5) == \
        (MEDPIX_PRETRAIN["epochs"], MEDPIX_PRETRAIN["simclr_start_epoch"])
    given = parse_args(["--dataset", "medpix", "--data-root", str(MEDPIX_RELEASE), "--epochs", "3",
                        "--simclr-start-epoch", "2"])
    assert (given.epochs, given.simclr_start_epoch) == (3, 2)
