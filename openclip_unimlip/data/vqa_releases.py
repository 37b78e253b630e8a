"""Medical VQA datasets in their released layouts: VQA-RAD and SLAKE.

Readers return one split as a list of :class:`VqaSample` with normalised answers and check that
every image exists, so that bad inputs fail before any training starts.

Split conventions (``"train"``, ``"valid"``, ``"test"``):

* VQA-RAD (``VQA_RAD Dataset Public.json``, images in ``VQA_RAD Image Folder/``): ``test`` is
  the 451 questions whose ``phrase_type`` is ``test_freeform`` (308) or ``test_para`` (143; 272
  closed, 179 open, 203 images). Two training sets (``vqa_rad_split``):

  - ``"standard"`` (the default): the split of MEVF's ``trainset.json`` (Nguyen et al., MICCAI
    2019), which the VQA-RAD rows of Uni-Mlip's Table 2 use (its 3,515 questions, sec. 4.1, are
    3,064 + 451): the 1,797 ``freeform`` and ``para`` questions plus the 1,267 ``question_frame``
    fields that are not ``"NULL"`` (the release writes a missing frame as that string), each with
    its row's image, answer and answer type, in the release's order (a row's question, then its
    frame). Every row's frame is taken, so 284 frames come from test rows (165 ``test_freeform``,
    119 ``test_para``): the split's known leak, a template of a test question with its test answer
    in training. It drops the test answers never seen in training from 115 to 47. Built this way
    it equals MEVF's file on every (image, question, answer) triple and in order (lower-cased,
    whitespace collapsed; checked against the copy in the public repository longle0702/med-v2qa,
    ``data_RAD/trainset.json``, commit 727f26a3b05affd9e0e0cea56443a7efce956984).
  - ``"no-frames"``: the 1,797 ``freeform`` and ``para`` questions only (1,027 closed, 770 open,
    313 images), no frame of a test question in training.

  Counted against the plain JSON in ``tests/data/test_vqa_rad_release.py``. VQA-RAD has no
  validation split, so ``valid`` is refused.
* SLAKE (``train.json``, ``validate.json``, ``test.json``, images under ``imgs/``): the official
  files, ``validate`` being our ``valid``; by default only English questions (``q_lang == "en"``).

Closed questions are those whose ``answer_type`` field is ``CLOSED`` (yes/no and choice
questions), open ones ``OPEN``; the field is stripped and upper-cased, as VQA-RAD's is not
uniformly formatted.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from PIL import Image
from torch.utils.data import Dataset

from openclip_unimlip.data.images import load_image

VQA_DATASETS = ("vqa-rad", "slake")
SPLITS = ("train", "valid", "test")
ANSWER_TYPES = ("OPEN", "CLOSED")
VQA_RAD_JSON = "VQA_RAD Dataset Public.json"
VQA_RAD_IMAGE_DIR = "VQA_RAD Image Folder"
VQA_RAD_TEST_PHRASE_TYPES = ("test_freeform", "test_para")
VQA_RAD_SPLITS = ("standard", "no-frames")  # training sets, see the module docstring
DEFAULT_VQA_RAD_SPLIT = "standard"  # the split of Table 2's VQA-RAD rows
VQA_RAD_NO_FRAME = "NULL"  # how the release writes a row without a question frame
SLAKE_FILES = {"train": "train.json", "valid": "validate.json", "test": "test.json"}

PathLike = Union[str, Path]


@dataclass(frozen=True)
class VqaSample:
    image_path: Path
    question: str
    answer: str  # normalised, see normalize_answer
    answer_type: str  # "OPEN" or "CLOSED"

    @property
    def is_closed(self) -> bool:
        return self.answer_type == "CLOSED"


def normalize_answer(answer: object) -> str:
    """Lower-case, single-spaced, without a trailing full stop (VQA-RAD also stores numbers)."""
    return " ".join(str(answer).lower().split()).rstrip(".").strip()


def _check_split(split: str, allowed: Sequence[str], dataset: str) -> None:
    if split not in allowed:
        raise ValueError(f"unknown split {split!r} for {dataset}; expected one of {', '.join(map(repr, allowed))}")


def _read_json(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"missing dataset file {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def _sample(image_path: Path, record: dict) -> VqaSample:
    answer_type = str(record["answer_type"]).strip().upper()
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"unknown answer_type {record['answer_type']!r} for question {record['question']!r}")
    return VqaSample(image_path, str(record["question"]).strip(), normalize_answer(record["answer"]), answer_type)


def _check_images_exist(samples: Sequence[VqaSample]) -> None:
    missing = sorted({str(s.image_path) for s in samples if not s.image_path.is_file()})
    if missing:
        raise FileNotFoundError(f"{len(missing)} image file(s) missing, e.g. {', '.join(missing[:5])}")


def read_vqa_rad(
        root: PathLike,
        split: str,
        check_files: bool = True,
        vqa_rad_split: str = DEFAULT_VQA_RAD_SPLIT,
) -> list[VqaSample]:
    """Read a VQA-RAD split (``"train"`` or ``"test"``) from the released folder ``root``;
    ``vqa_rad_split`` chooses the training set (``"standard"`` or ``"no-frames"``; the test split is
    the same in both)."""
    _check_split(split, ("train", "test"), "VQA-RAD (it has no validation split)")
    if vqa_rad_split not in VQA_RAD_SPLITS:
        raise ValueError(f"unknown VQA-RAD split {vqa_rad_split!r}; expected one of {VQA_RAD_SPLITS}")
    root = Path(root)
    samples = []
    for record in _read_json(root / VQA_RAD_JSON):
        image = root / VQA_RAD_IMAGE_DIR / record["image_name"]
        is_test = str(record["phrase_type"]).strip() in VQA_RAD_TEST_PHRASE_TYPES
        if is_test == (split == "test"):
            samples.append(_sample(image, record))
        if split == "train" and vqa_rad_split == "standard":
            if "question_frame" not in record:
                raise ValueError(f"question {record['question']!r} has no question_frame field: the standard split "
                                 f"needs the release's JSON (or choose vqa_rad_split='no-frames')")
            if str(record["question_frame"]).strip() != VQA_RAD_NO_FRAME:
                samples.append(_sample(image, {**record, "question": record["question_frame"]}))
    if check_files:
        _check_images_exist(samples)
    return samples


def read_slake(
        root: PathLike,
        split: str,
        language: Optional[str] = "en",
        check_files: bool = True,
) -> list[VqaSample]:
    """Read a SLAKE split; ``language`` filters on ``q_lang`` (``"en"``, ``"zh"``; ``None`` keeps both)."""
    _check_split(split, SPLITS, "SLAKE")
    root = Path(root)
    samples = [
        _sample(root / "imgs" / record["img_name"], record)
        for record in _read_json(root / SLAKE_FILES[split])
        if language is None or record["q_lang"] == language
    ]
    if check_files:
        _check_images_exist(samples)
    return samples


def read_vqa_split(
        dataset: str,
        root: PathLike,
        split: str,
        language: Optional[str] = "en",
        check_files: bool = True,
        vqa_rad_split: str = DEFAULT_VQA_RAD_SPLIT,
) -> list[VqaSample]:
    """Read one split of ``dataset`` (``"vqa-rad"`` or ``"slake"``; ``language`` is SLAKE's,
    ``vqa_rad_split`` VQA-RAD's training set)."""
    if dataset == "vqa-rad":
        return read_vqa_rad(root, split, check_files, vqa_rad_split)
    if dataset == "slake":
        return read_slake(root, split, language, check_files)
    raise ValueError(f"unknown VQA dataset {dataset!r}; expected one of {VQA_DATASETS}")


class AnswerSet:
    """The classes of VQA-as-classification: the distinct normalised training answers, sorted."""

    def __init__(self, answers: Sequence[str]):
        if not answers:
            raise ValueError("the answer set is empty: the training split has no answers to classify")
        self.answers = tuple(answers)
        self._positions = {answer: i for i, answer in enumerate(self.answers)}

    @classmethod
    def from_samples(cls, samples: Sequence[VqaSample]) -> "AnswerSet":
        return cls(sorted({sample.answer for sample in samples}))

    def __len__(self) -> int:
        return len(self.answers)

    def index(self, answer: str) -> int:
        """The class of ``answer``; -1 for an answer never seen in training (always scored wrong)."""
        return self._positions.get(answer, -1)


class VqaDataset(Dataset):
    """(image, question token ids, answer class, is-closed flag) for each sample.

    With ``cache_images`` each distinct image is loaded and transformed once, when the dataset is
    built: for a deterministic ``transform`` only (no augmentation), where it gives the same tensors
    as transforming on every access (VQA-RAD asks 3,515 questions about 314 images).
    """

    def __init__(
            self,
            samples: Sequence[VqaSample],
            answers: AnswerSet,
            transform: Callable[[Image.Image], torch.Tensor],
            tokenizer: Callable[[list[str]], torch.Tensor],
            cache_images: bool = False,
    ):
        self.samples = samples
        self.answers = answers
        self.transform = transform
        self.tokenizer = tokenizer
        self.images = ({path: transform(load_image(path)) for path in dict.fromkeys(s.image_path for s in samples)}
                       if cache_images else None)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image = (self.images[sample.image_path] if self.images is not None
                 else self.transform(load_image(sample.image_path)))
        return (
            image,
            self.tokenizer([sample.question])[0],
            torch.tensor(self.answers.index(sample.answer)),
            torch.tensor(sample.is_closed),
        )
