"""Resume means the same run (issue 34): a benchmark cell's settings hash must hold every preset
setting that shapes its numbers, so that a changed setting re-runs exactly the cells it shapes.

The specification below is written from the tasks' ``run`` code, read line by line: which part of
the preset each task reads, and which of the settings it reads do not change a number (each with
its reason). The test changes every leaf of every shipped preset in turn and checks, for every
task, that the task's hashed recipe changes exactly when the specification says it must. A new
preset field fails here until it is hashed or listed with its reason.
"""
from dataclasses import fields, is_dataclass, replace

import pytest

from openclip_unimlip.studies.benchmark import engine
from openclip_unimlip.studies.benchmark.tasks import tasks_for

DATASETS = ("roco", "medpix", "chexpert", "mimic", "nih", "vqa-rad", "slake")

# the preset section each task kind reads
SECTION = {"retrieval": "retrieval", "classification": "chest_xray", "linear-probe": "chest_xray",
           "classification-medpix": "medpix", "linear-probe-medpix": "medpix", "vqa": "vqa"}

# settings a task reads that do not change its numbers
NOT_SHAPING = {
    # batches of an eval-mode forward pass: the same features whatever their size
    "retrieval": {"retrieval.batch_size"},
    "linear-probe": {"chest_xray.batch_sizes.{dataset}", "chest_xray.lr", "chest_xray.max_epochs",
                     "chest_xray.patience"},  # and the fine-tune's training settings, which it never reads
    "linear-probe-medpix": {"medpix.feature_batch_size", "medpix.finetune.*"},
    "classification-medpix": {"medpix.feature_batch_size", "medpix.probe_c_grid",
                              # the data loaders' processes; the runtime's precision is hashed for every cell
                              "medpix.finetune.workers", "medpix.finetune.precision"},
    "classification": {"chest_xray.probe_c_grid"},
}
# per dataset: VQA-RAD has no language choice, SLAKE no VQA-RAD split
NOT_READ_BY_DATASET = {"vqa-rad": {"vqa.language"}, "slake": {"vqa.vqa_rad_split"}}
# maps keyed by dataset: an entry shapes only its own dataset's cells
PER_DATASET = ("chest_xray.batch_sizes.", "chest_xray.dataset_protocols.")


def _leaves(value, path=""):
    """(dotted path, value) of every leaf of a preset section; mappings are expanded by key."""
    if is_dataclass(value):
        for f in fields(value):
            yield from _leaves(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}")
    else:
        yield path, value


def _other(value):
    """A value of the same kind that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, tuple):
        return value + (123.0,)
    if value is None:
        return 7
    raise TypeError(f"no other value for {value!r}")


def _changed(obj, parts, value):
    head, rest = parts[0], parts[1:]
    if isinstance(obj, dict):
        return {**obj, head: _changed(obj[head], rest, value) if rest else value}
    return replace(obj, **{head: _changed(getattr(obj, head), rest, value) if rest else value})


def _kind(task) -> str:
    name = task.name.replace("-question-only", "")
    return "vqa" if name.startswith("vqa") else name.replace(f"-{task.dataset}", "") + (
        "-medpix" if task.dataset == "medpix" and "retrieval" not in name else "")


def _shapes(kind: str, dataset: str, path: str, preset) -> bool:
    """Whether, by the specification above, ``path`` shapes the numbers of a ``kind`` task on ``dataset``."""
    if path.split(".")[0] != SECTION[kind]:
        return False
    if any(path.startswith(prefix) and path != f"{prefix}{dataset}" for prefix in PER_DATASET):
        return False
    if path == "chest_xray.protocol" and dataset in preset.chest_xray.dataset_protocols:
        return False  # replaced by the dataset's own protocol (NIH: its official split)
    if path in NOT_READ_BY_DATASET.get(dataset, ()):
        return False
    for pattern in NOT_SHAPING.get(kind, ()):
        pattern = pattern.format(dataset=dataset)
        if path == pattern or (pattern.endswith(".*") and path.startswith(pattern[:-1])):
            return False
    return True


SECTIONS = ("retrieval", "chest_xray", "medpix", "vqa")


@pytest.mark.parametrize("preset", sorted(engine.PRESETS))
def test_every_setting_that_shapes_a_task_is_in_its_cells_hash(preset):
    base = engine.PRESETS[preset]
    tasks = [task for dataset in DATASETS for task in tasks_for(dataset)]
    assert {_kind(task) for task in tasks} == set(SECTION)
    checked, wrong = 0, []
    for section in SECTIONS:
        for path, value in _leaves(getattr(base, section), section):
            changed = _changed(base, path.split("."), _other(value))
            for task in tasks:
                expected = _shapes(_kind(task), task.dataset, path, base)
                if (task.recipe(changed) != task.recipe(base)) != expected:
                    wrong.append(f"{task.name}: {path} {'not ' if expected else ''}hashed")
                checked += 1
    assert not wrong, wrong
    assert checked > 300  # every leaf against every task


def test_the_cells_hash_holds_the_row_weights_limit_and_precision(tmp_path):
    """Beyond the preset section: the weights, the image limit and the runtime's precision are in
    every cell's hash; the device, the workers and the progress bar are not."""
    (tmp_path / "data").mkdir()
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")

    def origin(preset=engine.CI, runtime=engine.Runtime(), pretrained=None):
        config = engine.BenchmarkConfig([engine.ModelRow("tiny", "unimlip-tiny", pretrained)], tmp_path / "data",
                                        tmp_path / "out", preset, runtime=runtime)
        bench = engine.Benchmark(config)
        cell = engine.Cell("tiny", "retrieval-roco", None, 0)
        bench.tasks = {"retrieval-roco": engine.TaskState(tasks_for("roco")[0], _status(tmp_path), describe={})}
        return bench.origin(cell)

    base = origin()
    assert origin(runtime=engine.Runtime(device="cuda", workers=3, progress=False)) == base
    assert origin(runtime=engine.Runtime(precision="amp")) != base
    assert origin(preset=replace(engine.CI, limit=8)) != base
    with_weights = origin(pretrained=str(weights))
    assert with_weights != base
    weights.write_bytes(b"xy")  # the same path, another file
    assert origin(pretrained=str(weights)) != with_weights


def _status(tmp_path):
    from openclip_unimlip.data.releases import DatasetStatus

    return DatasetStatus("roco", "found", tmp_path / "data")
