"""The real-data downstream study (``studies/real_downstream.py``, run through its command): its
intervals against scipy, its metrics against scikit-learn and counts made another way, its cell
store, its refusals, and a tiny end-to-end run on the real VQA-RAD and MedPix 2.0 releases
(../shared/data)."""
import json
import math
from collections import Counter

import numpy as np
import open_clip
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from openclip_unimlip.commands import real_downstream as real_downstream_command
from openclip_unimlip.evaluation.medpix_classification import macro_ovr_auc, stratified_subset
from openclip_unimlip.studies import real_downstream
from openclip_unimlip.studies.real_downstream import (
    Cell,
    DownstreamConfig,
    Init,
    Runner,
    parse_init,
    plan_cells,
    summarize,
)
from openclip_unimlip.studies.statistics import paired_t_interval, t_interval

from paths import REPO

DATA = REPO.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "vqa-rad").is_dir() or not (DATA / "medpix-2.0").is_dir(),
                                reason=f"the real VQA-RAD and MedPix 2.0 releases are not at {DATA} "
                                       "(../shared/data beside the checkout, as in CI)")


# ----------------------------------------------------------------------------- intervals
@pytest.mark.parametrize("values", [[0.61, 0.64, 0.58], [0.7, 0.71], [0.5, 0.52, 0.49, 0.55, 0.51]])
def test_t_interval_is_scipys(values):
    interval = t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert interval["mean"] == pytest.approx(np.mean(values))
    assert (interval["low"], interval["high"]) == (pytest.approx(low), pytest.approx(high))


def test_t_interval_uses_the_textbook_quantile_for_three_seeds():
    # t(0.975, 2) = 4.303 (any t table); values 1, 2, 3: s = 1, half width 4.303 / sqrt(3)
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval["high"] - 2.0 == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)


def test_t_interval_of_one_seed_is_undefined_and_nan_is_refused():
    assert t_interval([0.7]) == {"mean": 0.7, "low": None, "high": None, "std": None, "n": 1}
    with pytest.raises(ValueError, match="NaN"):
        t_interval([0.7, math.nan])


def test_paired_interval_excludes_zero_exactly_when_the_paired_t_test_rejects():
    rng = np.random.default_rng(0)
    for _ in range(50):
        reference = rng.normal(0.6, 0.05, 4)
        values = reference + rng.normal(rng.uniform(-0.05, 0.05), 0.02, 4)
        interval = paired_t_interval(values, reference)
        assert interval["excludes_zero"] == (stats.ttest_rel(values, reference).pvalue < 0.05)


# ----------------------------------------------------------------------------- metrics
def test_macro_ovr_auc_is_scikit_learns_when_every_class_occurs():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, 300)
    logits = rng.normal(size=(300, 5)) + 1.5 * np.eye(5)[targets]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert macro_ovr_auc(targets, probabilities) == pytest.approx(
        roc_auc_score(targets, probabilities, multi_class="ovr", average="macro"))


def test_macro_ovr_auc_leaves_out_a_class_without_test_images():
    rng = np.random.default_rng(1)
    targets = rng.choice([0, 2, 3], 100)  # class 1 has no image
    probabilities = rng.dirichlet(np.ones(4), 100)
    by_hand = np.mean([roc_auc_score(targets == j, probabilities[:, j]) for j in (0, 2, 3)])
    assert macro_ovr_auc(targets, probabilities) == pytest.approx(by_hand)


def test_stratified_subsets_hold_every_class_are_nested_and_seeded():
    targets = np.repeat(np.arange(5), [742, 264, 263, 257, 127])  # MedPix train's location classes
    subsets = {f: stratified_subset(targets, f, seed=3) for f in (0.01, 0.1, 1.0)}
    for fraction, subset in subsets.items():
        counts = Counter(targets[subset])
        assert counts == {c: max(1, round(fraction * n)) for c, n in Counter(targets).items()}
    assert set(subsets[0.01]) <= set(subsets[0.1]) <= set(subsets[1.0]) == set(range(len(targets)))
    assert np.array_equal(stratified_subset(targets, 0.1, 3), subsets[0.1])
    assert not np.array_equal(stratified_subset(targets, 0.1, 4), subsets[0.1])


def test_summary_means_intervals_and_paired_differences_over_seeds():
    config = DownstreamConfig(model="unimlip-tiny", inits=[Init("random"), Init("a")], out=None, reference="random")
    scores = {("random", 0): 0.60, ("random", 1): 0.66, ("random", 2): 0.63,
              ("a", 0): 0.70, ("a", 1): 0.71, ("a", 2): 0.75}
    records = [{"task": "medpix-location_category", "mode": "finetune", "fraction": 0.1, "init": init, "seed": seed,
                "metrics": {"macro_auc": value}} for (init, seed), value in scores.items()]
    groups = {g["init"]: g["metrics"]["macro_auc"] for g in summarize(config, records)["groups"]}
    a, random = [scores["a", s] for s in range(3)], [scores["random", s] for s in range(3)]
    assert groups["a"]["mean"] == pytest.approx(np.mean(a))
    assert groups["a"]["high"] == pytest.approx(stats.t.interval(0.95, 2, np.mean(a), stats.sem(a))[1])
    difference = np.subtract(a, random)
    low, high = stats.t.interval(0.95, 2, difference.mean(), stats.sem(difference))
    assert (groups["a"]["difference_to_reference"]["low"], groups["a"]["difference_to_reference"]["high"]) \
        == (pytest.approx(low), pytest.approx(high))
    assert "difference_to_reference" not in groups["random"]


# ----------------------------------------------------------------------------- inputs
def test_init_specs(tmp_path):
    checkpoint = tmp_path / "itc_mlm.pt"
    checkpoint.write_bytes(b"x")
    assert parse_init("random") == Init("random")
    assert parse_init("text-base") == Init("text-base", text_base=True)
    assert parse_init(f"baseline={checkpoint}") == Init("baseline", checkpoint)
    for spec in ("baseline", "=x.pt", "random=x.pt", "a/b=x.pt"):
        with pytest.raises(ValueError):
            parse_init(spec)
    with pytest.raises(FileNotFoundError, match="not found"):
        parse_init(f"baseline={tmp_path / 'missing.pt'}")


def test_a_checkpoint_per_seed(tmp_path):
    for seed in (0, 1):
        (tmp_path / f"all_five-seed{seed}.pt").write_bytes(b"x")
    init = parse_init(f"unimlip={tmp_path}/all_five-seed{{seed}}.pt", seeds=(0, 1))
    assert init.per_seed and init.checkpoint_for(1) == tmp_path / "all_five-seed1.pt"
    with pytest.raises(FileNotFoundError, match="all_five-seed2.pt"):
        parse_init(f"unimlip={tmp_path}/all_five-seed{{seed}}.pt", seeds=(0, 1, 2))


@pytest.mark.parametrize("extra, message", [
    (["--init", "baseline"], "unknown initialisation"),
    (["--init", "baseline=/nonexistent/itc_mlm.pt"], "not found"),
    (["--init", "random", "--init", "random"], "repeat"),
    (["--init", "random", "--reference", "unimlip"], "--reference"),
    (["--init", "random", "--data-root", "/nonexistent/data"], "does not exist"),
    (["--init", "random", "--model", "no-such-model"], "unknown OpenCLIP model"),
])
def test_bad_input_stops_with_one_message_before_anything_runs(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        real_downstream_command.main(["--out", str(out), "--data-root", str(DATA), *extra])
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cells_are_seed_major_with_linear_probes_before_fine_tunes():
    config = DownstreamConfig(model="unimlip-tiny", inits=[Init("random"), Init("b")], out=None, seeds=(0, 1))
    cells = plan_cells(config)
    assert len(cells) == 2 * (2 + 2 * 3 * 2) and len({c.key for c in cells}) == len(cells)
    assert [c.seed for c in cells] == sorted(c.seed for c in cells)
    first_seed = [c.mode for c in cells if c.seed == 0 and c.task != "vqa-rad"]
    assert first_seed == ["linear-probe"] * 6 + ["finetune"] * 6


# ----------------------------------------------------------------------------- the cell store
@needs_data
def test_a_second_run_skips_finished_cells_and_reruns_only_stale_or_missing_ones(tmp_path, monkeypatch):
    calls = []

    def fake_run(self, cell: Cell) -> dict:  # the store is under test, not the training
        calls.append(cell.key)
        return {**cell.__dict__, "origin": real_downstream.cell_origin(self.config, cell), "seconds": 0.0,
                "metrics": ({m: 0.5 for m in real_downstream.VQA_METRICS} if cell.task == "vqa-rad"
                            else {"macro_auc": 0.5 + 0.01 * cell.seed})}

    monkeypatch.setattr(Runner, "run", fake_run)
    args = ["--init", "random", "--data-root", str(DATA), "--out", str(tmp_path), "--limit", "16",
            "--seeds", "0", "1", "--no-progress"]
    real_downstream_command.main(args)
    assert len(calls) == 2 * (1 + 2 * 3)
    calls.clear()
    real_downstream_command.main(args)
    assert calls == []
    (tmp_path / "cells" / "medpix-location_category__finetune__10pct__random__seed1.json").unlink()
    real_downstream_command.main(args)
    assert calls == ["medpix-location_category__finetune__10pct__random__seed1"]
    calls.clear()
    real_downstream_command.main(args + ["--vqa-epochs", "2"])  # changes the VQA cells' settings only
    assert sorted(calls) == ["vqa-rad__finetune__100pct__random__seed0", "vqa-rad__finetune__100pct__random__seed1"]
    report = json.loads((tmp_path / "downstream.json").read_text())
    assert report["timing"]["cells_done"] == report["timing"]["cells_planned"] == 14


# ----------------------------------------------------------------------------- end to end on real data
@needs_data
@pytest.mark.slow
def test_tiny_run_on_the_real_releases_writes_both_tables(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in (0, 1):  # plain state dicts, one per seed, as the MedPix ablation keeps them
            torch.manual_seed(7 + seed)
            torch.save(open_clip.create_model("unimlip-tiny", pretrained_text=False).state_dict(),
                       tmp_path / f"saved-seed{seed}.pt")
        out = tmp_path / "out"
        report = real_downstream_command.main([
            "--init", "random", "--init", f"saved={tmp_path}/saved-seed{{seed}}.pt", "--reference", "random",
            "--data-root", str(DATA),
            "--out", str(out), "--limit", "16", "--seeds", "0", "1", "--vqa-batch-size", "8", "--cls-batch-size", "8",
            "--cls-max-epochs", "1", "--min-epoch-images", "16", "--workers", "0", "--no-progress",
            "--pretraining-note", "none: a test checkpoint of random weights"])
    finally:
        torch.set_num_threads(threads)
    assert report["timing"]["cells_done"] == 2 * 2 * (1 + 2 * 3)
    for record in report["cells"]:
        for value in record["metrics"].values():
            assert value is None or 0.0 <= value <= 1.0
    markdown = (out / "downstream.md").read_text()
    assert "| initialisation | Open | Closed | Overall | seeds |" in markdown
    assert "| initialisation | mode | 1 % | 10 % | 100 % |" in markdown
    assert "| saved | linear probe |" in markdown and "| saved | fine-tune |" in markdown
    assert "Difference to `random`" in markdown and "pending" not in markdown
    assert "none: a test checkpoint of random weights" in markdown
    assert "19 MedPix 2.0 images are also VQA-RAD images (17 train, 1 dev, 1 test)" in markdown
    assert json.loads((out / "downstream.json").read_text())["summary"] == report["summary"]
