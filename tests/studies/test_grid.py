"""The studies' grid (``studies/grid.py``) on made-up cells: resuming, the settings hash re-running
exactly the cells a changed setting shapes, failure isolation, the time estimate; and the atomic
writer under it (``data/atomic.py``)."""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from openclip_unimlip.data.atomic import atomic_path, write_json_atomic
from openclip_unimlip.studies import grid as grid_module
from openclip_unimlip.studies.grid import Grid, settings_hash


@dataclass(frozen=True)
class Toy:
    name: str
    group: str = "g"


class ToyGrid(Grid[Toy]):
    progress = False

    def __init__(self, folder: Path, settings: dict, fail: tuple = ()):
        self.folder, self.values, self.fail, self.calls, self.reports = folder, settings, fail, [], 0

    def cell_path(self, cell: Toy) -> Path:
        return self.folder / f"{cell.name}.json"

    def settings(self, cell: Toy) -> dict:
        return {"value": self.values[cell.name]}

    def run_cell(self, cell: Toy) -> dict:
        self.calls.append(cell.name)
        if cell.name in self.fail:
            raise RuntimeError("out of memory.\nTried to allocate 2 GiB")
        return {"name": cell.name, "metric": self.values[cell.name]}

    def failure_group(self, cell: Toy) -> str:
        return cell.group

    def units(self, cell: Toy) -> float:
        return 2.0 if cell.name == "big" else 1.0

    def rate_keys(self, cell: Toy):
        return [(cell.group, f"measured on group {cell.group}")]

    def after_cell(self, run) -> None:
        self.reports += 1


CELLS = [Toy("a"), Toy("b"), Toy("c", "h")]


def test_a_rerun_runs_only_missing_stale_or_damaged_cells(tmp_path):
    settings = {"a": 1, "b": 2, "c": 3}
    grid = ToyGrid(tmp_path, settings)
    run = grid.run(grid.start(CELLS))
    assert grid.calls == ["a", "b", "c"] and grid.reports == 3
    assert run.counts()["run_now"] == 3 and json.loads((tmp_path / "a.json").read_text())["metric"] == 1
    assert json.loads((tmp_path / "a.json").read_text())["origin"] == settings_hash({"value": 1})

    again = ToyGrid(tmp_path, settings)
    run = again.run(again.start(CELLS))
    assert again.calls == [] and run.counts()["resumed"] == 3

    (tmp_path / "b.json").write_text('{"origin": "trunc')  # a damaged record
    changed = ToyGrid(tmp_path, {**settings, "c": 4})  # a setting that shapes c alone
    changed.run(changed.start(CELLS))
    assert changed.calls == ["b", "c"]


def test_a_failing_cell_stops_only_its_group_with_one_line(tmp_path):
    cells = [Toy("a"), Toy("b"), Toy("c", "h"), Toy("d")]
    grid = ToyGrid(tmp_path, {"a": 1, "b": 2, "c": 3, "d": 4}, fail=("a",))
    run = grid.run(grid.start(cells))
    assert grid.calls == ["a", "c"]  # b and d share a's group: stopped, not tried
    (failure,) = run.failures
    assert (failure["name"], failure["message"]) == ("a", "RuntimeError: out of memory. Tried to allocate 2 GiB")
    assert run.counts() | {"seconds": 0} == {"planned": 4, "done": 1, "run_now": 1, "resumed": 0, "failed": 1,
                                             "stopped_after_failure": 2, "blocked": {}, "seconds": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


def test_an_interrupt_stops_the_grid_and_keeps_finished_records(tmp_path):
    class Interrupted(ToyGrid):
        def run_cell(self, cell):
            if cell.name == "b":
                raise KeyboardInterrupt
            return super().run_cell(cell)

    grid = Interrupted(tmp_path, {"a": 1, "b": 2, "c": 3})
    with pytest.raises(KeyboardInterrupt):
        grid.run(grid.start(CELLS))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_records_of_the_earlier_12_character_hash_stay_current(tmp_path):
    grid = ToyGrid(tmp_path, {"a": 1})
    full = settings_hash({"value": 1})
    for stored, current in ((full[:12], True), (full, True), (full[:8], False), ("0" * 12, False)):
        (tmp_path / "a.json").write_text(json.dumps({"origin": stored}))
        assert (grid.finished(Toy("a")) is not None) == current, stored


def test_the_estimate_uses_the_measured_rate_of_the_cells_group_else_the_prior(tmp_path):
    grid = ToyGrid(tmp_path, {"a": 1, "big": 2, "c": 3})
    write_json_atomic(tmp_path / "a.json", {"origin": grid.origin(Toy("a")), "seconds": 10.0, "units": 1.0})
    run = grid.start([Toy("a"), Toy("big"), Toy("c", "h")])
    seconds, sources = grid.estimate_seconds(run, run.todo(), (3.0, "prior"))
    assert seconds == pytest.approx(10.0 * 2 + 3.0)  # big: two units at group g's 10 s; c: the prior
    assert sources == {"g": "measured on group g", "h": "prior"}


def test_the_settings_hash_is_16_hex_of_the_canonical_json_and_ignores_key_order():
    settings = {"b": [1, 2], "a": {"y": 1.5, "x": Path("p")}}
    shuffled = {"a": {"x": Path("p"), "y": 1.5}, "b": [1, 2]}
    assert settings_hash(settings) == settings_hash(shuffled)
    canonical = '{"a": {"x": "p", "y": 1.5}, "b": [1, 2]}'  # json.dumps(sort_keys=True), written out by hand
    assert settings_hash(settings) == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    full = settings_hash({"value": 1})
    assert not grid_module.is_current(full[:11], full)  # shorter than the 12 characters records ever held


class Incomplete(ToyGrid):
    def is_complete(self, cell: Toy, record: dict) -> bool:
        return "metric" in record


def test_a_current_but_incomplete_record_is_run_again_and_the_counts_say_what_happened(tmp_path, monkeypatch):
    grid = Incomplete(tmp_path, {"a": 1, "b": 2, "c": 3})
    for name, record in (("a", {"metric": 1, "seconds": 4.0}), ("b", {"seconds": 9.0})):  # b lacks its metric
        write_json_atomic(tmp_path / f"{name}.json", {**record, "origin": grid.origin(Toy(name))})
    clock = iter([100.0, 302.5, 400.0, 400.25])  # 302.5 - 100 = 202.5 (302.5 % 100 would be 2.5)
    monkeypatch.setattr(grid_module.time, "perf_counter", lambda: next(clock))
    run = grid.run(grid.start(CELLS))
    assert grid.calls == ["b", "c"]
    assert json.loads((tmp_path / "b.json").read_text())["seconds"] == 202.5  # the cell's own time
    counts = run.counts()
    assert (counts["done"], counts["run_now"], counts["resumed"]) == (3, 2, 1)
    assert counts["seconds"] == 4.0 + 202.5 + 0.25


def test_counts_of_a_run_by_hand():
    cells = [Toy(name) for name in "abcde"]
    records = {cells[0]: {"seconds": 1.5}, cells[1]: {"seconds": 2.0}, cells[2]: {}, cells[3]: {"seconds": 4.0},
               cells[4]: None}  # c: a record written before seconds were kept
    counts = grid_module.GridRun(cells, records, {cells[4]: "no weights"}, run_now=1).counts()
    assert (counts["planned"], counts["done"], counts["run_now"], counts["resumed"]) == (5, 4, 1, 3)
    assert counts["seconds"] == 7.5 and counts["blocked"] == {"no weights": 1}


def test_the_estimate_scales_a_measured_rate_by_units_and_names_the_most_specific_key(tmp_path):
    class TwoKeys(ToyGrid):
        def rate_keys(self, cell: Toy):
            return [(cell.name, f"measured on {cell.name}"), (cell.group, f"measured on group {cell.group}")]

    grid = TwoKeys(tmp_path, {"a": 1, "big": 2})
    write_json_atomic(tmp_path / "a.json", {"origin": grid.origin(Toy("a")), "seconds": 5.0, "units": 2.0})
    run = grid.start([Toy("a"), Toy("big")])
    seconds, sources = grid.estimate_seconds(run, run.todo(), (3.0, "prior"))
    assert seconds == pytest.approx(5.0 / 2.0 * 2)  # big: two units at group g's 2.5 s per unit
    assert sources == {"big": "measured on group g"}
    plain = Grid.units(grid, Toy("big"))  # a study that does not say: every cell is one unit
    assert plain == 1.0


def test_a_failure_names_its_group_only_when_the_cell_has_one(tmp_path, caplog):
    class OwnGroup(ToyGrid):
        def failure_group(self, cell: Toy):
            return cell if cell.name == "a" else cell.group

    grid = OwnGroup(tmp_path, {"a": 1, "b": 2, "c": 3}, fail=("a", "c"))
    with caplog.at_level("ERROR"):
        grid.run(grid.start(CELLS))
    messages = [record.getMessage() for record in caplog.records]
    assert [", the rest of its group is stopped" in message for message in messages] == [False, True]


def test_an_atomic_write_that_fails_leaves_the_old_file(tmp_path):
    path = tmp_path / "sub" / "record.json"
    write_json_atomic(path, {"b": 1, "a": [Path("x")]})
    assert path.read_text() == '{\n  "a": [\n    "x"\n  ],\n  "b": 1\n}\n'
    with pytest.raises(ValueError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise ValueError("killed mid-write")
    assert json.loads(path.read_text()) == {"a": ["x"], "b": 1}
