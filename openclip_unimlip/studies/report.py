"""The studies' report writer: Markdown tables, the JSON beside them, bar charts. What a table holds
stays with its study (``benchmark/tables.py``, ``ablation.py``); how it is written is here, the same
for every study."""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from openclip_unimlip.data.atomic import atomic_path, write_json_atomic


# ----------------------------------------------------------------------------- Markdown
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """A GitHub Markdown table, one line per row (no blank line around it)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def interval_text(mean: float, low: Optional[float], high: Optional[float], decimals: int = 1) -> str:
    """``61.2 [58.0, 64.4]``; the mean alone while the interval is undefined (one seed)."""
    if low is None:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"


def difference_text(estimate: float, low: Optional[float], high: Optional[float],
                    excludes_zero: Optional[bool]) -> str:
    """``+1.2 [-0.3, +2.7]``, signed; **bold** where the interval excludes 0."""
    if low is None:
        return f"{estimate:+.1f}"
    text = f"{estimate:+.1f} [{low:+.1f}, {high:+.1f}]"
    return f"**{text}**" if excludes_zero else text


def save_report(folder: Path, stem: str, report: dict, markdown: str) -> None:
    """``<folder>/<stem>.json`` and ``<stem>.md``, each written whole or not at all (``data.atomic``)."""
    write_json_atomic(folder / f"{stem}.json", report)
    with atomic_path(folder / f"{stem}.md") as tmp:
        tmp.write_text(markdown)


# ----------------------------------------------------------------------------- plots
@dataclass(frozen=True)
class BarSeries:
    """One bar per category: ``heights``, optional error bars (below, above each height), each
    bar's own values drawn as dots (e.g. the seeds), ``hatched`` for numbers taken from elsewhere."""
    label: str
    heights: Sequence[float]
    errors: Optional[Tuple[Sequence[float], Sequence[float]]] = None
    points: Sequence[Sequence[float]] = ()
    hatched: bool = False


def bar_chart(path: Path, categories: Sequence[str], series: Sequence[BarSeries], ylabel: str,
              title: Optional[str] = None, reference: Sequence[Optional[float]] = (),
              reference_label: str = "chance") -> Path:
    """Grouped bars, one group per category; ``reference`` draws a dotted line across a category's
    group (e.g. its chance level). Saved as PNG at ``path``."""
    figure = Figure(figsize=(max(6.0, 1.4 * len(categories) + 0.4 * len(series)), 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(series))
    positions = np.arange(len(categories))
    for i, bars in enumerate(series):
        x = positions + (i - (len(series) - 1) / 2) * width
        axes.bar(x, bars.heights, width, label=bars.label, yerr=bars.errors, capsize=2,
                 hatch="//" if bars.hatched else None, alpha=0.6 if bars.hatched else 1.0)
        for position, values in zip(x, bars.points):  # few (the seeds), so each is shown
            axes.scatter([position] * len(values), values, s=8, color="black", zorder=3)
    for position, value in zip(positions, reference):
        if value is not None and not math.isnan(value):
            axes.hlines(value, position - 0.45, position + 0.45, colors="black", linestyles=":",
                        label=reference_label if position == 0 else None)
    rotate = max(map(len, categories), default=0) > 12
    axes.set_xticks(positions, categories, fontsize=7 if rotate else None, rotation=20 if rotate else 0,
                    ha="right" if rotate else "center")
    axes.set_ylim(bottom=0)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title, fontsize="medium")
    axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path
