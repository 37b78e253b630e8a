"""Mutation check: does a one-line break of the method fail a test?

Each mutation names a behaviour, a code snippet that implements it and a replacement that
breaks it. For each one a fresh copy of the source tree is made, the snippet is replaced in the
copy's package and the tests (the fast suite, or the files the mutation names) run on the copy.
A break no test notices has *survived*: the suite does not pin that behaviour.

Snippets are found by content anywhere in the package, never by file or line, so the list keeps
working when modules move; a snippet that is not found exactly once is an error, never a silent
pass. The copy, not the editable install, is what the tests import: it goes first on
``PYTHONPATH`` (the ``.pth`` autoload hook then also imports it), which is checked for every run.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

PACKAGE = "openclip_unimlip"
FAST_SUITE = ("tests",)
# outside a git checkout, not copied: environments, VCS, caches and run outputs
_SKIPPED_AT_TOP = {".git", ".venv", "data", "runs", "logs", "reports", "build", "dist"}
_SKIPPED_ANYWHERE = {"__pycache__", ".pytest_cache"}


class MutationError(ValueError):
    """A mutation that cannot be applied as written (stale snippet, bad file)."""


@dataclass(frozen=True)
class Mutation:
    name: str
    breaks: str  # the behaviour the mutation breaks
    find: str  # code that occurs exactly once in the package
    replace: str
    tests: Sequence[str] = FAST_SUITE  # test paths relative to the repository root

    def __post_init__(self):
        if not self.find:
            raise MutationError(f"mutation {self.name!r}: empty 'find'")
        if self.find == self.replace:
            raise MutationError(f"mutation {self.name!r}: 'replace' equals 'find'")


@dataclass
class Outcome:
    mutation: Mutation
    # caught, survived, timeout (counts as caught), error (the mutation is broken); baseline: passed, failed
    status: str
    seconds: float
    detail: str = ""
    module: str = ""  # where the snippet was found

    @property
    def caught(self) -> bool:
        return self.status in ("caught", "timeout")


def mutation_files(path: Path) -> List[Path]:
    """The TOML files of a mutation list: ``path`` itself, or every ``*.toml`` in the folder ``path``
    (one file per area, so areas are added without editing one shared file)."""
    path = Path(path)
    files = sorted(path.glob("*.toml")) if path.is_dir() else [path]
    if not files:
        raise MutationError(f"no *.toml mutation list in {path}")
    return files


def load_mutations(path: Path) -> List[Mutation]:
    """Mutations from a TOML file, or a folder of them, of ``[[mutation]]`` tables (keys: name,
    breaks, find, replace, tests); names are unique across all the files."""
    try:
        import tomllib
    except ImportError as exc:  # Python 3.10
        raise SystemExit("the mutation check reads TOML with tomllib: it needs Python >= 3.11") from exc
    mutations, seen = [], set()
    for file in mutation_files(path):
        for index, entry in enumerate(tomllib.loads(file.read_text()).get("mutation", [])):
            missing = {"name", "breaks", "find", "replace"} - set(entry)
            unknown = set(entry) - {"name", "breaks", "find", "replace", "tests"}
            if missing or unknown:
                raise MutationError(f"{file}: mutation #{index + 1} ({entry.get('name', '?')}): "
                                    f"missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
            if entry["name"] in seen:
                raise MutationError(f"{file}: duplicate mutation name {entry['name']!r}")
            seen.add(entry["name"])
            tests = tuple(entry.get("tests", FAST_SUITE))
            mutations.append(Mutation(entry["name"], entry["breaks"], entry["find"], entry["replace"], tests))
    if not mutations:
        raise MutationError(f"{path}: no [[mutation]] entries")
    return mutations


def source_files(root: Path) -> List[Path]:
    """The source tree's files, relative to ``root``: what git tracks or would track (ignored run
    outputs, environments and caches left out); outside a git checkout, every file but those."""
    if (root / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                                capture_output=True, text=True, check=True)
        names = [Path(n) for n in listed.stdout.split("\0") if n]
    else:
        names = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
        names = [n for n in names if not (set(n.parts[:1]) & _SKIPPED_AT_TOP or set(n.parts) & _SKIPPED_ANYWHERE
                                          or n.suffix == ".pyc")]
    return [n for n in names if (root / n).is_file()]  # tracked files deleted in the work tree drop out


def copy_tree(root: Path, destination: Path) -> Path:
    """Copy the source tree (package, configs, tests, scripts, docs) of ``root`` to ``destination``."""
    for name in source_files(root):
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, destination / name)
    return destination


def mutable_files(package_dir: Path) -> List[Path]:
    """Where a break may be: the package's Python files (the shipped model configs are pinned field by
    field, and every one-edit change of them is generated, by tests/test_model_configs.py)."""
    return sorted(package_dir.rglob("*.py"))


def locate(package_dir: Path, snippet: str) -> Path:
    """The one package file containing ``snippet`` exactly once; MutationError otherwise."""
    hits = []
    for path in mutable_files(package_dir):
        count = path.read_text().count(snippet)
        if count:
            hits.append((path, count))
    if len(hits) != 1 or hits[0][1] != 1:
        where = ", ".join(f"{p.relative_to(package_dir.parent)} x{c}" for p, c in hits) or "nowhere"
        raise MutationError(f"snippet must occur exactly once in {package_dir.name}/, "
                            f"found {where}:\n{snippet}")
    return hits[0][0]


def mutated_source(package_dir: Path, mutation: Mutation) -> Tuple[Path, str]:
    """(the file holding the mutation's snippet, its text with the break applied); nothing is written."""
    path = locate(package_dir, mutation.find)
    source = path.read_text().replace(mutation.find, mutation.replace)
    try:
        compile(source, str(path), "exec")
    except (SyntaxError, ValueError) as exc:
        raise MutationError(f"mutation {mutation.name!r} makes {path.name} invalid Python: {exc}") from exc
    return path, source


def apply(package_dir: Path, mutation: Mutation) -> Path:
    """Replace the mutation's snippet in the package under ``package_dir``; returns the edited file."""
    path, source = mutated_source(package_dir, mutation)
    path.write_text(source)
    return path


def copy_environment(copy_root: Path) -> dict:
    """Environment in which ``copy_root``'s package shadows the installed (editable) one."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(copy_root), PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1")
    return env


def imported_origin(copy_root: Path, module: str) -> Path:
    """Where a Python started like the tests' imports ``module`` from (without importing torch:
    ``find_spec`` imports only the parent package, which is lazy)."""
    probe = f"import importlib.util; print(importlib.util.find_spec({module!r}).origin)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=copy_root, env=copy_environment(copy_root),
                            capture_output=True, text=True, check=True)
    return Path(result.stdout.strip().splitlines()[-1]).resolve()


def _module_name(copy_root: Path, path: Path) -> str:
    return ".".join(path.relative_to(copy_root).with_suffix("").parts)


def expand_tests(root: Path, tests: Sequence[str]) -> List[str]:
    """Test paths under ``root``: a glob keeps the files it matches (none is fine: a pin file may
    not exist yet), a plain path or node id must exist."""
    expanded: List[str] = []
    for entry in tests:
        if any(c in entry for c in "*?["):
            expanded += [p.relative_to(root).as_posix() for p in sorted(root.glob(entry))]
        elif (root / entry.split("::")[0]).exists():
            expanded.append(entry)
        else:
            raise MutationError(f"test path {entry!r} does not exist under {root}")
    if not expanded:
        raise MutationError(f"no test file matches {list(tests)} under {root}")
    return list(dict.fromkeys(expanded))


def run_tests(copy_root: Path, tests: Sequence[str], marker: str, timeout: float) -> subprocess.CompletedProcess:
    tests = expand_tests(copy_root, tests)
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", marker, *tests]
    return subprocess.run(command, cwd=copy_root, env=copy_environment(copy_root), capture_output=True,
                          text=True, timeout=timeout)


def _tail(result: subprocess.CompletedProcess, lines: int = 15) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-lines:])


def _run_on_copy(root: Path, mutation: Optional[Mutation], tests: Sequence[str], marker: str,
                 timeout: float) -> Tuple[Optional[int], str, str]:
    """(pytest's exit code or None on timeout, output tail, mutated module) on a fresh copy of ``root``."""
    with tempfile.TemporaryDirectory(prefix="unimlip-mutation-") as tmp:
        copy_root = copy_tree(root, Path(tmp) / "src")
        mutated = apply(copy_root / PACKAGE, mutation) if mutation else None
        if mutated is not None and mutated.suffix == ".py":
            probe, module = mutated, _module_name(copy_root, mutated)
            origin = imported_origin(copy_root, module)
        else:  # unmutated, or a model config, read from beside the imported package: the copy's must be it
            probe = copy_root / PACKAGE / "__init__.py"
            module = mutated.relative_to(copy_root).as_posix() if mutated is not None else PACKAGE
            origin = imported_origin(copy_root, PACKAGE)
        if origin != probe.resolve():
            raise RuntimeError(f"the tests would import {origin}, not the copy {probe}: "
                               "check PYTHONPATH and the editable install")
        try:
            result = run_tests(copy_root, tests, marker, timeout)
        except subprocess.TimeoutExpired:
            return None, f"tests ran over {timeout:.0f} s", module
    return result.returncode, _tail(result, 15 if result.returncode else 2), module


def check(root: Path, mutation: Mutation, marker: str = "not slow", timeout: float = 900.0) -> Outcome:
    """Run the mutation's tests on a fresh copy of ``root`` with the mutation applied."""
    start = time.perf_counter()
    try:
        code, tail, module = _run_on_copy(root, mutation, mutation.tests, marker, timeout)
    except MutationError as exc:
        return Outcome(mutation, "error", time.perf_counter() - start, str(exc))
    # pytest: 0 all passed, 1 a test failed, 2 collection/usage error, 5 nothing collected
    status = {None: "timeout", 0: "survived", 1: "caught"}.get(code, "error")
    if status == "error":
        tail = f"pytest exit code {code}\n{tail}"
    return Outcome(mutation, status, time.perf_counter() - start, tail, module)


def baseline(root: Path, tests: Sequence[str], marker: str = "not slow", timeout: float = 1800.0) -> Outcome:
    """The unmutated copy on ``tests``: status "passed" or "failed" (a failing baseline makes
    every break look caught)."""
    start = time.perf_counter()
    unmutated = Mutation("baseline", "the unmutated copy passes", "(none)", "(unchanged)", tuple(tests))
    code, tail, _ = _run_on_copy(root, None, tests, marker, timeout)
    return Outcome(unmutated, "passed" if code == 0 else "failed", time.perf_counter() - start, tail, PACKAGE)


def run_all(root: Path, mutations: Iterable[Mutation], marker: str = "not slow", timeout: float = 900.0,
            jobs: int = 1, on_done: Callable[[Outcome], None] = lambda outcome: None) -> Iterator[Outcome]:
    """Check every mutation (``jobs`` at a time), yielding outcomes in the list's order."""
    mutations = list(mutations)
    if jobs <= 1:
        for mutation in mutations:
            outcome = check(root, mutation, marker, timeout)
            on_done(outcome)
            yield outcome
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(check, root, m, marker, timeout) for m in mutations]
        for future in futures:
            future.add_done_callback(lambda f: on_done(f.result()))
        for future in futures:
            yield future.result()


def union_of_tests(mutations: Iterable[Mutation]) -> List[str]:
    """Every test path the mutations run, in first-seen order (the baseline runs all of them)."""
    paths: List[str] = []
    for mutation in mutations:
        paths += [t for t in mutation.tests if t not in paths]
    if any(t in FAST_SUITE for t in paths):
        return list(FAST_SUITE)
    return paths


def format_table(outcomes: Sequence[Outcome]) -> str:
    """A Markdown table: name | behaviour it breaks | result | seconds."""
    rows = ["| break | behaviour it breaks | result | time (s) |", "|---|---|---|---|"]
    for o in outcomes:
        rows.append(f"| {o.mutation.name} | {o.mutation.breaks} | {o.status} | {o.seconds:.0f} |")
    caught = sum(o.caught for o in outcomes)
    rows.append(f"\n{caught}/{len(outcomes)} caught, {sum(o.status == 'survived' for o in outcomes)} survived, "
                f"{sum(o.status == 'error' for o in outcomes)} errors, {sum(o.seconds for o in outcomes):.0f} s in all")
    return "\n".join(rows)
