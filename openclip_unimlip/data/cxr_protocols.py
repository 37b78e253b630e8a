"""Named chest X-ray classification protocols: label set, per-label uncertainty mapping, views, split.

A macro AUC is only comparable with another one computed under the same protocol: the label set,
the target given to an uncertain (-1) or blank mention, the views kept and the split all move it.
Each protocol below names, for each dataset it defines, the source of every choice.

Which protocol Uni-Mlip's Table 1 follows (the default, ``"chexclusion"``):

* Table 1's comparison rows (Random, ImageNet, ConVIRT, GLoRIA, MGCA, M-FLAG; MIMIC/CXP/NIH at
  1/10/100%) read as M-FLAG's table (Liu et al., MICCAI 2023; Uni-Mlip ref. [30]): its M-FLAG row
  is the M-FLAG paper's own numbers where we could check them (MIMIC 69.5/74.8 at 1/10%, CXP 64.4
  at 1%, NIH 62.2/71.6/78.7, as re-listed by MaCo's Table 1, Nat. Commun. 2024, and an index of
  the M-FLAG paper's results; M-FLAG's text itself was not available to us). They are not under
  MGCA's five-label CheXpert protocol, where ConVIRT and GLoRIA reach 85.9-88.1 (MGCA's Table 1,
  as re-listed by MaCo), against 62.9-77.8 in Table 1.
* M-FLAG's repository (cheliu-computation/M-FLAG-MICCAI2023, README.md "Finetune on downstream
  tasks", commit a4deb6e) states: "For classification task, we follow CheXclusion", i.e.
  Seyyed-Kalantari et al., PSB 2021 (Uni-Mlip ref. [36]), code LalehSeyyed/CheXclusion.
* Uni-Mlip's own recipe (sec. 4.2: BCE, Adam, up to 64 epochs with early stopping) is
  CheXclusion's (CXP/train.py:35 ``num_epochs = 64``, :101-102 BCELoss, :118 Adam, :145-153
  early stopping).

Uni-Mlip sec. 4.2 also says it takes its splits from ref. [15] (Huang et al., MIDL 2024; code
denizlab/MIMICCXR-MultiModal-SelfSupervision), whose split files are not public. Its CheXpert
rule is ``"all14"``'s (below). The citation numbers of the text we have are partly garbled
(e.g. M-FLAG appears as [11]), so the label rule is taken from the rows Table 1 compares with.

CheXclusion, per dataset (LalehSeyyed/CheXclusion, commit 278a4af):

* CheXpert: the 14 observations in the CSV's order (CXP/dataset.py:29-43); a target is the CSV
  value when it is > 0, else 0 (CXP/dataset.py:62-66), so uncertain (-1) and blank are both 0
  (U-Zeros for every label); all views (no view filter anywhere in the code); train.csv and
  valid.csv pooled (22 of the patients in CXP/testSet_SubjID.csv are valid.csv's patient64541+)
  and split by patient (CXP/testSet_SubjID.csv lists 22,274 test images of 6,530 patients).
* MIMIC-CXR: the same 14 observations in MIMIC/dataset.py:29-43's order ("Airspace Opacity"
  there is MIMIC-CXR-JPG's "Lung Opacity" column), the same ``> 0`` rule (:62-66), all views,
  80/10/10 by patient (MIMIC/main.py:12, ``new_split/8-1-1``; MIMIC/testSet_SubjID.csv: 36,421
  test images of 6,476 patients).
* NIH ChestX-ray14: its 14 findings (NIH/dataset.py:27-41), no uncertain labels, split by patient
  (NIH/testSet_PatientID.csv: 6,373 test images of 1,835 patients; the fractions are not stated
  for NIH, ours: valid 10 % of the patients as for MIMIC).
* Metric: scikit-learn ROC AUC per label, averaged over the 14 (CXP/predictions.py:157-158, 196).

CheXclusion publishes its test patients ("we have provided the patient ID per test splits",
README.md, "Reproducing the results"): the three files above, one headerless line per test image
(the first line is a patient id too: pandas' default ``header=0`` would drop it, leaving 22,273 /
36,420 / 6,372 rows and, for CheXpert and NIH, one patient fewer). Its train/valid split is not
published. Ours (:func:`patient_split`): test is the images of the patients of the data read that
are in that dataset's published list (``chexclusion_test_patients.json``, vendored by
``tools/chexclusion_test_lists.py``); valid a seeded holdout of the other patients, ``ceil(10%)``
of all the patients (ours); train the rest. Where none of the list's patients is in the data (a
private subset, made-up data), the whole split is ours: a seeded 80/10/10 patient split
(:func:`patient_split_mask`). Which of the two was used is stated with the split
(:attr:`CxrSettings.split_note`, recorded by ``describe``).

NIH ChestX-ray14 in the benchmark (``studies/benchmark/tasks.DATASET_PROTOCOLS``) is split by NIH's
own list files, ``"all14"``'s NIH rule, not by CheXclusion's pooled patient split:

* Uni-Mlip sec. 4.2 takes its splits from ref. [15] ("we follow [15] for dataset splits"), whose
  NIH evaluation trains, validates and tests on three fixed list files and never pools the release
  (denizlab/MIMICCXR-MultiModal-SelfSupervision, commit e010eb7,
  downstream_eval/chestxray14/train.py:52-54, read by read_data.py:37-41). Those files are not in
  its repository; CheXclusion's NIH split files are not public either (NIH/main.py:14-16 name
  paths on the authors' cluster; only the test patients are, NIH/testSet_PatientID.csv, which
  ``"chexclusion"`` tests on).
* NIH's ``train_val_list.txt`` / ``test_list.txt`` is the fixed, patient-disjoint split that
  anyone with the release reproduces: test is ``test_list.txt``, valid a seeded 5 % patient
  holdout of ``train_val_list.txt`` (ours, ``data.chest_xray.DEFAULT_VALID_FRACTION``).
* The label set is the same 14 findings under both (CheXclusion NIH/dataset.py:27-41; [15]
  train.py:49-51), so Table 1's NIH rows and ours differ in the split only, and every split
  involved (theirs, ours) is fixed and patient-disjoint.

A finding with a single class in a split (no positive, or no negative) has no ROC AUC: it is
reported as undefined and left out of that split's macro mean (``classification.auc_report``, as
[15]'s ``compute_AUCs``, eval_utils.py:59-63). CheXclusion catches the error and divides the sum by 14
(NIH/predictions.py:183, 200, 220), i.e. counts such a finding as 0. Neither happens on NIH's full
test list, where each of the 14 findings has positives; it can on a subset or with ``--limit``.
"""
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import pandas as pd

CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
# The five CheXpert competition labels, in MGCA's order (mgca/constants.py:51-57).
CHEXPERT_COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
# MIMIC-CXR is labelled by the CheXpert labeler: same 14 observations.
MIMIC_LABELS = CHEXPERT_LABELS
NIH_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
DATASET_LABELS = {"chexpert": CHEXPERT_LABELS, "mimic": MIMIC_LABELS, "nih": NIH_LABELS}
DATASET_NAMES = {"chexpert": "CheXpert", "mimic": "MIMIC-CXR", "nih": "NIH ChestX-ray14"}
# One policy for every label (Irvin et al., 2019): the target of an uncertain (-1) mention.
UNCERTAIN_POLICIES = {"u_ones": 1.0, "u_zeros": 0.0}

# Split rules. "official": the release's own test split (CheXpert: the expert-labelled valid.csv;
# MIMIC-CXR: mimic-cxr-2.0.0-split; NIH: test_list.txt), validation held out of the rest by patient.
# "patients": the whole release pooled and split by patient (CheXclusion): test is CheXclusion's
# published test patients, valid and train ours (:func:`patient_split`).
SPLIT_RULES = ("official", "patients")
# valid under "patients", and test too where none of CheXclusion's published test patients is in the data
PATIENT_HOLDOUT_FRACTION = 0.1  # (CheXclusion MIMIC/main.py:12, 8-1-1)
HOLDOUT_SEED = 0  # ours: fixes valid and test once; a run's seed only draws its training subset
# CheXclusion's published test patients per dataset (LalehSeyyed/CheXclusion @278a4af,
# CXP/testSet_SubjID.csv, MIMIC/testSet_SubjID.csv, NIH/testSet_PatientID.csv; unique ids, sorted),
# written by tools/chexclusion_test_lists.py, which the file names with its commit and paths.
CHEXCLUSION_TEST_PATIENTS_FILE = Path(__file__).resolve().with_name("chexclusion_test_patients.json")


@dataclass(frozen=True)
class DatasetProtocol:
    """How one dataset is labelled and split under a protocol."""
    labels: Optional[tuple[str, ...]]  # None: every label column the release has, in its order
    uncertain: Mapping[str, float]  # per label, the target of an uncertain (-1) mention; {} for NIH
    frontal_only: bool
    split_rule: str
    source: str


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    datasets: Mapping[str, DatasetProtocol]


def _every(labels: Sequence[str], target: float) -> dict[str, float]:
    return {label: target for label in labels}


CHEXCLUSION = Protocol(
    name="chexclusion",
    summary="Uni-Mlip Table 1's comparison rows (M-FLAG's table, after CheXclusion): all 14 labels, "
            "uncertain and blank as negative, all views, split by patient (test: CheXclusion's published "
            "test patients)",
    datasets={
        "chexpert": DatasetProtocol(
            labels=CHEXPERT_LABELS,
            uncertain=_every(CHEXPERT_LABELS, UNCERTAIN_POLICIES["u_zeros"]),
            frontal_only=False,
            split_rule="patients",
            source="LalehSeyyed/CheXclusion CXP/dataset.py:29-43 (labels), :62-66 (value > 0, else 0), "
                   "CXP/testSet_SubjID.csv (test patients)",
        ),
        "mimic": DatasetProtocol(
            labels=("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity",
                    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                    "Pleural Other", "Fracture", "Support Devices"),
            uncertain=_every(MIMIC_LABELS, UNCERTAIN_POLICIES["u_zeros"]),
            frontal_only=False,
            split_rule="patients",
            source="LalehSeyyed/CheXclusion MIMIC/dataset.py:29-43 (labels), :62-66 (value > 0, else 0), "
                   "MIMIC/main.py:12 (8-1-1 split), MIMIC/testSet_SubjID.csv (test patients)",
        ),
        "nih": DatasetProtocol(
            labels=NIH_LABELS,
            uncertain={},
            frontal_only=False,  # NIH ChestX-ray14 holds frontal (PA/AP) views only
            split_rule="patients",
            source="LalehSeyyed/CheXclusion NIH/dataset.py:27-41 (labels), NIH/testSet_PatientID.csv (test patients)",
        ),
    },
)

# MGCA's per-label mapping (mgca/constants.py:59-66, "based on original chexpert paper").
MGCA_UNCERTAIN = {"Atelectasis": 1.0, "Cardiomegaly": 0.0, "Consolidation": 0.0, "Edema": 1.0, "Pleural Effusion": 1.0}

MGCA = Protocol(
    name="mgca",
    summary="MGCA's (and GLoRIA's) CheXpert protocol: the five competition labels with per-label "
            "U-Ones/U-Zeros, frontal views, official test split",
    datasets={
        "chexpert": DatasetProtocol(
            labels=CHEXPERT_COMPETITION_LABELS,
            uncertain=MGCA_UNCERTAIN,
            frontal_only=True,
            split_rule="official",
            source="HKU-MedAI/MGCA mgca/constants.py:17-19 (valid.csv as test), :51-66 (labels, mapping); "
                   "mgca/datasets/classification_dataset.py:47-49 (frontal), :61-66 (blank 0, uncertain mapped)",
        ),
        "mimic": DatasetProtocol(
            labels=CHEXPERT_COMPETITION_LABELS,
            uncertain=MGCA_UNCERTAIN,
            frontal_only=True,
            split_rule="official",
            source="HKU-MedAI/MGCA mgca/datasets/classification_dataset.py:101-103 (PA/AP), :116-121, :133",
        ),
    },
)

ALL14 = Protocol(
    name="all14",
    summary="every label of the release with uncertain as positive (U-Ones), frontal views, official test "
            "split: this package's earlier default; on CheXpert, Huang et al.'s (Uni-Mlip ref. [15]) rule",
    datasets={
        "chexpert": DatasetProtocol(
            labels=None,
            uncertain=_every(CHEXPERT_LABELS, UNCERTAIN_POLICIES["u_ones"]),
            frontal_only=True,
            split_rule="official",
            source="denizlab/MIMICCXR-MultiModal-SelfSupervision downstream_eval/chexpert/train.py:23,29 "
                   "(frontal), :49-51 (14 labels), :86-101 and :255 (blank 0, uncertain 1), :311,327 (valid.csv)",
        ),
        "mimic": DatasetProtocol(
            labels=None,
            uncertain=_every(MIMIC_LABELS, UNCERTAIN_POLICIES["u_ones"]),
            frontal_only=True,
            split_rule="official",
            source="ours (CheXpert's rule applied to MIMIC-CXR-JPG's official split)",
        ),
        "nih": DatasetProtocol(
            labels=None,
            uncertain={},
            frontal_only=False,
            split_rule="official",
            source="denizlab/MIMICCXR-MultiModal-SelfSupervision downstream_eval/chestxray14/train.py:49-51 "
                   "(labels), :52-54 (fixed list files; here NIH's train_val_list.txt and test_list.txt)",
        ),
    },
)

PROTOCOLS = {protocol.name: protocol for protocol in (CHEXCLUSION, MGCA, ALL14)}
DEFAULT_PROTOCOL = CHEXCLUSION.name


@dataclass(frozen=True)
class CxrSettings:
    """What one run reads: a protocol's choices for one dataset, after any explicit overrides."""
    protocol: str
    dataset: str
    labels: Optional[tuple[str, ...]]  # None: every label column of the release
    uncertain: Mapping[str, float]
    frontal_only: bool
    split_rule: str
    source: str
    overrides: tuple[str, ...] = field(default=())  # the protocol's choices replaced by explicit arguments
    # Set by the reader under "patients": how the data read was split (:func:`patient_split`); None before.
    split_note: Optional[str] = None

    @property
    def name(self) -> str:
        """The protocol's name, with the overridden choices, e.g. ``"mgca+labels"``."""
        return "+".join((self.protocol, *self.overrides))

    def describe(self, label_names: Optional[Sequence[str]] = None) -> dict:
        """JSON-ready settings; ``label_names`` (the columns read) restricts the uncertainty mapping."""
        labels = list(label_names if label_names is not None else self.labels or DATASET_LABELS[self.dataset])
        return {
            "name": self.name,
            "protocol": self.protocol,
            "overrides": list(self.overrides),
            "labels": labels,
            "uncertain": {label: self.uncertain[label] for label in labels if label in self.uncertain},
            "frontal_only": self.frontal_only,
            "split_rule": self.split_rule,
            "split_note": self.split_note,
            "source": self.source,
        }


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")


def resolve_settings(
        dataset: str,
        protocol: str = DEFAULT_PROTOCOL,
        labels: Optional[Sequence[str]] = None,
        uncertain: Union[None, str, Mapping[str, float]] = None,
        frontal_only: Optional[bool] = None,
) -> CxrSettings:
    """A protocol's settings for ``dataset``; explicit ``labels``/``uncertain``/``frontal_only`` replace them.

    ``uncertain`` is a policy name (``"u_ones"``/``"u_zeros"``, for every label) or a per-label
    mapping. Combinations that cannot mean anything stop here with one message: a protocol that
    does not define the dataset, an uncertainty policy or a view rule for NIH ChestX-ray14 (no
    uncertain labels, frontal views only), or labels the uncertainty mapping does not cover.
    """
    check_choice("dataset", dataset, tuple(DATASET_LABELS))
    check_choice("protocol", protocol, tuple(PROTOCOLS))
    defined = PROTOCOLS[protocol].datasets
    if dataset not in defined:
        raise ValueError(
            f"protocol {protocol!r} defines no {DATASET_NAMES[dataset]} classification; "
            f"use one of {', '.join(repr(name) for name, p in PROTOCOLS.items() if dataset in p.datasets)}")
    base = defined[dataset]
    if dataset == "nih" and (uncertain is not None or frontal_only is not None):
        raise ValueError("NIH ChestX-ray14 has no uncertain labels and frontal views only: "
                         "an uncertain-label policy or a view rule applies to CheXpert and MIMIC-CXR only")
    overrides = []
    resolved_labels = base.labels
    if labels is not None:
        if not labels:
            raise ValueError("at least one label is required")
        unknown = [label for label in labels if label not in DATASET_LABELS[dataset]]
        if unknown:
            raise ValueError(f"unknown label column(s) {unknown} in {DATASET_NAMES[dataset]}; "
                             f"available: {list(DATASET_LABELS[dataset])}")
        resolved_labels = tuple(labels)
        overrides.append("labels")
    mapping = dict(base.uncertain)
    if uncertain is not None:
        if isinstance(uncertain, str):
            check_choice("uncertain-label policy", uncertain, tuple(UNCERTAIN_POLICIES))
            mapping = _every(DATASET_LABELS[dataset], UNCERTAIN_POLICIES[uncertain])
        else:
            mapping = {label: float(target) for label, target in uncertain.items()}
        overrides.append("uncertain")
    if dataset != "nih":
        unmapped = [label for label in resolved_labels or DATASET_LABELS[dataset] if label not in mapping]
        if unmapped:
            raise ValueError(
                f"protocol {protocol!r} maps uncertain labels of {list(mapping)} only, not of {unmapped}; "
                f"give an uncertain-label policy ({', '.join(UNCERTAIN_POLICIES)}) for them")
    if frontal_only is not None and frontal_only != base.frontal_only:
        overrides.append("views")
    return CxrSettings(
        protocol=protocol,
        dataset=dataset,
        labels=resolved_labels,
        uncertain=mapping,
        frontal_only=base.frontal_only if frontal_only is None else frontal_only,
        split_rule=base.split_rule,
        source=base.source,
        overrides=tuple(overrides),
    )


def map_uncertain(values: pd.DataFrame, uncertain: Mapping[str, float]) -> np.ndarray:
    """CheXpert-labeler columns (1, 0, -1, blank) as float32 targets: blank is 0, -1 follows its label's mapping."""
    by_label = {label: {-1.0: float(uncertain[label])} for label in values.columns}
    return values.fillna(0.0).replace(by_label).to_numpy(dtype=np.float32)


def patient_split_mask(patient_ids: pd.Series, split: str) -> np.ndarray:
    """True for the images of ``split`` under the "patients" rule: a seeded 80/10/10 split of the patients.

    Ours, and :func:`patient_split`'s rule when none of CheXclusion's published test patients is in
    the data: the sorted patients are permuted with :data:`HOLDOUT_SEED`; the first ``ceil(10%)``
    are the test patients, the next ``ceil(10%)`` the validation patients, the rest train.
    """
    patients = np.sort(patient_ids.unique())
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(patients))
    held_out = math.ceil(PATIENT_HOLDOUT_FRACTION * len(patients))
    chosen = {"test": order[:held_out], "valid": order[held_out:2 * held_out], "train": order[2 * held_out:]}[split]
    return patient_ids.isin(patients[chosen]).to_numpy()


@functools.cache
def _chexclusion_lists() -> dict:
    return json.loads(CHEXCLUSION_TEST_PATIENTS_FILE.read_text())


def chexclusion_test_patients(dataset: str) -> frozenset[int]:
    """CheXclusion's published test patients of ``dataset`` (ids as :func:`chexclusion_patient_id` writes them)."""
    check_choice("dataset", dataset, tuple(DATASET_LABELS))
    return frozenset(_chexclusion_lists()["datasets"][dataset]["patients"])


def chexclusion_patient_id(dataset: str, patient: Any) -> Optional[int]:
    """A reader's patient id as CheXclusion's lists write it, None when it has no such form.

    CheXpert: the ``patientNNNNN`` folder of ``Path`` is NNNNN (CXP/testSet_SubjID.csv's first
    line is 3, i.e. patient00003); MIMIC-CXR's ``subject_id`` and NIH's ``Patient ID`` are integers
    in both.
    """
    text = str(patient)
    if dataset == "chexpert":
        text = text.removeprefix("patient")
    return int(text) if text.isdigit() else None


class PatientSplit(NamedTuple):
    """One split of the "patients" rule (:func:`patient_split`)."""
    mask: np.ndarray  # True for the images of the split asked for
    note: str  # how test was chosen, for CxrSettings.split_note


def patient_split(patient_ids: pd.Series, split: str, dataset: str) -> PatientSplit:
    """The "patients" rule on a pooled release: its ``split`` and a note saying how test was chosen.

    Test holds the patients of ``patient_ids`` in CheXclusion's published list for ``dataset``
    (:func:`chexclusion_test_patients`). Valid is ours (CheXclusion's train/valid split is not
    published): the other patients, sorted, permuted with :data:`HOLDOUT_SEED`, the first
    ``ceil(10%)`` of *all* the patients, so valid is as large as under :func:`patient_split_mask`;
    train the rest. With none of the listed patients in the data, :func:`patient_split_mask` as is.
    """
    listed = chexclusion_test_patients(dataset)
    patients = np.sort(patient_ids.unique())
    in_list = np.array([chexclusion_patient_id(dataset, p) in listed for p in patients], dtype=bool)
    percent = f"{100 * PATIENT_HOLDOUT_FRACTION:g} %"
    if not in_list.any():
        return PatientSplit(
            patient_split_mask(patient_ids, split),
            f"test: a seeded {percent} patient holdout (none of CheXclusion's published test patients is in "
            f"this data), valid: another seeded {percent}, train: the rest")
    others = patients[~in_list]
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(others))
    held_out = math.ceil(PATIENT_HOLDOUT_FRACTION * len(patients))
    chosen = {"test": patients[in_list], "valid": others[order[:held_out]], "train": others[order[held_out:]]}[split]
    return PatientSplit(
        patient_ids.isin(chosen).to_numpy(),
        f"test: CheXclusion's published test patients ({in_list.sum():,} of the list's {len(listed):,} found in "
        f"this data), valid: a seeded holdout of the other patients ({percent} of all, ours), train: the rest")
