"""The studies' report writer (``studies/report.py``): Markdown tables, interval and difference
texts, the JSON and Markdown pair, a bar chart."""
import dataclasses
import json

import numpy as np
import pytest

from openclip_unimlip.studies import report
from openclip_unimlip.studies.report import (
    BarSeries,
    bar_chart,
    difference_text,
    interval_text,
    markdown_table,
    save_report,
)


def test_markdown_table_and_cell_texts():
    assert markdown_table(["row", "R@1"], [["a", "1.0"], ["b", "2.0"]]) == [
        "| row | R@1 |", "|---|---|", "| a | 1.0 |", "| b | 2.0 |"]
    assert interval_text(61.23, 58.04, 64.44) == "61.2 [58.0, 64.4]"
    assert interval_text(61.23, None, None) == "61.2"  # one seed: no interval
    assert difference_text(1.24, -0.3, 2.7, False) == "+1.2 [-0.3, +2.7]"
    assert difference_text(-2.0, -2.9, -1.1, True) == "**-2.0 [-2.9, -1.1]**"
    assert difference_text(0.5, None, None, None) == "+0.5"


def test_a_report_is_saved_as_json_and_markdown_and_a_chart_as_png(tmp_path):
    save_report(tmp_path, "study", {"b": 1, "a": 2}, "# Study\n")
    assert json.loads((tmp_path / "study.json").read_text()) == {"a": 2, "b": 1}
    assert (tmp_path / "study.md").read_text() == "# Study\n" and not list(tmp_path.glob("*.tmp"))
    path = bar_chart(tmp_path / "bars.png", ["I2T R@1", "T2I R@1"],
                     [BarSeries("ours", [20.0, 30.0], ([2.0, 3.0], [2.0, 3.0]), [[18.0, 22.0], [27.0, 33.0]]),
                      BarSeries("reported", [25.0, 35.0], hatched=True)], "%", "title", reference=[1.0, None])
    assert path.stat().st_size > 5_000


def _recorded_figures(monkeypatch) -> list:
    """The figures ``bar_chart`` makes, kept to be read back (it only saves them)."""
    figures = []

    class RecordedFigure(report.Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            figures.append(self)

    monkeypatch.setattr(report, "Figure", RecordedFigure)
    return figures


def test_the_chart_draws_each_number_where_it_belongs(tmp_path, monkeypatch):
    """The drawn artists read back from the figure: bar centres and heights (two series of three
    categories: width 0.8 / 2, centres at -0.2 and +0.2 around each category), error bars, the seeds'
    dots, the reference lines across each group (none for a missing or NaN value), ticks and title."""
    figures = _recorded_figures(monkeypatch)
    bar_chart(tmp_path / "bars.png", ["I2T R@1", "T2I R@1", "a category name longer than twelve"],
              [BarSeries("ours", [20.0, 30.0, 40.0], ([2.0, 3.0, 4.0], [1.0, 1.5, 2.0]),
                         [[18.0, 22.0], [27.0, 33.0], [40.0]]),
               BarSeries("reported", [25.0, 35.0, 45.0], hatched=True)],
              "%", "the title", reference=[1.0, float("nan"), 5.0])
    (axes,) = figures[0].axes
    bars = [(round(p.get_x() + p.get_width() / 2, 9), round(p.get_width(), 9), p.get_height()) for p in axes.patches]
    assert bars == [(-0.2, 0.4, 20.0), (0.8, 0.4, 30.0), (1.8, 0.4, 40.0),
                    (0.2, 0.4, 25.0), (1.2, 0.4, 35.0), (2.2, 0.4, 45.0)]
    assert [p.get_hatch() for p in axes.patches] == [None] * 3 + ["//"] * 3
    (error_bars,) = [c for c in axes.containers if getattr(c, "has_yerr", False)]
    segments = error_bars.lines[2][0].get_segments()
    assert [(round(s[0][0], 9), s[0][1], s[1][1]) for s in segments] == [(-0.2, 18.0, 21.0), (0.8, 27.0, 31.5),
                                                                         (1.8, 36.0, 42.0)]
    dots = np.concatenate([c.get_offsets() for c in axes.collections if c.get_offsets().shape[0]
                           and type(c).__name__ == "PathCollection"])
    assert sorted(map(tuple, np.round(dots, 9).tolist())) == [(-0.2, 18.0), (-0.2, 22.0), (0.8, 27.0), (0.8, 33.0),
                                                              (1.8, 40.0)]
    reference_lines = [c for c in axes.collections if type(c).__name__ == "LineCollection"
                       and c not in error_bars.lines[2]]
    assert [[tuple(np.round(point, 9)) for point in s] for c in reference_lines for s in c.get_segments()] == [
        [(-0.45, 1.0), (0.45, 1.0)], [(1.55, 5.0), (2.45, 5.0)]]
    labels = ["I2T R@1", "T2I R@1", "a category name longer than twelve"]
    assert [t.get_text() for t in axes.get_xticklabels()] == labels
    assert axes.get_xticks().tolist() == [0, 1, 2] and axes.get_ylim()[0] == 0
    assert axes.get_title() == "the title" and axes.get_ylabel() == "%"
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["chance", "ours", "reported"]
    assert (tmp_path / "bars.png").stat().st_size > 5_000


@pytest.mark.parametrize("num_series", [1, 3])
def test_bars_share_each_group_evenly_and_a_lone_reference_is_in_the_legend(tmp_path, monkeypatch, num_series):
    figures = _recorded_figures(monkeypatch)
    series = [BarSeries(f"s{i}", [10.0 + i]) for i in range(num_series)]
    bar_chart(tmp_path / "bars.png", ["R@1"], series, "%", reference=[2.0])
    (axes,) = figures[0].axes
    width = 0.8 / num_series  # the group spans 0.8, centred on its category
    assert [round(p.get_x() + p.get_width() / 2, 9) for p in axes.patches] == [
        round((i - (num_series - 1) / 2) * width, 9) for i in range(num_series)]
    assert all(round(p.get_width(), 9) == round(width, 9) for p in axes.patches)
    assert [t.get_text() for t in axes.get_legend().get_texts()][0] == "chance"
    with pytest.raises(dataclasses.FrozenInstanceError):
        series[0].label = "other"
