"""Split discipline in the studies (issue 34): the demo and the ablation score the split their
reports name, precise BN is re-estimated on the train split alone, and stage 1's val curve (what
the plateau rule reads) comes from the dev split alone.

Every study runs on a made-up MedPix 2.0 release through the real conversion
(``experiment.ensure_medpix_data``), three times: as made, with the test split's images and
captions replaced, and with the dev split's replaced (same image ids, so only content differs).
Only training is taken away: the ablation's row is ``untrained`` (it trains nothing), the demo's
run is stood in for by the weights drawn under another seed, stage 1's trainer by a function
that reads the ``--val-data`` of the real ``pretrain_command``. Each reported number is then
scored again here (a forward pass and ranks written here) on the test images of the release.
"""
import copy
import json
import re
from pathlib import Path
from typing import Optional

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from openclip_unimlip.data.stored import load_pairs
from openclip_unimlip.evaluation.features import reestimate_batchnorm_statistics
from openclip_unimlip.studies import ablation, demo, experiment
from openclip_unimlip.studies.experiment import MedpixConfig, PretrainConfig, PretrainRun

# conftest's one_thread: small tensor work on 2 shared cores
pytestmark = pytest.mark.usefixtures("one_thread", "models_drawn_once", "no_figures")

MODEL = "unimlip-tiny"
# case -> number of images; no case is one of VQA_RAD_CASES, so pretraining keeps all of train
CASES = {"train": {"MPX3001": 4, "MPX3002": 4, "MPX3003": 4}, "dev": {"MPX3101": 3, "MPX3102": 3},
         "test": {"MPX3201": 3, "MPX3202": 3, "MPX3203": 2}}
ORGANS = ("liver", "brain", "lung", "kidney", "spleen", "heart")
FINDINGS = ("small round", "large oval", "irregular", "cystic", "calcified", "enhancing")


_MODELS = {}


@pytest.fixture
def models_drawn_once(monkeypatch):
    """open_clip's factory with each (model, seed) built once and copied after: the studies build
    the same two models (seeds 0 and 1) again and again, and building them is most of their time."""
    create = open_clip.create_model_and_transforms

    def cached(model_name, pretrained=None, **options):
        assert pretrained is None, "no test here loads weights"
        key = (model_name, torch.initial_seed(), tuple(sorted(options.items())))
        if key not in _MODELS:
            _MODELS[key] = create(model_name, **options)
        return copy.deepcopy(_MODELS[key])

    monkeypatch.setattr(open_clip, "create_model_and_transforms", cached)


@pytest.fixture
def no_figures(monkeypatch):
    """The reports' figures left out (matplotlib's drawing is the rest of the time); the split the
    demo's recall figure would be titled with is kept in the list this fixture returns."""
    titled = []

    def recall(before, after, path, split="val"):
        titled.append(split)
        return path

    monkeypatch.setattr(demo, "plot_recall", recall)
    monkeypatch.setattr(demo, "plot_losses", lambda steps, path: path)
    monkeypatch.setattr(demo, "plot_retrieval_examples", lambda result, path, **options: path)
    monkeypatch.setattr(ablation, "plot_summary", lambda summary, path: path)
    return titled


def _image_ids(split: str) -> list:
    return [f"{case}_synpic{case[3:]}{k}" for case, count in CASES[split].items() for k in range(count)]


def _release(root: Path, replaced: Optional[str] = None) -> Path:
    """A made-up MedPix 2.0 release (smooth random 96 px pictures, captions of random words); the
    ``replaced`` split has the same ids with other pictures and other captions."""
    (root / "splitted_dataset").mkdir(parents=True)
    (root / "images").mkdir()
    for index, split in enumerate(CASES):
        rng = np.random.default_rng([index, split == replaced])
        lines = []
        for number, image_id in enumerate(_image_ids(split)):
            small = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
            Image.fromarray(small).resize((96, 96), Image.BICUBIC).save(root / "images" / f"{image_id}.png")
            caption = (f"{'Coronal' if split == replaced else 'Axial'} image {number} of the {rng.choice(ORGANS)} "
                       f"with a {rng.choice(FINDINGS)} lesion")
            lines.append(json.dumps({
                "Type": "CT", "U_id": image_id.split("_")[0], "image": image_id, "Location": "Abdomen",
                "Location Category": "Abdomen",
                "Description": {"Caption": caption, "Modality": "CT", "Plane": "Axial", "Age": None, "Sex": None,
                                "ACR Codes": None, "Figure Part": None}}))
        (root / "splitted_dataset" / f"descriptions_{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _variants(tmp_path: Path) -> dict:
    """MedpixConfig per variant: ``as_made``, ``test_replaced``, ``dev_replaced``."""
    return {name: MedpixConfig(root=str(tmp_path / name / "cache"),
                               release=str(_release(tmp_path / name / "release", replaced)))
            for name, replaced in (("as_made", None), ("test_replaced", "test"), ("dev_replaced", "dev"))}


def _test_images(config: MedpixConfig) -> tuple:
    """The test split as the release holds it: image files and captions, file order."""
    release = Path(config.release)
    records = [json.loads(line) for line in (release / "splitted_dataset" / "descriptions_test.jsonl").open()]
    return ([release / "images" / f"{r['image']}.png" for r in records],
            [r["Description"]["Caption"] for r in records])


def _retrieval_by_hand(init_seed: int, images, captions, buffers: Optional[dict] = None) -> dict:
    """R@K and mean rank of the model drawn under ``init_seed`` (with ``buffers`` loaded), on
    ``images``/``captions``: a forward pass and ranks written here (ties count against)."""
    torch.manual_seed(init_seed)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL)
    if buffers is not None:
        model.load_state_dict(buffers, strict=False)
    model.eval()
    with torch.no_grad():
        image_features = model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images]))
        text_features = model.encode_text(open_clip.get_tokenizer(MODEL)(list(captions)))
    similarity = (torch.nn.functional.normalize(image_features, dim=-1)
                  @ torch.nn.functional.normalize(text_features, dim=-1).T)
    positives = similarity.diagonal()
    metrics = {}
    for direction, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        ranks = (scores >= positives[:, None]).sum(dim=1).double()
        metrics |= {f"{direction}_R@{k}": (ranks <= k).double().mean().item() for k in (1, 5, 10)}
        metrics[f"{direction}_mean_rank"] = ranks.mean().item()
    return metrics


def _reported(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.endswith(("R@1", "R@5", "R@10", "mean_rank"))}


def _recording_buffers(monkeypatch) -> list:
    """(BatchNorm buffers, captions) of every model ``evaluate_checkpoint`` scores, as it scores it."""
    seen = []
    encode_pairs = experiment.encode_pairs

    def recording(model, preprocess, tokenizer, pairs, **options):
        seen.append(({k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k},
                     [p.caption for p in pairs]))
        return encode_pairs(model, preprocess, tokenizer, pairs, **options)

    monkeypatch.setattr(experiment, "encode_pairs", recording)
    return seen


# ----------------------------------------------------------------------------- ablation, precise BN
def test_ablation_scores_the_test_split_it_names_with_bn_from_train_images(tmp_path, monkeypatch):
    seen = _recording_buffers(monkeypatch)
    variants, outputs = _variants(tmp_path), {}
    for name, data in variants.items():
        config = ablation.AblationConfig(data=data, pretrain=PretrainConfig(), out=tmp_path / name / "out",
                                         stage1_epochs=None, seeds=(0,), rows=("untrained",))
        ablation.run_grid(config)
        outputs[name] = json.loads((config.out / "ablation.json").read_text())
        outputs[name]["markdown"] = (config.out / "ablation.md").read_text()
    # per variant: as trained, then precise BN (evaluation order of ablation._evaluations)
    (_, as_made_bn), (_, test_replaced_bn), (_, dev_replaced_bn) = (seen[i:i + 2] for i in (0, 2, 4))
    assert len(seen) == 6

    # precise BN: the same statistics whatever the test or the dev split holds ...
    for other in (test_replaced_bn, dev_replaced_bn):
        assert as_made_bn[0].keys() == other[0].keys() and any("visual." in k for k in other[0])
        assert all(torch.equal(as_made_bn[0][k], other[0][k]) for k in other[0])
    # ... namely those of the train split's images, re-estimated here
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL)
    train = load_pairs(str(tmp_path / "as_made" / "cache" / "pretrain" / "train"))
    assert sorted(p.key for p in train) == sorted(_image_ids("train"))
    # one batch of them all, as the study's own batch holds them
    reestimate_batchnorm_statistics(model.visual, preprocess, [p.image for p in train], batch_size=len(train))
    expected = model.state_dict()
    assert all(torch.allclose(expected[k].double(), v.double(), rtol=1e-5, atol=1e-6) for k, v in as_made_bn[0].items())

    # only the test split moves the reported numbers
    runs = {name: output["runs"][0]["evaluations"] for name, output in outputs.items()}
    assert runs["dev_replaced"] == runs["as_made"]
    assert outputs["dev_replaced"]["summary"] == outputs["as_made"]["summary"]
    for evaluation in ablation.EVALUATIONS:
        assert runs["test_replaced"][evaluation]["ranks"] != runs["as_made"][evaluation]["ranks"]

    # the reported numbers are the test split's, scored here with the buffers each was scored with
    images, captions = _test_images(variants["as_made"])
    assert sorted(as_made_bn[1]) == sorted(captions)  # the scored captions: the test split's, in shard order
    for evaluation, buffers in (("as_trained", None), ("bn_reestimated", as_made_bn[0])):
        assert _reported(runs["as_made"][evaluation]["metrics"]) == pytest.approx(
            _retrieval_by_hand(0, images, captions, buffers), abs=1e-9)
    # and the report calls them test pairs
    assert outputs["as_made"]["settings"]["eval_split"] == "test"
    assert "scored on the test pairs" in outputs["as_made"]["markdown"]
    header, tables = outputs["as_made"]["markdown"].split("\n\n", 1)
    assert "retrieval on the 8 test images" in header and not re.search(r"\bval\b", tables)


# ----------------------------------------------------------------------------- demo
def test_demo_reports_the_test_split_it_scored(tmp_path, monkeypatch, no_figures):
    commands = []

    def no_training(pretrain, data, logs, name, with_val=True, progress=True):
        commands.append(experiment.pretrain_command(pretrain, data, logs, name, with_val=with_val))
        run_dir = Path(logs) / name
        return PretrainRun(name=name, run_dir=run_dir, checkpoint=run_dir / "checkpoints" / "epoch_1.pt", seconds=0.0,
                           steps=[{"step": 1, "loss": 2.0, "itc_loss": 2.0}], val_metrics=[])

    evaluate_checkpoint = demo.evaluate_checkpoint

    def trained_stand_in(model_name, checkpoint, data, **options):
        # "trained": the weights drawn under seed 1 (the untrained model is seed 0's)
        return evaluate_checkpoint(model_name, None, data, **{**options, "init_seed": 1 if checkpoint else 0})

    monkeypatch.setattr(demo, "run_pretraining", no_training)
    monkeypatch.setattr(demo, "evaluate_checkpoint", trained_stand_in)
    variants, results, reports = _variants(tmp_path), {}, {}
    for name, data in variants.items():
        out = tmp_path / name / "demo"
        demo.run_demo(demo.DemoConfig(data=data, pretrain=PretrainConfig(epochs=1), out=out))
        results[name] = json.loads((out / "results.json").read_text())
        reports[name] = (out / "report.md").read_text()

    as_made = results["as_made"]
    assert as_made["eval_split"] == "test"
    assert "Retrieval on 8 held-out test image-caption pairs" in reports["as_made"]
    assert no_figures == ["test"] * 3  # the recall figure's title, per variant
    # the dev split reaches training's val pass only; the test split reaches nothing but the scoring
    command = commands[0]
    assert command[command.index("--val-data") + 1] == as_made["val_data"]
    assert command[command.index("--train-data") + 1] == as_made["train_data"]
    assert as_made["eval_data"] not in command
    assert sorted(p.key for p in load_pairs(as_made["val_data"])) == sorted(_image_ids("dev"))
    assert sorted(p.key for p in load_pairs(as_made["eval_data"])) == sorted(_image_ids("test"))
    # only the test split moves the reported numbers
    for stage in ("before", "after"):
        assert results["dev_replaced"][stage] == as_made[stage]
        assert results["test_replaced"][stage]["metrics"] != as_made[stage]["metrics"]
    # and they are the test split's, scored here
    images, captions = _test_images(variants["as_made"])
    for stage, seed in (("before", 0), ("after", 1)):
        assert _reported(as_made[stage]["metrics"]) == pytest.approx(
            _retrieval_by_hand(seed, images, captions), abs=1e-9)


# ----------------------------------------------------------------------------- ablation's stage 1
def test_stage1_val_curve_and_plateau_read_the_dev_split_alone(tmp_path, monkeypatch):
    commands = []

    def val_passes_only(pretrain, data, logs, name, with_val=True, progress=True):
        """open_clip_train stood in for by its val pass: per epoch, retrieval numbers made from the
        ``--val-data`` the real command names (the mean brightness of its images)."""
        command = experiment.pretrain_command(pretrain, data, logs, name, with_val=with_val)
        commands.append(command)
        val_pairs = load_pairs(command[command.index("--val-data") + 1])
        level = np.mean([np.asarray(p.image.open()).mean() for p in val_pairs])
        val_metrics = [{"epoch": epoch, **{f"{direction}_{metric}": value
                                          for direction in ("image_to_text", "text_to_image")
                                          for metric, value in (("R@1", level / 255 / epoch), ("R@10", level / 255),
                                                                ("mean_rank", 1 + level / 10))}}
                       for epoch in range(1, pretrain.epochs + 1)]
        checkpoint = Path(logs) / name / "checkpoints" / f"epoch_{pretrain.epochs}.pt"
        checkpoint.parent.mkdir(parents=True)
        torch.save({"state_dict": {"module.weight": torch.zeros(1)}}, checkpoint)
        return PretrainRun(name=name, run_dir=checkpoint.parent.parent, checkpoint=checkpoint, seconds=0.0,
                           steps=[{"step": 1, "loss": 1.0}], val_metrics=val_metrics)

    monkeypatch.setattr(ablation, "run_pretraining", val_passes_only)
    records, evaluations = {}, {}
    for name, data in _variants(tmp_path).items():
        config = ablation.AblationConfig(data=data, pretrain=PretrainConfig(), out=tmp_path / name / "out",
                                         stage1_epochs=4, seeds=(0,), rows=("untrained",))
        experiment_data = experiment.ensure_data(data)
        records[name] = ablation.ensure_stage1(config, experiment_data)
        evaluations[name] = experiment_data.eval_data
        assert evaluations[name] not in commands[-1]
    curve = records["as_made"]["curve"]
    assert [p["epoch"] for p in curve] == [1, 2, 3, 4]
    assert records["test_replaced"]["curve"] == curve
    assert records["dev_replaced"]["curve"] != curve
    for record in records.values():
        assert record["plateaued"] == ablation.has_plateaued(record["curve"])


def test_the_ablation_tables_name_the_split_they_compare_on():
    def record(row, ranks):
        scored = {"metrics": {f"{d}_{m}": v for d in ("image_to_text", "text_to_image")
                              for m, v in (("R@1", np.mean(np.array(ranks) <= 1)), ("R@10", 1.0),
                                           ("mean_rank", float(np.mean(ranks))))},
                  "ranks": {"image_to_text": ranks, "text_to_image": ranks}}
        return {"row": row, "seed": 0, "evaluations": {e: scored for e in ablation.EVALUATIONS}, "train_seconds": 0.0}

    summary = ablation.summarize([record("itc_mlm", [1, 2, 3]), record("clip", [1, 1, 3])], ["itc_mlm", "clip"],
                                 num_resamples=50)
    table = ablation.format_tables(summary, eval_split="test")
    assert "**Row − baseline, every metric**: paired difference over the common seeds and the test pairs" in table
    assert table.count("scored on the test pairs") == 2 * 3  # Tables 3, 4 and the reference rows, per evaluation
    assert not re.search(r"\bval\b", table)
