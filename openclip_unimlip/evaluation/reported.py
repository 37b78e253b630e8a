"""The numbers Uni-Mlip reports for its downstream tasks, transcribed once, each with its table and row.

Source: Bawazir & Wu, *Uni-Mlip: Unified Self-supervision for Medical Vision Language
Pre-training* (the text in ``../shared/papers/uni-mlip.txt``), sec. 5.1. Values are in percent,
as printed. Method names are the rows' own; the citation brackets, garbled in the text we have
(e.g. "GLoRIA [🗖]"), are left out of the name and kept in ``row`` where legible.

* **Table 1** (classification, macro AUC, fine-tuning on 1 / 10 / 100 % of the training labels):
  MIMIC, CXP (CheXpert), NIH. Its comparison rows follow CheXclusion's protocol
  (``data/cxr_protocols.py`` says why), the benchmark's default.
* **Table 2** (VQA accuracy): VQA-RAD and Slake, open, closed, overall.
* **Fig. 2** (ROCO retrieval, R@1/5/10 both ways): a bar chart whose values the text does not
  print, so no absolute value is transcribed. The text states four differences, kept in
  :data:`FIGURE2_STATED_GAINS`.

Nothing here imports torch: the tables and the tests read it as plain data.
"""
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

PAPER = "Uni-Mlip (Bawazir & Wu)"

TABLE1_DATASETS = ("mimic", "chexpert", "nih")  # the table's column order: MIMIC, CXP, NIH
TABLE1_FRACTIONS = (0.01, 0.1, 1.0)
TABLE2_DATASETS = ("vqa-rad", "slake")
TABLE2_METRICS = ("open", "closed", "overall")


@dataclass(frozen=True)
class ReportedRow:
    """One printed row: ``values[dataset]`` holds the row's numbers for that dataset in the table's
    column order (Table 1: 1 %, 10 %, 100 %; Table 2: open, closed, overall), in percent."""
    method: str
    table: str  # "Table 1" or "Table 2"
    row: str  # the row label as printed
    values: Mapping[str, Tuple[float, ...]]

    @property
    def source(self) -> str:
        return f"{PAPER}, {self.table}, row '{self.row}'"


def _table1(method: str, row: str, mimic: Tuple[float, float, float], chexpert: Tuple[float, float, float],
            nih: Tuple[float, float, float]) -> ReportedRow:
    return ReportedRow(method, "Table 1", row, {"mimic": mimic, "chexpert": chexpert, "nih": nih})


# Uni-Mlip Table 1: "Classification results on MIMIC, CXP and NIH dataset."
TABLE1 = (
    _table1("Random", "Random", (53.6, 66.5, 78.2), (62.6, 69.0, 76.9), (56.4, 67.1, 76.9)),
    _table1("ImageNet", "ImageNet", (67.8, 70.5, 79.3), (63.7, 70.7, 77.7), (59.7, 68.9, 78.1)),
    _table1("ConVIRT", "ConVIRT [15]", (67.8, 73.4, 80.1), (63.2, 71.3, 77.7), (60.0, 69.0, 76.6)),
    _table1("GLoRIA", "GLoRIA", (67.5, 72.6, 80.1), (62.9, 69.0, 77.8), (60.1, 71.2, 77.7)),
    _table1("MGCA", "MGCA", (68.4, 74.4, 80.2), (63.4, 72.1, 78.1), (61.1, 67.8, 77.3)),
    _table1("M-FLAG", "M-FLAG [11]", (69.5, 74.8, 80.2), (64.4, 71.4, 78.1), (62.2, 71.6, 78.7)),
    _table1("PMC-CLIP (reproduced)", "PMC-CLIP (reproduced)", (73.1, 77.4, 81.8), (69.1, 74.9, 79.1),
            (64.9, 76.3, 82.3)),
    _table1("Uni-Mlip", "Uni-Mlip (ours)", (73.2, 79.1, 82.0), (69.1, 75.3, 79.8), (65.6, 76.4, 82.9)),
)


def _table2(method: str, row: str, vqa_rad: Tuple[float, float, float],
            slake: Tuple[float, float, float]) -> ReportedRow:
    return ReportedRow(method, "Table 2", row, {"vqa-rad": vqa_rad, "slake": slake})


# Uni-Mlip Table 2: "VQA results on VQA-RAD and Slake" (Open, Closed, Overall each).
TABLE2 = (
    _table2("MEVF-BAN", "MEVF-BAN [13]", (49.20, 77.20, 66.10), (77.80, 79.80, 78.60)),
    _table2("CPRD-BAN", "CPRD-BAN", (52.50, 77.90, 67.80), (79.50, 83.40, 81.10)),
    _table2("PubMedCLIP", "PubMedCLIP", (60.10, 80.00, 72.10), (78.40, 82.50, 80.10)),
    _table2("PMC-CLIP (reproduced)", "PMC-CLIP [22] (reproduced)", (61.45, 80.14, 72.73), (80.16, 84.38, 81.81)),
    _table2("Uni-Mlip", "Uni-Mlip (ours)", (60.43, 81.62, 73.17), (79.38, 85.82, 81.90)),
)


@dataclass(frozen=True)
class StatedGain:
    """A difference the text states for Fig. 2, in percentage points: Uni-Mlip minus ``over``."""
    direction: str  # "image_to_text" or "text_to_image"
    k: int
    points: float
    over: str
    quote: str  # the sentence it comes from (sec. 5.1, "Image-Text Retrieval")


# Fig. 2 ("Evaluation Results on Image-to-Text (left) and Text-to-Image (right) retrieval tasks on
# ROCO dataset"): compared methods ViLT, METER, M3AE, ARL and PMC-CLIP (reproduced); 2000 drawn test
# pairs (sec. 4.2). The bar heights are not in the text; these four differences are.
FIGURE2_METHODS = ("ViLT", "METER", "M3AE", "ARL", "PMC-CLIP (reproduced)", "Uni-Mlip")
FIGURE2_STATED_GAINS = (
    StatedGain("image_to_text", 10, 3.17, "the previous state of the art",
               "in image-to-text retrieval, Uni-Mlip surpasses the previous state-of-the-art by 3.17% in Recall@10"),
    StatedGain("image_to_text", 5, 2.76, "the previous state of the art",
               "and achieves a 2.76% improvement in Recall@5"),
    StatedGain("text_to_image", 5, 1.46, "PMC-CLIP (reproduced)",
               "in text-to-image retrieval, the model outperforms PMC-CLIP with gains of 1.46% in Recall@5"),
    StatedGain("text_to_image", 10, 1.54, "PMC-CLIP (reproduced)", "and 1.54% in Recall@10"),
)
FIGURE2_SOURCE = f"{PAPER}, Fig. 2 and sec. 5.1 ('Image-Text Retrieval')"


def table1_value(row: ReportedRow, dataset: str, fraction: float) -> Optional[float]:
    """The row's macro AUC (percent) for ``dataset`` at ``fraction``; None when the table has no such column."""
    if dataset not in row.values or fraction not in TABLE1_FRACTIONS:
        return None
    return row.values[dataset][TABLE1_FRACTIONS.index(fraction)]


def table2_value(row: ReportedRow, dataset: str, metric: str) -> Optional[float]:
    """The row's accuracy (percent) for ``dataset`` and ``metric`` (open, closed, overall)."""
    if dataset not in row.values:
        return None
    return row.values[dataset][TABLE2_METRICS.index(metric)]


def as_json() -> Dict[str, object]:
    """Everything above as plain JSON data."""
    def rows(table: Tuple[ReportedRow, ...]) -> list:
        return [{"method": r.method, "source": r.source, "values": {k: list(v) for k, v in r.values.items()}}
                for r in table]

    return {
        "paper": PAPER,
        "table1": {"datasets": list(TABLE1_DATASETS), "fractions": list(TABLE1_FRACTIONS), "metric": "macro AUC (%)",
                   "rows": rows(TABLE1)},
        "table2": {"datasets": list(TABLE2_DATASETS), "metrics": list(TABLE2_METRICS), "metric": "accuracy (%)",
                   "rows": rows(TABLE2)},
        "figure2": {"source": FIGURE2_SOURCE, "methods": list(FIGURE2_METHODS),
                    "absolute_values": None,
                    "stated_gains": [{"direction": g.direction, "k": g.k, "points": g.points, "over": g.over,
                                      "quote": g.quote} for g in FIGURE2_STATED_GAINS]},
    }
