"""Retrieval evaluation: metrics vs brute force and OpenCLIP, sampling, loading, end to end, clip_benchmark."""
import inspect
import io
import json
import sys

import numpy as np
import open_clip
import pytest
import torch
import webdataset as wds
from PIL import Image

from openclip_unimlip.commands import eval_retrieval, export_clip_benchmark
from openclip_unimlip.data.stored import load_pairs, sample_indices, sample_pairs
from openclip_unimlip.evaluation.clip_benchmark_export import clip_benchmark_eval_args, from_clip_benchmark_metrics
from openclip_unimlip.evaluation.retrieval import (
    encode_pairs,
    evaluate_retrieval,
    format_retrieval_table,
    positive_ranks,
    retrieval_metrics,
    retrieve_top_k,
)

torch.set_num_threads(1)

TINY_MODEL = "unimlip-eval-tiny-retrieval"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
NUM_PAIRS = 30
NUM_SAMPLES = 20
SEED = 3
WORDS = ["lung", "heart", "liver", "kidney", "opacity", "nodule", "fracture", "effusion", "mass", "lesion"]


# ---------------------------------------------------------------- independent reference computations

def brute_force_ranks(image_features: np.ndarray, text_features: np.ndarray):
    """Rank = number of candidates scoring at least as high as the positive (ties count against)."""
    n = len(image_features)
    similarity = image_features.astype(np.float64) @ text_features.astype(np.float64).T
    image_to_text = [sum(similarity[i, j] >= similarity[i, i] for j in range(n)) for i in range(n)]
    text_to_image = [sum(similarity[i, j] >= similarity[j, j] for i in range(n)) for j in range(n)]
    return {"image_to_text": np.array(image_to_text), "text_to_image": np.array(text_to_image)}


def metrics_from_ranks(ranks: dict) -> dict:
    expected = {}
    for direction, r in ranks.items():
        for k in (1, 5, 10):
            expected[f"{direction}_R@{k}"] = sum(int(x <= k) for x in r) / len(r)
        expected[f"{direction}_mean_rank"] = sum(r) / len(r)
        expected[f"{direction}_median_rank"] = float(np.floor(np.median(r)))
    return expected


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A registered tiny CLIP, and its weights saved as an open_clip_train checkpoint."""
    root = tmp_path_factory.mktemp("tiny_model")
    config_path = root / f"{TINY_MODEL}.json"
    config_path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.logit_scale.backward()  # one step, so the checkpoint carries optimizer state as real ones do
    optimizer.step()
    checkpoint = root / "epoch_1.pt"
    torch.save({
        "epoch": 1,
        "name": "tiny",
        "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},  # as saved under DDP
        "optimizer": optimizer.state_dict(),
    }, checkpoint)
    return {"model": model.eval(), "preprocess": preprocess, "checkpoint": str(checkpoint), "config": str(config_path)}


def _encode(image: Image.Image, extension: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="jpeg" if extension == "jpg" else extension)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    """The same NUM_PAIRS pairs as two webdataset shards and as a CSV of image files."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    (root / "test").mkdir()
    (root / "images").mkdir()
    rows, sizes, shard_of = ["filepath\ttitle"], {}, [0] * 17 + [1] * (NUM_PAIRS - 17)
    writers = [wds.TarWriter(str(root / "test" / f"{s:05d}.tar")) for s in range(2)]
    for i in range(NUM_PAIRS):
        extension = "png" if i % 2 == 0 else "jpg"
        pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
        data = _encode(Image.fromarray(pixels), extension)
        caption = f"case {i}: {' '.join(rng.choice(WORDS, size=4))}"
        writers[shard_of[i]].write({"__key__": f"sample{i:06d}", extension: data, "txt": caption,
                                    "json": {"index": i}})
        (root / "images" / f"{i}.{extension}").write_bytes(data)
        rows.append(f"images/{i}.{extension}\t{caption}")
        sizes[f"{shard_of[i]:05d}.tar"] = sizes.get(f"{shard_of[i]:05d}.tar", 0) + 1
    # incomplete samples the loader must skip: no caption, and an empty caption
    writers[1].write({"__key__": "nocaption", "png": _encode(Image.new("RGB", (8, 8)), "png")})
    writers[1].write({"__key__": "emptycaption", "png": _encode(Image.new("RGB", (8, 8)), "png"), "txt": ""})
    for writer in writers:
        writer.close()
    (root / "test" / "sizes.json").write_text(json.dumps(sizes))
    (root / "test.csv").write_text("\n".join(rows) + "\n")
    return {"root": root, "shards": str(root / "test" / "{00000..00001}.tar"), "csv": str(root / "test.csv")}


@pytest.fixture(scope="module")
def sampled_features(tiny_model, pair_data):
    """Features of the sampled pairs from the in-memory reference model."""
    sampled = sample_pairs(load_pairs(pair_data["shards"]), NUM_SAMPLES, SEED)
    features = encode_pairs(
        tiny_model["model"], tiny_model["preprocess"], open_clip.get_tokenizer(TINY_MODEL), sampled, batch_size=16)
    return sampled, features


@pytest.fixture(scope="module")
def our_results(tiny_model, pair_data):
    return evaluate_retrieval(
        TINY_MODEL, tiny_model["checkpoint"], data=pair_data["shards"], num_samples=NUM_SAMPLES, seed=SEED,
        batch_size=8)


# ---------------------------------------------------------------- metrics

def test_metrics_equal_brute_force_with_ties():
    rng = np.random.default_rng(1)
    # small integer features: exact dot products with many ties
    image_features = rng.integers(-1, 2, size=(25, 3)).astype(np.float32)
    text_features = rng.integers(-1, 2, size=(25, 3)).astype(np.float32)
    expected_ranks = brute_force_ranks(image_features, text_features)
    similarity = image_features @ text_features.T
    assert (similarity == similarity.diagonal()[:, None]).sum() > 2 * len(similarity), "test data should have ties"

    ranks = positive_ranks(image_features, text_features, chunk_size=4)
    for direction in expected_ranks:
        np.testing.assert_array_equal(ranks[direction].numpy(), expected_ranks[direction])
    metrics = retrieval_metrics(torch.from_numpy(image_features), torch.from_numpy(text_features), chunk_size=4)
    assert metrics == pytest.approx(metrics_from_ranks(expected_ranks))


def test_constant_features_rank_last():
    features = torch.ones(12, 4)
    metrics = retrieval_metrics(features, features)
    assert metrics["image_to_text_R@10"] == 0 and metrics["text_to_image_R@1"] == 0
    assert metrics["image_to_text_mean_rank"] == 12 and metrics["text_to_image_median_rank"] == 12


def test_metrics_equal_openclip_evaluate_without_ties():
    from open_clip_train.train import get_clip_metrics

    generator = torch.Generator().manual_seed(2)
    image_features = torch.nn.functional.normalize(torch.randn(300, 16, generator=generator), dim=-1)
    text_features = torch.nn.functional.normalize(
        image_features + 0.8 * torch.randn(300, 16, generator=generator), dim=-1)
    expected = {k: float(v) for k, v in get_clip_metrics(image_features, text_features, logit_scale=1.0).items()}
    assert retrieval_metrics(image_features, text_features, chunk_size=64) == pytest.approx(expected)
    assert 0 < expected["image_to_text_R@1"] < expected["image_to_text_R@10"] < 1


def test_retrieve_top_k_matches_sort_and_recall():
    rng = np.random.default_rng(3)
    image_features = rng.normal(size=(40, 8)).astype(np.float32)
    text_features = (image_features + rng.normal(size=(40, 8))).astype(np.float32)
    top = retrieve_top_k(image_features, text_features, k=10, chunk_size=16)
    expected = np.argsort(-(image_features @ text_features.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(top.numpy(), expected)
    metrics = retrieval_metrics(image_features, text_features)
    for k in (1, 5, 10):
        hits = (top[:, :k] == torch.arange(40)[:, None]).any(dim=1).float().mean().item()
        assert hits == pytest.approx(metrics[f"image_to_text_R@{k}"])
    t2i = retrieve_top_k(text_features, image_features, k=5)
    hits = (t2i == torch.arange(40)[:, None]).any(dim=1).float().mean().item()
    assert hits == pytest.approx(metrics["text_to_image_R@5"])


def test_retrieve_top_k_breaks_ties_in_index_order_as_numpys_stable_sort():
    rng = np.random.default_rng(5)
    queries = rng.integers(-1, 2, size=(30, 3)).astype(np.float32)  # integer dot products: many ties
    candidates = rng.integers(-1, 2, size=(50, 3)).astype(np.float32)
    expected = np.argsort(-(queries @ candidates.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(retrieve_top_k(queries, candidates, k=10, chunk_size=7).numpy(), expected)


@pytest.mark.parametrize("image_shape, text_shape, error", [
    ((3, 4), (4, 4), "paired"), ((4, 4), (3, 4), "paired"),  # rows differ, either side larger
    ((4, 3), (4, 4), "paired"), ((4, 4), (4, 3), "paired"),  # widths differ
    ((4,), (4,), "paired"), ((2, 3, 4), (2, 3, 4), "paired"),  # not [N, D]
    ((0, 4), (0, 4), "no pairs"),  # nothing to rank (torch.cat's own error would not say so)
])
def test_features_that_are_not_paired_rows_are_rejected(image_shape, text_shape, error):
    with pytest.raises(ValueError, match=error):
        retrieval_metrics(torch.ones(image_shape), torch.ones(text_shape))


def test_a_single_pair_is_retrieved_first():
    """One candidate per query: whatever the features, the positive ranks first (a hand count)."""
    metrics = retrieval_metrics(torch.tensor([[0.6, 0.8]]), torch.tensor([[1.0, 0.0]]))
    for direction in ("image_to_text", "text_to_image"):
        assert [metrics[f"{direction}_R@{k}"] for k in (1, 5, 10)] == [1.0, 1.0, 1.0]
        assert metrics[f"{direction}_mean_rank"] == metrics[f"{direction}_median_rank"] == 1.0


def test_table_shows_each_direction_in_its_row_recalls_in_percent():
    """Values written by hand, distinct in every cell, so a swapped row, column or scale shows."""
    metrics = {"image_to_text_R@1": 0.25, "image_to_text_R@5": 0.5, "image_to_text_R@10": 0.75,
               "image_to_text_mean_rank": 3.5, "image_to_text_median_rank": 2.0,
               "text_to_image_R@1": 0.125, "text_to_image_R@5": 0.375, "text_to_image_R@10": 0.625,
               "text_to_image_mean_rank": 4.5, "text_to_image_median_rank": 3.0}
    header, rule, *rows = format_retrieval_table(metrics).splitlines()
    assert header.split() == ["direction", "R@1", "(%)", "R@5", "(%)", "R@10", "(%)", "mean", "rank", "median", "rank"]
    assert set(rule) == {"-"} and len(rule) == len(header)
    assert [row.split() for row in rows] == [["image-to-text", "25.00", "50.00", "75.00", "3.5", "2"],
                                             ["text-to-image", "12.50", "37.50", "62.50", "4.5", "3"]]


# ---------------------------------------------------------------- sampling and loading

def test_sampling_reproducible_without_replacement():
    first = sample_indices(10_000, 2000, seed=0)
    assert np.array_equal(first, sample_indices(10_000, 2000, seed=0))
    assert len(first) == 2000 and len(np.unique(first)) == 2000
    assert np.all(np.diff(first) > 0) and first.min() >= 0 and first.max() < 10_000
    assert not np.array_equal(first, sample_indices(10_000, 2000, seed=1))
    assert np.array_equal(sample_indices(150, 2000, seed=0), np.arange(150))
    assert np.array_equal(sample_indices(150, None), np.arange(150))
    with pytest.raises(ValueError):
        sample_indices(10, 0)


def test_the_default_draw_is_the_papers_2000_pairs_and_the_commands_seed():
    """Uni-Mlip, "Implementation Details of Downstream Tasks": "we randomly select 2000 test image-text
    pairs"; library callers draw by default what the command draws by default (the same pairs)."""
    papers_pairs = 2000
    defaults = inspect.signature(evaluate_retrieval).parameters
    command = eval_retrieval.parse_args(["--model", "m", "--data", "d"])
    assert defaults["num_samples"].default == command.num_samples == papers_pairs
    assert defaults["seed"].default == command.seed


def test_load_pairs_from_shards_folder_and_csv(pair_data):
    from_pattern = load_pairs(pair_data["shards"])
    from_folder = load_pairs(str(pair_data["root"] / "test"))
    from_csv = load_pairs(pair_data["csv"])
    assert len(from_pattern) == len(from_csv) == NUM_PAIRS  # the two incomplete samples are skipped
    assert from_pattern == from_folder
    assert [p.key for p in from_pattern[:2]] == ["sample000000", "sample000001"]
    for shard_pair, csv_pair in zip(from_pattern, from_csv):
        assert shard_pair.caption == csv_pair.caption
        assert shard_pair.image.extension == csv_pair.image.extension
        assert shard_pair.image.read_bytes() == csv_pair.image.read_bytes()
    assert from_pattern[1].image.open().mode == "RGB"
    sampled = sample_pairs(from_pattern, NUM_SAMPLES, SEED)
    assert [p.key for p in sampled] == [from_pattern[i].key for i in sample_indices(NUM_PAIRS, NUM_SAMPLES, SEED)]


# ---------------------------------------------------------------- end to end

def test_training_checkpoint_loads_through_openclip(tiny_model):
    # open_clip_train checkpoints ({"epoch", "state_dict" with "module.", "optimizer"}) need no unwrapping of ours
    model, _, _ = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=tiny_model["checkpoint"])
    expected = tiny_model["model"].state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_evaluate_retrieval_from_shards(sampled_features, our_results):
    sampled, (image_features, text_features) = sampled_features
    assert our_results["num_available"] == NUM_PAIRS and our_results["num_pairs"] == NUM_SAMPLES
    assert our_results["keys"] == [p.key for p in sampled]
    assert our_results["metrics"] == pytest.approx(retrieval_metrics(image_features, text_features))
    json.dumps(our_results)


def test_eval_retrieval_script_on_csv(tiny_model, pair_data, our_results, tmp_path):
    output = tmp_path / "results.json"
    eval_retrieval.main([
        "--model", TINY_MODEL, "--pretrained", tiny_model["checkpoint"], "--data", pair_data["csv"],
        "--num-samples", str(NUM_SAMPLES), "--seed", str(SEED), "--batch-size", "7",
        "--model-config", tiny_model["config"], "--output", str(output),
    ])
    written = json.loads(output.read_text())
    # same pairs in the same order as the shards, so the same draw and the same numbers
    assert written["num_pairs"] == NUM_SAMPLES
    assert written["metrics"] == pytest.approx(our_results["metrics"])


def test_clip_benchmark_cli_agrees(tiny_model, pair_data, sampled_features, tmp_path, monkeypatch):
    from clip_benchmark import cli

    export_root = tmp_path / "clip_benchmark"
    export_clip_benchmark.main([
        "--data", pair_data["shards"], "--output-dir", str(export_root),
        "--num-samples", str(NUM_SAMPLES), "--seed", str(SEED), "--max-count", "8",
    ])
    assert (export_root / "dataset_type.txt").read_text().strip() == "retrieval"
    assert (export_root / "test" / "nshards.txt").read_text().strip() == "3"
    assert sorted(p.name for p in (export_root / "test").glob("*.tar")) == ["0.tar", "1.tar", "2.tar"]

    output = tmp_path / "clip_benchmark.json"
    args = clip_benchmark_eval_args(TINY_MODEL, tiny_model["checkpoint"], export_root, output=str(output))
    assert args[args.index("--recall_k") + 1:][:3] == ["1", "5", "10"]
    # Recall at every K from 1 to N pins down the whole rank distribution, not just three points
    # that a random model's near-chance numbers could match by luck.
    all_ks = [str(k) for k in range(1, NUM_SAMPLES + 1)]
    argv = ["clip_benchmark", *args, "--recall_k", *all_ks, "--num_workers", "0", "--batch_size", "8"]
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()  # in-process, so it sees the tiny config registered in this process

    theirs = from_clip_benchmark_metrics(json.loads(output.read_text())["metrics"])
    _, (image_features, text_features) = sampled_features
    ours = retrieval_metrics(image_features, text_features, recall_ks=range(1, NUM_SAMPLES + 1))
    assert len(theirs) == 2 * NUM_SAMPLES
    assert theirs == pytest.approx({name: ours[name] for name in theirs})


def test_batchnorm_statistics_reestimated_on_clean_images(tmp_path):
    """Precise BN: every BatchNorm's running mean becomes the exact mean of its inputs over the
    given images (two equal batches), and the weights are untouched."""
    from openclip_unimlip.data.stored import StoredImage
    from openclip_unimlip.evaluation.features import reestimate_batchnorm_statistics

    rng = np.random.default_rng(0)
    sources = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (120, 100, 3), dtype=np.uint8)).save(path)
        sources.append(StoredImage.from_file(str(path)))
    torch.manual_seed(0)
    tiny_model = open_clip.create_model("unimlip-tiny")
    preprocess = open_clip.image_transform(96, is_train=False)
    bn = tiny_model.visual.bn1
    bn.running_mean.fill_(5.0)
    weights = tiny_model.visual.conv1.weight.clone()
    inputs = []
    hook = bn.register_forward_hook(lambda module, args, output: inputs.append(args[0].detach()))
    reestimate_batchnorm_statistics(tiny_model.visual, preprocess, sources, batch_size=4)
    hook.remove()
    assert len(inputs) == 2
    torch.testing.assert_close(bn.running_mean, torch.cat(inputs).mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert torch.equal(tiny_model.visual.conv1.weight, weights)
