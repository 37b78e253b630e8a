"""Medical VQA fine-tuning (Uni-Mlip §4.2): VQA as classification over the training answer set.

The model has the paper's four parts:

* image encoder: the pre-trained image tower. Its output embedding becomes one image token; with
  ``use_map_tokens`` the tower's last feature map (the 7x7 layer-4 map of the ModifiedResNet at
  224 px) adds one token per cell, with a learned position embedding per cell.
* text encoder: the Hugging Face transformer of the pre-trained text tower (its pooler and
  projection are not used). The 20 learnable tokens are appended to the question's word
  embeddings, after the padded question (position ids ``context_length`` to
  ``context_length + 19``), and are encoded together with it: the question attends to them and
  they to the question. Their output states, with the question's, are the text tokens.
* fusion: ONE pre-LN transformer encoder layer (the text width, 8 heads, MLP 4x) over
  ``[fusion CLS, image tokens, question and learnable token states]``, with a learned modality
  embedding added to image and text tokens and padding masked.
* head: a two-layer MLP (width -> 2 width -> answers) on the fused CLS token; cross-entropy.

Optimisation: AdamW with the paper's two learning rates, 5e-5 for the pre-trained encoders and
5e-4 for everything initialised here (learnable tokens, projections, fusion layer, head).

Choices the paper leaves open, made here: the token layout above, AdamW's default weight decay
(0.01), dropout 0.1, 50 epochs, batches of 32, and model selection: the epoch with the best
validation overall accuracy on SLAKE; the last epoch on VQA-RAD, which has no validation split
(selecting on its test split would overstate accuracy). Test answers never seen in training stay
in the test set and count as wrong.

Two savings change no number: padding beyond the batch's longest question is not encoded (the
learnable tokens keep their position ids), and the fusion layer computes only the CLS row the head
reads (:class:`ClsFusionLayer`); both equal the full computation within float rounding (tested).
For CPU runs (ours, not the paper's): ``freeze_text`` freezes the text transformer and caches each
question's states (the learnable tokens then join the fusion input instead), and fine-tuning
without ``augment`` transforms each image once. Then the image tower's forward and backward are
most of a step (they were under a tenth of it while the text transformer ran on every question).

Rows that show what the image adds: ``blank_image`` builds the question-only model (no image
tokens in the fusion input), and :func:`majority_answer_accuracy` answers every question with its
type's most common training answer (it is told the answer type, which the model is not).
"""
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader

from openclip_unimlip.data.vqa_releases import (
    DEFAULT_VQA_RAD_SPLIT,
    AnswerSet,
    VqaDataset,
    VqaSample,
    read_vqa_split,
)
from openclip_unimlip.evaluation.finetune import (
    FitConfig,
    FitHistory,
    autocast,
    fit,
    image_transform,
    load_clip_model,
    probe_image_tower,
)

NUM_LEARNABLE_TOKENS = 20
DEFAULT_ENCODER_LR = 5e-5
DEFAULT_FUSION_LR = 5e-4
DEFAULT_EPOCHS = 50
DEFAULT_BATCH_SIZE = 32
DATASETS_WITH_VALID = ("slake",)


class ClsFusionLayer(nn.TransformerEncoderLayer):
    """A pre-LN transformer encoder layer that can compute its first (CLS) output row alone.

    The head reads only the fused CLS token and there is one fusion layer, so the other rows'
    attention queries, output projections and MLPs are never used: :meth:`forward_cls` skips them
    and gives the full layer's first row (every token still serves as key and value), at about a
    fifth of the layer's cost for VQA-RAD's ~50 tokens.
    """

    def forward_cls(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(tokens)
        attended = self.self_attn(normed[:, :1], normed, normed, key_padding_mask=key_padding_mask,
                                  need_weights=False)[0]
        cls = tokens[:, 0] + self.dropout1(attended[:, 0])
        return cls + self._ff_block(self.norm2(cls))


class VqaModel(nn.Module):
    """Image tower + text transformer with learnable tokens + one fusion layer + MLP head.

    Two options change the layout (both ours; the paper's layout has both off):

    * ``freeze_text`` (for the CPU preset): the text transformer is frozen (no gradient, kept in
      eval mode) and encodes the question alone; the learnable tokens join the fusion input after
      the question states instead (text modality embedding), since inside a frozen encoder they
      could shape nothing. The question states then depend on the question only, so each distinct
      question is encoded once and cached (``question_cache``; ``None`` encodes every batch afresh).
    * ``blank_image`` (the question-only baseline): the fusion input has no image tokens and the
      image tower is not run, so the answer depends on the question alone. Leaving the tokens out
      rather than zeroing them keeps the model from learning constant stand-in tokens.
    """

    def __init__(
            self,
            image_tower: nn.Module,
            text_transformer: nn.Module,
            pad_token_id: int,
            num_answers: int,
            image_embed_dim: int,
            feature_map: Optional[tuple[int, int]] = None,
            num_learnable_tokens: int = NUM_LEARNABLE_TOKENS,
            fusion_heads: int = 8,
            dropout: float = 0.1,
            freeze_text: bool = False,
            blank_image: bool = False,
    ):
        super().__init__()
        width = text_transformer.config.hidden_size
        if width % fusion_heads:
            raise ValueError(f"the text width {width} is not divisible by {fusion_heads} fusion heads")
        self.image_tower = image_tower
        self.text_transformer = text_transformer
        self.pad_token_id = pad_token_id
        self.freeze_text = freeze_text
        self.blank_image = blank_image
        self.question_cache: Optional[dict[tuple[int, ...], torch.Tensor]] = {} if freeze_text else None
        text_transformer.requires_grad_(not freeze_text)
        image_tower.requires_grad_(not blank_image)  # never run: nothing to train
        self.learnable_tokens = nn.Parameter(torch.randn(num_learnable_tokens, width) * 0.02)  # ours: BERT's init
        self.image_embedding_proj = nn.Linear(image_embed_dim, width)
        # feature_map: (channels, cells) of the tower's last feature map, whose cells join the fusion
        # input as tokens, each with a learned position; None: the image embedding alone
        self.map_proj = self.map_position = None
        if feature_map is not None:
            channels, cells = feature_map
            self.map_proj = nn.Linear(channels, width)
            self.map_position = nn.Parameter(torch.randn(cells, width) * 0.02)  # ours: BERT's init, as above
        self.modality_embedding = nn.Embedding(2, width)  # 0: image token, 1: text token
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.fusion = ClsFusionLayer(
            width, fusion_heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True)
        self.fusion_norm = nn.LayerNorm(width)  # pre-LN layers leave their output unnormalised
        self.head = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * width, num_answers))

    def train(self, mode: bool = True) -> "VqaModel":
        super().train(mode)
        if self.freeze_text:
            self.text_transformer.eval()  # no dropout: a frozen encoder's states must not vary per call
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.question_cache:
            self.question_cache.clear()  # the states were those of the text weights being replaced
        return super().load_state_dict(state_dict, strict, assign)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The pre-trained parameters (the smaller learning rate's group)."""
        return [*self.image_tower.parameters(), *self.text_transformer.parameters()]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if self.map_proj is None:
            return self.image_embedding_proj(self.image_tower(images)).unsqueeze(1)
        features = self.image_tower.forward_intermediates(images, indices=1)
        embedding = self.image_embedding_proj(features["image_features"]).unsqueeze(1)
        cells = features["image_intermediates"][-1].flatten(2).transpose(1, 2)  # NCHW -> N(HW)C
        return torch.cat([embedding, self.map_proj(cells) + self.map_position], dim=1)

    def _text_states(
            self,
            token_ids: torch.Tensor,
            learnable: Optional[torch.Tensor] = None,
            context_length: int = 0,
    ) -> torch.Tensor:
        """The text transformer's states of ``token_ids``, followed by those of ``learnable`` at
        position ids ``context_length`` on (after the tokenizer's full context, however much of the
        question's padding was trimmed)."""
        is_padding = token_ids == self.pad_token_id
        embeddings = self.text_transformer.get_input_embeddings()(token_ids)
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        if learnable is not None:
            is_padding = torch.cat([is_padding, is_padding.new_zeros(learnable.shape[:2])], dim=1)
            embeddings = torch.cat([embeddings, learnable], dim=1)
            positions = torch.cat([positions, torch.arange(context_length, context_length + learnable.shape[1],
                                                           device=token_ids.device)])
        return self.text_transformer(inputs_embeds=embeddings, attention_mask=(~is_padding).long(),
                                     position_ids=positions.expand(len(token_ids), -1)).last_hidden_state

    def _frozen_question_states(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The frozen layout's question states, each distinct question encoded once when cached."""
        with torch.no_grad():
            if self.question_cache is None:
                return self._text_states(token_ids)
            lengths = (token_ids != self.pad_token_id).sum(dim=1).tolist()
            keys = [tuple(row[:length].tolist()) for row, length in zip(token_ids, lengths, strict=True)]
            missing = [i for i, key in enumerate(keys) if key not in self.question_cache]
            if missing:  # the batch's new questions in one pass; each state kept at its question's length
                states = self._text_states(token_ids[missing])
                for i, row_states in zip(missing, states, strict=True):
                    self.question_cache[keys[i]] = row_states[:lengths[i]].clone()
            # as long as the longest question: encode_question has trimmed the all-padding columns
            return nn.utils.rnn.pad_sequence([self.question_cache[key] for key in keys], batch_first=True)

    def encode_question(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states of the question followed by the learnable tokens, and their padding mask.

        Token columns that are padding in every question of the batch are dropped first: padding
        is masked and the learnable tokens keep their position ids, so the states of the real
        tokens are those of the full padded batch, at a fraction of the cost (VQA-RAD's questions
        average 12 of the tokenizer's 32 tokens).
        """
        context_length = token_ids.shape[1]
        token_ids = token_ids[:, :int((token_ids != self.pad_token_id).any(dim=0).nonzero().max()) + 1]
        learnable = self.learnable_tokens.expand(len(token_ids), -1, -1)
        learnable_padding = torch.zeros(learnable.shape[:2], dtype=torch.bool, device=token_ids.device)
        is_padding = torch.cat([token_ids == self.pad_token_id, learnable_padding], dim=1)
        if self.freeze_text:
            states = torch.cat([self._frozen_question_states(token_ids), learnable], dim=1)
        else:
            states = self._text_states(token_ids, learnable, context_length)
        return states, is_padding

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        text_tokens, text_padding = self.encode_question(token_ids)
        tokens = [self.cls_token.expand(len(token_ids), -1, -1)]
        if not self.blank_image:
            tokens.append(self.encode_image(images) + self.modality_embedding.weight[0])
        tokens.append(text_tokens + self.modality_embedding.weight[1])
        tokens = torch.cat(tokens, dim=1)
        unpadded = text_padding.new_zeros((len(token_ids), tokens.shape[1] - text_tokens.shape[1]))
        fused = self.fusion.forward_cls(tokens, torch.cat([unpadded, text_padding], dim=1))
        return self.head(self.fusion_norm(fused))


def build_vqa_model(
        model_name: str,
        pretrained: Optional[str],
        num_answers: int,
        image_size: Optional[int] = None,
        use_map_tokens: bool = True,
        num_learnable_tokens: int = NUM_LEARNABLE_TOKENS,
        pretrained_text: bool = True,
        freeze_text: bool = False,
        blank_image: bool = False,
) -> tuple[VqaModel, dict, Callable[[list[str]], torch.Tensor]]:
    """A :class:`VqaModel` initialised from a pre-trained OpenCLIP model, its preprocess config and tokenizer.

    Without ``pretrained``, ``pretrained_text`` says whether the text tower starts from its base
    (Hugging Face) weights or, like the image tower, at random. ``freeze_text`` and ``blank_image``:
    see :class:`VqaModel`.
    """
    clip_model, preprocess_cfg = load_clip_model(model_name, pretrained, image_size, pretrained_text)
    text_tower = clip_model.text
    if not (hasattr(text_tower, "transformer") and hasattr(text_tower, "config")):
        raise ValueError(
            f"VQA fine-tuning needs a Hugging Face text tower; {model_name} has {type(text_tower).__name__}")
    tokenizer = open_clip.get_tokenizer(model_name)
    positions = tokenizer.context_length + num_learnable_tokens
    if positions > text_tower.config.max_position_embeddings:
        raise ValueError(
            f"{tokenizer.context_length} question tokens + {num_learnable_tokens} learnable tokens exceed the "
            f"text encoder's {text_tower.config.max_position_embeddings} positions")
    embed_dim, (_, map_channels, map_height, map_width) = probe_image_tower(clip_model.visual, preprocess_cfg["size"])
    model = VqaModel(
        clip_model.visual,
        text_tower.transformer,
        text_tower.config.pad_token_id,
        num_answers,
        embed_dim,
        (map_channels, map_height * map_width) if use_map_tokens else None,
        num_learnable_tokens,
        freeze_text=freeze_text,
        blank_image=blank_image,
    )
    return model, preprocess_cfg, tokenizer


def parameter_groups(model: VqaModel, encoder_lr: float, fusion_lr: float) -> list[dict]:
    """The pre-trained encoders at ``encoder_lr``; everything new at ``fusion_lr``; frozen parameters
    (``freeze_text``) in neither."""
    encoder_ids = {id(p) for p in model.encoder_parameters()}
    trained = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trained if id(p) in encoder_ids], "lr": encoder_lr},
        {"params": [p for p in trained if id(p) not in encoder_ids], "lr": fusion_lr},
    ]


@dataclass
class VqaAccuracy:
    open: Optional[float]  # None when the split has no question of that type
    closed: Optional[float]
    overall: float
    open_questions: int
    closed_questions: int


def vqa_accuracy(predictions: np.ndarray, targets: np.ndarray, is_closed: np.ndarray) -> VqaAccuracy:
    """Exact-match accuracy over open, closed and all questions (a target of -1 is never matched)."""
    correct = (predictions == targets) & (targets >= 0)
    is_closed = is_closed.astype(bool)

    def mean(mask: np.ndarray) -> Optional[float]:
        return float(correct[mask].mean()) if mask.any() else None

    return VqaAccuracy(mean(~is_closed), mean(is_closed), float(correct.mean()),
                       int((~is_closed).sum()), int(is_closed.sum()))


def majority_answer_accuracy(train: Sequence[VqaSample], test: Sequence[VqaSample]) -> VqaAccuracy:
    """Accuracy on ``test`` of answering every question with the training split's most common
    answer of its type (closed or open; ties to the alphabetically first answer).

    A floor that knows more than the model is told: each question's answer type (the model
    answers over all training answers and must tell closed from open questions itself).
    """
    majority = {}
    for answer_type in {sample.answer_type for sample in train}:
        counts = Counter(sample.answer for sample in train if sample.answer_type == answer_type)
        majority[answer_type] = min(counts, key=lambda answer: (-counts[answer], answer))
    classes = {answer: j for j, answer in enumerate(sorted({s.answer for s in [*train, *test]}))}
    predictions = np.array([classes.get(majority.get(s.answer_type), -1) for s in test], dtype=np.int64)
    targets = np.array([classes[s.answer] for s in test], dtype=np.int64)
    return vqa_accuracy(predictions, targets, np.array([s.is_closed for s in test]))


@torch.no_grad()
def predict_answers(
        model: VqaModel,
        loader: DataLoader,
        device: torch.device,
        precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted classes, target classes, is-closed flags) over a loader of :class:`VqaDataset`."""
    model.eval()
    predictions, targets, closed = [], [], []
    for images, token_ids, answers, is_closed in loader:
        with autocast(device, precision):
            logits = model(images.to(device, non_blocking=True), token_ids.to(device, non_blocking=True))
        predictions.append(logits.argmax(dim=-1).cpu())
        targets.append(answers)
        closed.append(is_closed)
    return torch.cat(predictions).numpy(), torch.cat(targets).numpy(), torch.cat(closed).numpy()


@dataclass(frozen=True)
class VqaData:
    train: list[VqaSample]
    valid: Optional[list[VqaSample]]  # None for VQA-RAD
    test: list[VqaSample]
    answers: AnswerSet


def load_vqa_data(
        dataset: str,
        root: Union[str, Path],
        language: Optional[str] = "en",
        limit: Optional[int] = None,
        vqa_rad_split: str = DEFAULT_VQA_RAD_SPLIT,
) -> VqaData:
    """Read and check the splits and build the answer set; ``limit`` keeps the first questions of
    each; ``vqa_rad_split`` is VQA-RAD's training set (``data.vqa_releases``)."""
    def read(split: str) -> list[VqaSample]:
        samples = read_vqa_split(dataset, root, split, language, vqa_rad_split=vqa_rad_split)[:limit]
        if not samples:
            raise ValueError(f"the {split} split of {dataset} has no questions")
        return samples

    train = read_vqa_split(dataset, root, "train", language, vqa_rad_split=vqa_rad_split)[:limit]
    answers = AnswerSet.from_samples(train)  # no training question: the answer set is empty
    valid = read("valid") if dataset in DATASETS_WITH_VALID else None
    return VqaData(train, valid, read("test"), answers)


@dataclass
class VqaResult:
    history: FitHistory
    valid: Optional[VqaAccuracy]
    test: VqaAccuracy
    test_unseen_answers: int  # test questions whose answer is not in the answer set

    def summary(self) -> dict:
        return {
            "best_epoch": self.history.best_epoch,
            "epochs_run": len(self.history.epochs),
            "history": [asdict(record) for record in self.history.epochs],
            "valid": asdict(self.valid) if self.valid else None,
            "test": asdict(self.test),
            "test_unseen_answers": self.test_unseen_answers,
        }


def fine_tune_vqa(
        model: VqaModel,
        preprocess_cfg: dict,
        tokenizer: Callable[[list[str]], torch.Tensor],
        data: VqaData,
        batch_size: int = DEFAULT_BATCH_SIZE,
        encoder_lr: float = DEFAULT_ENCODER_LR,
        fusion_lr: float = DEFAULT_FUSION_LR,
        fit_config: Optional[FitConfig] = None,
        seed: int = 0,
        workers: int = 0,
        device: Union[str, torch.device] = "cpu",
        progress: bool = True,
        augment: bool = True,
) -> VqaResult:
    """Fine-tune ``model`` on ``data.train`` and report open/closed/overall accuracy on the test split.

    Without ``augment`` (ours, for the CPU preset) training sees the test transform, so every
    image is transformed once (``VqaDataset``'s ``cache_images``) instead of once per question and epoch.
    """
    fit_config = fit_config or FitConfig(max_epochs=DEFAULT_EPOCHS)
    device = torch.device(device)
    model.to(device)

    def loader(samples: Sequence[VqaSample], is_train: bool) -> DataLoader:
        transform = image_transform(preprocess_cfg, is_train and augment)
        return DataLoader(
            VqaDataset(samples, data.answers, transform, tokenizer, cache_images=not augment),
            batch_size=batch_size,
            shuffle=is_train,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(seed) if is_train else None,
        )

    def evaluate(samples: Sequence[VqaSample]) -> VqaAccuracy:
        return vqa_accuracy(*predict_answers(model, loader(samples, is_train=False), device, fit_config.precision))

    def validation_accuracy(_: nn.Module) -> float:
        return evaluate(data.valid).overall

    def cross_entropy(
            model: VqaModel,
            images: torch.Tensor,
            token_ids: torch.Tensor,
            answers: torch.Tensor,
            _is_closed: torch.Tensor,
    ) -> torch.Tensor:
        return F.cross_entropy(model(images, token_ids).float(), answers)

    optimizer = torch.optim.AdamW(parameter_groups(model, encoder_lr, fusion_lr))
    history = fit(model, optimizer, loader(data.train, is_train=True), cross_entropy, fit_config, device,
                  validate=validation_accuracy if data.valid is not None else None, progress=progress)
    return VqaResult(
        history,
        evaluate(data.valid) if data.valid is not None else None,
        evaluate(data.test),
        sum(data.answers.index(sample.answer) < 0 for sample in data.test),
    )


def plot_accuracy_by_type(accuracy: VqaAccuracy, path: Union[str, Path], title: str = "") -> None:
    """Bar chart of open, closed and overall accuracy (Agg backend)."""
    names = ["open", "closed", "overall"]
    values = [accuracy.open, accuracy.closed, accuracy.overall]
    counts = [accuracy.open_questions, accuracy.closed_questions, accuracy.open_questions + accuracy.closed_questions]
    figure = Figure(figsize=(5, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bars = axes.bar(names, [100 * (v or 0.0) for v in values], color=["tab:orange", "tab:blue", "tab:green"])
    axes.bar_label(bars, labels=[f"{100 * v:.1f}% (n={n})" if v is not None else f"n/a (n={n})"
                                 for v, n in zip(values, counts, strict=True)])
    axes.set_ylim(0, 110)
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title)
    figure.savefig(path, dpi=120, bbox_inches="tight")
