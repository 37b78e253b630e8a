"""The studies' report writer (``studies/report.py``): Markdown tables, interval and difference
texts, the JSON and Markdown pair, a bar chart."""
import json

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
