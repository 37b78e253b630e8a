"""The benchmarks run end to end at a tiny size and report sane numbers (no timing assertions)."""
import math

import open_clip
import pytest

from tools.bench import VARIANTS, run_step_benchmark
from tools.bench_data import PIPELINES, embedded_shards, format_data_table, run_data_benchmark


@pytest.fixture(scope="module")
def step_report():
    return run_step_benchmark("tiny", batch_size=4, warmup=1, iters=1)


def test_step_table_is_finite(step_report):
    rows = step_report.rows()
    assert [r["variant"] for r in rows] == list(VARIANTS)
    for row in rows:
        for key, value in row.items():
            if key != "variant":
                assert math.isfinite(value), (row["variant"], key)
    table = step_report.format_table()
    assert all(v in table for v in VARIANTS)


def test_flops_are_ordered(step_report):
    flops = {m.variant: m.flops for m in step_report.measurements}
    assert all(f > 0 for f in flops.values())
    assert flops["unimlip"] > max(f for v, f in flops.items() if v != "unimlip")
    # each term only adds work to CLIP (text dropout adds element-wise work only, which is not counted)
    for term in VARIANTS[2:]:
        assert flops[term] >= flops["clip"], term
    for term in ("+image_perturbed_itc", "+simclr", "+mlm"):
        assert flops[term] > flops["clip"], term


def test_step_report_serialises(step_report):
    as_dict = step_report.to_dict()
    assert as_dict["model"] == "unimlip-tiny"
    assert set(as_dict["seconds"]) == set(VARIANTS)


def test_data_pipelines_run_on_the_same_shards(tmp_path):
    shards = embedded_shards(tmp_path / "embedded", num_samples=44, image_size=48, shard_size=20)
    measurements = run_data_benchmark(shards.pattern, shards.num_samples, open_clip.get_tokenizer("unimlip-tiny"),
                                      image_size=48, workers=(0,), batch_size=8, epochs=1)
    assert [m.pipeline for m in measurements] == list(PIPELINES)
    for m in measurements:
        assert all(rate > 0 and math.isfinite(rate) for rate in m.samples_per_second)
    assert "three-view" in format_data_table(measurements)
