"""A study's grid of cells, resumable: the benchmark's (model, task, fraction, seed) cells and the
ablation's (row, seed) runs both run here.

A study subclasses :class:`Grid` and says what a cell is: where its record lives
(:meth:`Grid.cell_path`), every setting that changes its numbers (:meth:`Grid.settings`) and how
to run it (:meth:`Grid.run_cell`). The grid does the rest, the same way for every study:

* **settings hash**: a cell's record holds the hash of its settings as ``origin``; a record whose
  hash differs from the current settings' (or that is damaged, or that the study finds incomplete)
  is stale, so a changed setting re-runs exactly the cells it shapes;
* **resume**: a cell with a current record is not run again; each record is written atomically
  (``data.atomic``) as soon as its cell finishes, so an interrupted grid loses at most the cell it
  was running;
* **failure isolation**: a cell that raises stops only itself and the not yet run cells of its
  failure group (:meth:`Grid.failure_group`, by default the cell alone), recorded with a one-line
  message for the report; ``KeyboardInterrupt`` still stops the grid;
* **progress**: one tqdm bar over the runnable cells, with the cell running now;
* **time estimate** (:meth:`Grid.estimate_seconds`): seconds per work unit measured on finished
  cells, else a prior.
"""
import hashlib
import json
import logging
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Dict, Generic, Hashable, List, Optional, Sequence, Tuple, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from openclip_unimlip.data.atomic import write_json_atomic

_logger = logging.getLogger(__name__)

Cell = TypeVar("Cell", bound=Hashable)
HASH_LENGTH = 16  # hex characters: 64 bits, no collision among a study's settings in practice
# Records written before the studies shared this grid hold the ablation's 12 characters: the first
# 12 of the same digest, so they stay current.
SHORTEST_STORED_HASH = 12


def settings_hash(settings: dict) -> str:
    """The hash of a cell's settings (JSON with sorted keys; a value JSON has no type for hashes as its ``str``)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:HASH_LENGTH]


def is_current(stored: Optional[str], current: str) -> bool:
    """Whether a record's stored ``origin`` is ``current``, the hash of the cell's settings now."""
    return isinstance(stored, str) and len(stored) >= SHORTEST_STORED_HASH and current.startswith(stored)


def read_record(path: Path, origin: str) -> Optional[dict]:
    """The record at ``path`` when it exists, parses and holds ``origin``; else None."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and is_current(record.get("origin"), origin) else None


def one_line(error: BaseException) -> str:
    """``RuntimeError: CUDA out of memory. Tried to ...``: the report's line for a failure."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


@dataclass
class GridRun(Generic[Cell]):
    """The state of a grid run: every planned cell's current record (None: not finished), the
    failures and how many cells were run now or stopped after a failure."""
    cells: List[Cell]
    records: Dict[Cell, Optional[dict]]
    blocked: Dict[Cell, str]  # cells that cannot run, with why (the study's Grid.blocked)
    failures: List[dict] = field(default_factory=list)
    run_now: int = 0
    stopped_after_failure: int = 0

    def done(self) -> List[dict]:
        return [record for record in self.records.values() if record is not None]

    def todo(self) -> List[Cell]:
        return [cell for cell in self.cells if self.records[cell] is None and cell not in self.blocked]

    def counts(self) -> dict:
        done = self.done()
        return {"planned": len(self.cells), "done": len(done), "run_now": self.run_now,
                "resumed": len(done) - self.run_now, "failed": len(self.failures),
                "stopped_after_failure": self.stopped_after_failure, "blocked": dict(Counter(self.blocked.values())),
                "seconds": sum(record.get("seconds", 0.0) for record in done)}


class Grid(Generic[Cell]):
    """The cells of one study. Subclasses give :meth:`cell_path`, :meth:`settings` and
    :meth:`run_cell`, and may refine the other hooks."""
    progress_label = "cells"  # the progress bar's name
    progress = True  # whether to show the bar

    # ------------------------------------------------------------------ what the study says
    def cell_path(self, cell: Cell) -> Path:
        """Where the cell's record is written."""
        raise NotImplementedError

    def settings(self, cell: Cell) -> dict:
        """Every setting that changes the cell's numbers (not the device, the workers, the output folder)."""
        raise NotImplementedError

    def run_cell(self, cell: Cell) -> dict:
        """Run the cell; its record (the grid adds ``origin``, ``seconds`` and ``units``)."""
        raise NotImplementedError

    def is_complete(self, cell: Cell, record: dict) -> bool:
        """Whether a current record is all the cell needs (e.g. its kept weights still exist)."""
        return True

    def blocked(self, cell: Cell) -> Optional[str]:
        """Why the cell cannot run now (e.g. its model did not load), or None."""
        return None

    def failure_group(self, cell: Cell) -> Hashable:
        """The cells a failure of ``cell`` stops (those of the same group not yet run)."""
        return cell

    def units(self, cell: Cell) -> float:
        """The cell's work, in the study's units, for the time estimate."""
        return 1.0

    def rate_keys(self, cell: Cell) -> Sequence[Tuple[Hashable, str]]:
        """Whose measured rate estimates the cell, most specific first: (key, how to say it)."""
        return ()

    def describe(self, cell: Cell) -> str:
        return str(cell)

    def summarize(self, record: dict) -> str:
        """The cell's numbers for the log line of a finished cell."""
        return ""

    def after_cell(self, run: GridRun) -> None:
        """Called after every cell tried (finished, failed or stopped), e.g. to rewrite the report."""

    # ------------------------------------------------------------------ what the grid does
    def origin(self, cell: Cell) -> str:
        return settings_hash(self.settings(cell))

    def finished(self, cell: Cell) -> Optional[dict]:
        """The cell's record when it finished with the current settings and is complete."""
        record = read_record(self.cell_path(cell), self.origin(cell))
        return record if record is not None and self.is_complete(cell, record) else None

    def start(self, cells: Sequence[Cell]) -> GridRun:
        """The run's state before any cell runs: what is finished, what cannot run."""
        blocked = {cell: reason for cell in cells if (reason := self.blocked(cell)) is not None}
        return GridRun(list(cells), {cell: self.finished(cell) for cell in cells}, blocked)

    def run(self, run: GridRun) -> GridRun:
        """Run every cell of ``run`` not yet finished, in order, writing each record as it finishes."""
        todo = run.todo()
        runnable = len(run.cells) - len(run.blocked)
        stopped: Dict[Hashable, str] = {}  # failure group -> the failure that stopped it
        with logging_redirect_tqdm(), tqdm(total=runnable, initial=runnable - len(todo), unit="cell",
                                           desc=self.progress_label, dynamic_ncols=True,
                                           disable=not self.progress) as bar:
            for cell in todo:
                group = self.failure_group(cell)
                if group in stopped:
                    run.stopped_after_failure += 1
                else:
                    bar.set_postfix_str(self.describe(cell))
                    self._run_one(run, cell, group, stopped)
                self.after_cell(run)
                bar.update(1)
        return run

    def _run_one(self, run: GridRun, cell: Cell, group: Hashable, stopped: Dict[Hashable, str]) -> None:
        start = time.perf_counter()
        try:
            result = self.run_cell(cell)
        except Exception as error:  # noqa: BLE001 - a failing cell stops only its own group
            message = one_line(error)
            run.failures.append({**_fields(cell), "message": message, "traceback": traceback.format_exc()})
            stopped[group] = message
            _logger.error("%s failed%s: %s", self.describe(cell),
                          "" if group == cell else ", the rest of its group is stopped", message)
            return
        record = {**result, "origin": self.origin(cell), "seconds": time.perf_counter() - start,
                  "units": self.units(cell)}
        write_json_atomic(self.cell_path(cell), record)
        run.records[cell] = record
        run.run_now += 1
        _logger.info("%s: %s (%.0f s)", self.describe(cell), self.summarize(record), record["seconds"])

    def estimate_seconds(self, run: GridRun, cells: Sequence[Cell],
                         prior: Tuple[float, str]) -> Tuple[float, Dict[Hashable, str]]:
        """(seconds for ``cells``, how each rate was found, by the cell's most specific rate key).
        A cell's rate is seconds per unit over the finished cells sharing its first rate key that
        has any, else ``prior`` (seconds per unit, how to say it)."""
        totals: Dict[Hashable, List[float]] = {}
        for cell, record in run.records.items():
            if record is not None and record.get("units"):
                for key, _ in self.rate_keys(cell):
                    entry = totals.setdefault(key, [0.0, 0.0])
                    entry[0] += record["seconds"]
                    entry[1] += record["units"]
        seconds, sources = 0.0, {}
        for cell in cells:
            keys = self.rate_keys(cell)
            measured = next(((totals[key], source) for key, source in keys if key in totals), None)
            (cell_seconds, units), source = measured or ((prior[0], 1.0), prior[1])
            if keys:
                sources[keys[0][0]] = source
            seconds += cell_seconds / units * self.units(cell)
        return seconds, sources


def _fields(cell) -> dict:
    """A cell's fields for its failure's record (a dataclass's fields, else the cell itself)."""
    return asdict(cell) if is_dataclass(cell) else {"cell": cell}
