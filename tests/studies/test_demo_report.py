"""Issue 34: every number the demo prints (``report.md``: the retrieval table against chance, the
mean-R@1 sentence, the loss table, OpenCLIP-style retrieval tables) and every number of its per-run
JSON (``results.json``), rebuilt from made-up embeddings with NumPy, none of the package's code.

No training and no model: ``run_demo`` runs its real path with the data, the training run, the
model's construction, its encoder and two figures (the loss curves, the retrieved images) replaced
by made-up ones (``evaluate_checkpoint``, ``retrieval_metrics``, the chance levels, the recall
figure, the JSON and the report are the package's own). The
untrained and the pretrained model give different random embeddings (the pretrained ones nearer
their pairs), so a swapped column or direction, ``x`` for ``100 x`` or an R@K threshold off by one
changes a printed number.

The independent references, from the embeddings: the similarity ``S = I T^T`` (float64); the
rank of query i's positive is the number of candidates scoring at least ``S[i, i]`` (ties
against the model, as the retrieval module documents), over a row of ``S`` for image to text and
a column for text to image; R@K = ``100 * mean(rank <= K)``, mean rank, median rank floored;
chance for N candidates = ``100 * min(1, K / N)`` in each direction (a random ranking puts the
positive in the top K with probability K/N).
"""
import json
import re
import sys
import types

import numpy as np
import pytest

from openclip_unimlip.data.stored import ImageTextPair
from openclip_unimlip.studies import demo, experiment
from openclip_unimlip.studies.experiment import DataConfig, ExperimentData, PretrainConfig, PretrainRun

KS = (1, 5, 10)
DIRECTIONS = (("image_to_text", "image-to-text"), ("text_to_image", "text-to-image"))
ROUNDING = 0.05 + 1e-9  # a number printed with one decimal
# made-up open_clip_train steps: SimCLR from the second epoch, as the demo's flags ask
STEPS = [{"step": 1, "epoch": 0, "itc_loss": 0.7012, "image_perturbed_itc_loss": 0.6873,
          "text_perturbed_itc_loss": 0.6941, "mlm_loss": 5.1506, "loss": 7.2331},
         {"step": 7, "epoch": 1, "itc_loss": 0.4119, "image_perturbed_itc_loss": 0.4328,
          "text_perturbed_itc_loss": 0.4457, "simclr_loss": 2.0475, "mlm_loss": 3.0188, "loss": 6.3567}]
TRAIN_SECONDS = 287.0


def _embeddings(num_pairs):
    """(untrained, pretrained) [N, 8] unit embeddings (image, text), images nearer their captions
    after pretraining."""
    rng = np.random.default_rng(num_pairs)
    texts = rng.standard_normal((num_pairs, 8))

    def pair(noise):
        images = texts + noise * rng.standard_normal(texts.shape)
        return tuple((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32) for x in (images, texts))
    return pair(2.5), pair(1.5)


def _ranks(images, texts):
    similarity = images.astype(np.float64) @ texts.astype(np.float64).T
    positives = np.diag(similarity)
    return {"image_to_text": (similarity >= positives[:, None]).sum(axis=1),
            "text_to_image": (similarity >= positives[None, :]).sum(axis=0)}


def _metrics(images, texts):
    """In % for R@K, as printed."""
    metrics = {}
    for direction, ranks in _ranks(images, texts).items():
        metrics.update({f"{direction}_R@{k}": 100.0 * np.mean(ranks <= k) for k in KS})
        metrics.update({f"{direction}_mean_rank": ranks.mean(), f"{direction}_median_rank": np.floor(np.median(ranks))})
    return metrics


@pytest.fixture(scope="module", params=[37, 8], ids=lambda n: f"{n}-pairs")
def demo_run(request, tmp_path_factory):
    """``run_demo`` on N made-up pairs: (N, untrained metrics, pretrained metrics, report, results)."""
    num_pairs = request.param
    out = tmp_path_factory.mktemp("demo")
    before, after = _embeddings(num_pairs)
    pairs = [ImageTextPair(key=str(i), image=None, caption=f"caption {i}") for i in range(num_pairs)]

    class Model:
        def __init__(self, pretrained):
            self.pretrained = pretrained

        def eval(self):
            return self

    def encode_pairs(model, preprocess, tokenizer, chosen, **kwargs):
        images, texts = after if model.pretrained else before
        index = [int(p.key) for p in chosen]
        return tuple(experiment.torch.from_numpy(x[index]) for x in (images, texts))

    open_clip = types.ModuleType("open_clip")
    open_clip.create_model_and_transforms = lambda name, pretrained=None, device="cpu": (Model(pretrained), None, None)
    open_clip.get_tokenizer = lambda name: None
    data = ExperimentData(name="embedded", train_data="train", train_num_samples=400, val_data="val",
                          val_num_samples=num_pairs, eval_data="val", eval_num_samples=num_pairs, eval_split="val",
                          description="made-up pairs")
    run = PretrainRun(name="pretrain", run_dir=out / "logs" / "pretrain", checkpoint=out / "logs" / "epoch_2.pt",
                      seconds=TRAIN_SECONDS, steps=STEPS, val_metrics=[])
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "open_clip", open_clip)
        patch.setattr(experiment, "load_pairs", lambda data: pairs)
        patch.setattr(experiment, "encode_pairs", encode_pairs)
        patch.setattr(demo, "ensure_data", lambda config, progress: data)
        patch.setattr(demo, "run_pretraining", lambda *args, **kwargs: run)
        # figures with no number of the report's: the images (none here) and the loss curves (seconds to draw)
        patch.setattr(demo, "plot_retrieval_examples", lambda result, path: path)
        patch.setattr(demo, "plot_losses", lambda steps, path: path)
        demo.run_demo(demo.DemoConfig(data=DataConfig(root=str(out / "data")), pretrain=PretrainConfig(epochs=2),
                                      out=out))
    return (num_pairs, _metrics(*before), _metrics(*after), (out / "report.md").read_text(),
            json.loads((out / "results.json").read_text()))


def _chance(k, num_pairs):
    return 100.0 * min(1.0, k / num_pairs)


def test_the_data_can_tell_the_columns_apart(demo_run):
    num_pairs, before, after, _, _ = demo_run
    assert 0 < before["image_to_text_R@1"] < after["image_to_text_R@1"]
    assert before["image_to_text_R@1"] != before["text_to_image_R@1"] or \
        before["image_to_text_mean_rank"] != before["text_to_image_mean_rank"]
    assert after["image_to_text_mean_rank"] != after["text_to_image_mean_rank"]
    if num_pairs > max(KS):  # the 8 pairs check chance's cap at 100 % (K >= N); too few for distinct recalls
        assert len({after[f"{d}_R@{k}"] for d, _ in DIRECTIONS for k in KS}) == 2 * len(KS)


def test_the_retrieval_table_against_chance_is_recomputed(demo_run):
    num_pairs, before, after, report, _ = demo_run
    lines = report.splitlines()
    start = lines.index("| direction | K | chance | untrained | pretrained |")
    assert lines[start + 1] == "|---|---|---|---|---|"
    rows = [[c.strip() for c in line.strip()[1:-1].split("|")] for line in lines[start + 2:start + 8]]
    assert not lines[start + 8].startswith("|")
    expected_rows = [(label, direction, k) for direction, label in DIRECTIONS for k in KS]
    for row, (label, direction, k) in zip(rows, expected_rows, strict=True):
        assert row[:2] == [label, f"R@{k}"]
        assert float(row[2]) == pytest.approx(_chance(k, num_pairs), abs=ROUNDING), row
        assert float(row[3]) == pytest.approx(before[f"{direction}_R@{k}"], abs=ROUNDING), row
        assert row[4].startswith("**") and row[4].endswith("**"), row
        assert float(row[4].strip("*")) == pytest.approx(after[f"{direction}_R@{k}"], abs=ROUNDING), row


def test_the_mean_r1_sentence_is_recomputed(demo_run):
    num_pairs, before, after, report, _ = demo_run
    mean_before, mean_after = (np.mean([m["image_to_text_R@1"], m["text_to_image_R@1"]]) for m in (before, after))
    chance = _chance(1, num_pairs)
    match = re.search(r"Mean of image-to-text and text-to-image R@1: ([\d.]+) untrained, \*\*([\d.]+)\*\* pretrained, "
                      r"chance ([\d.]+) \(([\d.]+)x chance; ([\d.]+)x the untrained model\)", report)
    assert match, report
    printed = [float(x) for x in match.groups()]
    assert printed == [pytest.approx(x, abs=ROUNDING) for x in (mean_before, mean_after, chance, mean_after / chance,
                                                                mean_after / mean_before)]
    assert (f"Retrieval on {num_pairs} held-out val image-caption pairs, before and after {len(STEPS)} training "
            f"steps ({TRAIN_SECONDS / 60:.1f} min") in report


def test_the_loss_table_is_recomputed(demo_run):
    report = demo_run[3]
    lines = report.splitlines()
    start = lines.index("| term | first step | last step |")
    rows = [[c.strip() for c in line.strip()[1:-1].split("|")] for line in lines[start + 2:]
            if line.startswith("|")][:6]
    first, last = STEPS
    terms = ("itc", "image_perturbed_itc", "text_perturbed_itc", "simclr", "mlm")  # TERMS' order
    expected = [[t, f"{first[f'{t}_loss']:.3f}" if f"{t}_loss" in first else "–", f"{last[f'{t}_loss']:.3f}"]
                for t in terms] + [["total", f"{first['loss']:.3f}", f"{last['loss']:.3f}"]]
    assert rows == expected


def test_the_plain_text_tables_are_recomputed(demo_run):
    """OpenCLIP-style blocks: R@1, R@5, R@10 in % (two decimals), mean rank, median rank floored."""
    _, before, after, report, _ = demo_run
    for title, metrics in (("Untrained:", before), ("Pretrained:", after)):
        block = report.split(f"\n{title}\n```\n", 1)[1].split("```", 1)[0].splitlines()
        assert block[0].split() == ["direction", "R@1", "(%)", "R@5", "(%)", "R@10", "(%)", "mean", "rank", "median",
                                    "rank"]
        for line, (direction, label) in zip(block[2:], DIRECTIONS, strict=True):
            name, *numbers = line.split()
            assert name == label
            want = [*(metrics[f"{direction}_R@{k}"] for k in KS), metrics[f"{direction}_mean_rank"],
                    metrics[f"{direction}_median_rank"]]
            tolerances = [0.005, 0.005, 0.005, ROUNDING, 0.5]
            for got, value, tolerance in zip(numbers, want, tolerances, strict=True):
                assert float(got) == pytest.approx(value, abs=tolerance + 1e-9), (title, direction, got, value)
            assert float(numbers[-1]) == value  # floored, so printed exactly


def test_the_results_json_is_recomputed(demo_run):
    num_pairs, before, after, _, results = demo_run
    for name, metrics in (("before", before), ("after", after)):
        got = results[name]
        assert got["num_pairs"] == num_pairs
        assert got["chance"] == {f"R@{k}": pytest.approx(_chance(k, num_pairs) / 100) for k in KS}
        assert set(got["metrics"]) == set(metrics)
        for key, value in metrics.items():
            assert got["metrics"][key] * (100 if "R@" in key else 1) == pytest.approx(value), (name, key)
    assert (results["train_seconds"], results["num_steps"]) == (TRAIN_SECONDS, len(STEPS))
    assert results["eval_num_samples"] == num_pairs
