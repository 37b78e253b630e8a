"""Generated mutants: cosmic-ray mutates one module in place and runs the tests that cover it.

    python tools/mutants.py check                                   # the configuration is valid (CI)
    python tools/mutants.py run openclip_unimlip/evaluation/retrieval.py   # one module (or several; none: all)
    python tools/mutants.py resume openclip_unimlip/evaluation/retrieval.py  # its unrun mutants and survivors
    python tools/mutants.py resume --survivors-only openclip_unimlip/evaluation/retrieval.py  # survivors only
    python tools/mutants.py report openclip_unimlip/evaluation/retrieval.py  # the table of its last session

What is specific to this package is configuration, in ``tools/mutants.toml``: for each module the
test files a developer runs for it, the seconds a mutant may take on two loaded cores, and the
equivalent mutants (operator and source line, each with its reason). cosmic-ray generates the
mutants, applies each to the checkout itself (so the tests' ``../shared/data`` beside the checkout
stays where they look for it), runs the module's tests and restores the file. Sessions are kept
in ``runs/mutants/`` (ignored by git). cosmic-ray runs a session's mutants in random order, so a
session stopped early is a random sample of them; ``resume`` runs the rest, and the survivors again
(after tests were added: adding tests never revives a killed mutant). The table counts killed (a
test failed), survived (every test passed), equivalent (survivors configured so, with a reason:
a killed mutant is never relabelled) and timeout (killed by the per-mutant limit).
"""
import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import tomllib

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "tools" / "mutants.toml"
SESSIONS = REPO / "runs" / "mutants"
PACKAGE = "openclip_unimlip"
# every cosmic-ray operator is a plugin of the "core" provider, named core/<Operator>[_<From>_<To>]
_OPERATOR_PATTERN = re.compile(r"core/[A-Z]")
_MODULE_KEYS = {"path", "tests", "timeout", "equivalent"}
_EQUIVALENT_KEYS = {"operator", "line", "reason"}
_HELD = "held back: resume --survivors-only"  # a never-run mutant's placeholder result during such a run


class ConfigError(ValueError):
    """A configuration that names a missing file, an unknown key or an ambiguous line."""


@dataclass(frozen=True)
class Equivalent:
    """Survivors of ``operator`` (a regular expression over cosmic-ray's operator names) on a source
    line containing ``line``: equivalent to the original, for ``reason``."""
    operator: str
    line: str
    reason: str


@dataclass(frozen=True)
class ModuleConfig:
    path: str  # relative to the repository root
    tests: Sequence[str]
    timeout: float  # seconds per mutant
    equivalent: Sequence[Equivalent] = field(default_factory=tuple)

    def test_command(self, python: str = sys.executable, warm_socket: Optional[Path] = None,
                     line_map: Optional[Path] = None) -> str:
        """The command cosmic-ray runs per mutant: pytest in a fresh interpreter, or (``warm_socket``)
        in a fork of the warm server listening there (tools/warm_pytest.py), the tests that ran the
        mutated lines first where ``line_map`` records them."""
        # -x: the first failing test kills the mutant, the rest need not run
        pytest_args = ["-x", "-q", "-p", "no:cacheprovider", *self.tests]
        if warm_socket is None:
            return " ".join([python, "-m", "pytest", *pytest_args])
        lines = [] if line_map is None else ["--lines", str(line_map)]
        return " ".join([python, str(REPO / "tools" / "warm_pytest.py"), "run", *lines, str(warm_socket), "--",
                         *pytest_args])

    def dotted_name(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")

    def session(self) -> Path:
        return SESSIONS / (self.dotted_name() + ".sqlite")


def load_config(path: Path = CONFIG, root: Path = REPO) -> Dict[str, ModuleConfig]:
    """The configured modules by path, each checked against ``root``: the module and its test files
    exist, and each equivalent's line is found in the module."""
    data = tomllib.loads(path.read_text())
    modules = {}
    for entry in data.get("module", []):
        name = entry.get("path", "?")
        if set(entry) - _MODULE_KEYS or not {"path", "tests", "timeout"} <= set(entry):
            raise ConfigError(f"{path}: module {name}: keys {sorted(entry)}, expected path, tests, timeout "
                              "and optionally equivalent")
        if name in modules:
            raise ConfigError(f"{path}: module {name} configured twice")
        module_file = root / name
        if not (name.startswith(f"{PACKAGE}/") and name.endswith(".py") and module_file.is_file()):
            raise ConfigError(f"{path}: {name} is not a module of the package")
        if not entry["tests"]:
            raise ConfigError(f"{path}: module {name} names no test file")
        for test in entry["tests"]:
            file = test.split("::")[0]  # a file, or one test of it (pytest's node id)
            if not (file.startswith("tests/") and Path(file).name.startswith("test_") and (root / file).is_file()):
                raise ConfigError(f"{path}: module {name}: {test} is not a test file")
        if not float(entry["timeout"]) > 0:
            raise ConfigError(f"{path}: module {name}: timeout must be positive")
        source_lines = module_file.read_text().splitlines()
        equivalents = []
        for item in entry.get("equivalent", []):
            if set(item) != _EQUIVALENT_KEYS or not item["reason"].strip():
                raise ConfigError(f"{path}: module {name}: an equivalent needs exactly operator, line and a reason, "
                                  f"got {sorted(item)}")
            if not _OPERATOR_PATTERN.match(item["operator"]):
                raise ConfigError(f"{path}: module {name}: {item['operator']!r} names no cosmic-ray core operator")
            re.compile(item["operator"])
            if not any(item["line"] in line for line in source_lines):
                raise ConfigError(f"{path}: module {name}: {item['line']!r} is on no line of the module")
            equivalents.append(Equivalent(item["operator"], item["line"], item["reason"]))
        modules[name] = ModuleConfig(name, tuple(entry["tests"]), float(entry["timeout"]), tuple(equivalents))
    if not modules:
        raise ConfigError(f"{path}: no [[module]] tables")
    return modules


def test_environment(root: Path = REPO) -> Dict[str, str]:
    """The environment the tests run in: this checkout first on ``PYTHONPATH``, so the mutated file is
    the one imported even when the editable install points at another checkout."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _check_imported_from(root: Path, env: Dict[str, str]) -> None:
    imported = subprocess.run([sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"], cwd=root,
                              env=env, capture_output=True, text=True, check=True).stdout.strip()
    if Path(imported).resolve() != (root / PACKAGE / "__init__.py").resolve():
        raise SystemExit(f"the tests would import {imported}, not this checkout's package: mutants would all survive")


def record_line_map(module: ModuleConfig, root: Path, env: Dict[str, str], map_file: Path) -> Path:
    """Run ``module``'s tests once under coverage with a context per test (pytest-cov's
    ``--cov-context=test``) and write to ``map_file`` which tests ran each of its lines: every
    physical line of a statement counts as its first line. A line run outside any test ran at
    import (collection imports the module). tools/warm_pytest.py reads the map."""
    from coverage import CoverageData
    from coverage.parser import PythonParser

    data_file = map_file.with_suffix(".coverage")
    source = (root / module.path).read_text()
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                *module.tests], cwd=root, env=env, capture_output=True, text=True, check=True)
    order = [line for line in collected.stdout.splitlines() if "::" in line]
    measured = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               f"--cov={module.dotted_name()}", "--cov-context=test", "--cov-report=", *module.tests],
                              cwd=root, env=dict(env, COVERAGE_FILE=str(data_file)), capture_output=True, text=True)
    if measured.returncode != 0:
        raise SystemExit(f"the unmutated tests fail under coverage:\n{measured.stdout[-3000:]}")
    data = CoverageData(str(data_file))
    data.read()
    files = [f for f in data.measured_files() if Path(f).resolve() == (root / module.path).resolve()]
    contexts = data.contexts_by_lineno(files[0]) if files else {}
    parser = PythonParser(text=source)
    parser.parse_source()
    by_line: Dict[int, List[str]] = {}
    import_time: List[int] = []
    for line in range(1, len(source.splitlines()) + 1):
        ran_in = contexts.get(parser.first_line(line), [])
        if "" in ran_in:
            import_time.append(line)
        tests = {context.rsplit("|", 1)[0] for context in ran_in if context}
        if tests:
            by_line[line] = [test for test in order if test in tests]
    map_file.write_text(json.dumps({"module": module.path, "source": source, "tests": list(module.tests),
                                    "order": order, "lines": by_line, "import_time": import_time}))
    data_file.unlink()
    return map_file


def _cosmic_ray_config(module: ModuleConfig, warm_socket: Optional[Path], line_map: Optional[Path]) -> str:
    return "\n".join([
        "[cosmic-ray]",
        f'module-path = "{module.path}"',
        f"timeout = {module.timeout}",
        "excluded-modules = []",
        f'test-command = "{module.test_command(warm_socket=warm_socket, line_map=line_map)}"',
        "[cosmic-ray.distributor]",
        'name = "local"',
        "",
    ])


def _equivalent_reason(module: ModuleConfig, operator: str, diff: str) -> Optional[str]:
    """The reason a survivor is equivalent, if ``module`` configures one for its operator and for
    the source line its diff removes."""
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    for equivalent in module.equivalent:
        if re.fullmatch(equivalent.operator, operator) and any(equivalent.line in line for line in removed):
            return equivalent.reason
    return None


def _run_guarded(command: List[str], module_file: Path, root: Path, env: Dict[str, str]) -> None:
    """Run ``command`` (which mutates ``module_file`` in place), and put the file back as it was
    whatever happens: cosmic-ray restores it after each mutant, but not when it is itself killed."""
    original = module_file.read_bytes()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    process = subprocess.Popen(command, cwd=root, env=env)
    try:
        if process.wait() != 0:
            raise SystemExit(f"{' '.join(command)} exited with {process.returncode}")
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()
        signal.signal(signal.SIGTERM, previous)
        if module_file.read_bytes() != original:
            module_file.write_bytes(original)
            print(f"restored {module_file} (a mutant was left in it)", file=sys.stderr)


@dataclass
class Score:
    module: str
    killed: int = 0
    survived: int = 0
    equivalent: int = 0  # survivors configured as equivalent
    timeout: int = 0
    incompetent: int = 0  # cosmic-ray could not run the mutant at all
    pending: int = 0
    seconds: Optional[float] = None
    survivors: List[str] = field(default_factory=list)  # the diffs

    @property
    def percent_killed(self) -> float:
        tested = self.killed + self.timeout + self.survived
        return 100.0 * (self.killed + self.timeout) / tested if tested else float("nan")


def score(session: Path, module: ModuleConfig) -> Score:
    """The outcome of every mutant of ``session``; a survivor that ``module`` configures as
    equivalent counts as equivalent."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome

    seconds = session.with_suffix(".seconds")
    result = Score(module.path, seconds=float(seconds.read_text()) if seconds.is_file() else None)
    with use_db(str(session), WorkDB.Mode.open) as db:
        results = dict(db.results)
        for item in db.work_items:
            outcome, mutation = results.get(item.job_id), item.mutations[0]
            if outcome is None or outcome.output == _HELD:
                result.pending += 1
            elif outcome.test_outcome == TestOutcome.SURVIVED:
                if _equivalent_reason(module, mutation.operator_name, outcome.diff) is not None:
                    result.equivalent += 1
                else:
                    result.survived += 1
                    result.survivors.append(f"line {mutation.start_pos[0]} {mutation.operator_name}\n{outcome.diff}")
            elif outcome.test_outcome == TestOutcome.KILLED:
                if outcome.output == "timeout":
                    result.timeout += 1
                else:
                    result.killed += 1
            else:
                result.incompetent += 1
    return result


def format_table(scores: Sequence[Score]) -> str:
    header = (f"{'module':<52}{'mutants':>8}{'killed':>8}{'survived':>9}{'equivalent':>11}{'timeout':>8}"
              f"{'other':>6}{'% killed':>9}{'time (s)':>9}")
    rows = [header, "-" * len(header)]
    for s in scores:
        total = s.killed + s.survived + s.equivalent + s.timeout + s.incompetent + s.pending
        seconds = "" if s.seconds is None else f"{s.seconds:.0f}"
        rows.append(f"{s.module:<52}{total:>8}{s.killed:>8}{s.survived:>9}{s.equivalent:>11}{s.timeout:>8}"
                    f"{s.incompetent + s.pending:>6}{s.percent_killed:>9.1f}{seconds:>9}")
    return "\n".join(rows)


def _reopen_survivors(session: Path, module: ModuleConfig, hold_unrun: bool) -> None:
    """Make the session's survivors that are not configured equivalent pending again, and
    (``hold_unrun``) keep its never-run mutants out of the next ``exec`` (cosmic-ray runs every
    pending one) under a placeholder result."""
    with sqlite3.connect(session) as db:  # cosmic-ray's schema: a work_results row per finished mutant
        survivors = {job for job, operator, diff in db.execute(
            "SELECT r.job_id, m.operator_name, r.diff FROM work_results r JOIN mutation_specs m USING (job_id) "
            "WHERE r.test_outcome = 'SURVIVED'") if _equivalent_reason(module, operator, diff) is None}
        db.executemany("DELETE FROM work_results WHERE job_id = ?", [(job,) for job in survivors])
        if hold_unrun:
            unrun = [job for (job,) in db.execute(
                "SELECT job_id FROM work_items WHERE job_id NOT IN (SELECT job_id FROM work_results)")]
            db.executemany("INSERT INTO work_results (job_id, worker_outcome, output) VALUES (?, 'SKIPPED', ?)",
                           [(job, _HELD) for job in unrun if job not in survivors])


def _warm_server(module: ModuleConfig, root: Path, env: Dict[str, str]) -> Optional[subprocess.Popen]:
    """A warm pytest server for ``module``'s mutants, or None where importing the preloaded libraries
    already imports the module: a fork would test the unmutated copy, so those mutants run in fresh
    interpreters. A module that importing OpenCLIP imports (the seam's patches, what they import)
    gets a server that preloads every library but OpenCLIP: each fork imports OpenCLIP and the
    mutated module from disk."""
    warm = [sys.executable, str(root / "tools" / "warm_pytest.py")]
    for preload in ([], ["--without-openclip"]):
        preloaded = subprocess.run([*warm, "preloaded", *preload], cwd=root, env=env, capture_output=True,
                                   text=True, check=True).stdout.split()
        if module.dotted_name() not in preloaded:
            break
    else:
        print(f"{module.path}: imported with its server's libraries, so each mutant runs in a fresh interpreter",
              flush=True)
        return None
    if preload:
        print(f"{module.path}: imported with OpenCLIP, so its server preloads every library but OpenCLIP", flush=True)
    server = subprocess.Popen([*warm, "serve", str(module.session().with_suffix(".sock")), *preload], cwd=root,
                              env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    if "ready" not in server.stdout.readline():
        server.kill()
        raise SystemExit(f"the warm pytest server did not start (exit status {server.wait()})")
    return server


def run_module(module: ModuleConfig, root: Path = REPO, resume: bool = False, survivors_only: bool = False) -> None:
    """Run ``module``'s mutants: a fresh session, or (``resume``) the last session's mutants that
    survived and, unless ``survivors_only``, those never run. The unmutated tests must pass first,
    in a fresh interpreter and through the warm server."""
    session, config_file = module.session(), module.session().with_suffix(".toml")
    if resume and not session.is_file():
        raise SystemExit(f"no session for {module.path} to resume: run it first")
    env = test_environment(root)
    _check_imported_from(root, env)
    session.parent.mkdir(parents=True, exist_ok=True)
    server = _warm_server(module, root, env)
    try:
        warm_socket = None if server is None else session.with_suffix(".sock")
        line_map = None if server is None else record_line_map(module, root, env, session.with_suffix(".lines.json"))
        for command in sorted({module.test_command(),
                               module.test_command(warm_socket=warm_socket, line_map=line_map)}):
            started = time.monotonic()
            baseline = subprocess.run(command.split(), cwd=root, env=env, capture_output=True, text=True)
            if baseline.returncode != 0:
                raise SystemExit(f"the unmutated tests fail ({command}):\n{baseline.stdout[-3000:]}")
            print(f"{module.path}: baseline passed in {time.monotonic() - started:.0f} s: {command}", flush=True)
        seconds_file = session.with_suffix(".seconds")
        cosmic_ray = [sys.executable, "-m", "cosmic_ray.cli"]
        config_file.write_text(_cosmic_ray_config(module, warm_socket, line_map))
        if resume:
            _reopen_survivors(session, module, hold_unrun=survivors_only)
        else:
            session.unlink(missing_ok=True)
            seconds_file.unlink(missing_ok=True)
            subprocess.run([*cosmic_ray, "init", str(config_file), str(session)], cwd=root, env=env, check=True)
        started = time.monotonic()
        try:
            _run_guarded([*cosmic_ray, "exec", str(config_file), str(session)], root / module.path, root, env)
        finally:  # the seconds the session's mutants took, over all its runs, stopped ones included
            spent = float(seconds_file.read_text()) if seconds_file.is_file() else 0.0
            seconds_file.write_text(f"{spent + time.monotonic() - started:.0f}\n")
            with sqlite3.connect(session) as db:
                db.execute("DELETE FROM work_results WHERE output = ?", (_HELD,))
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _selected(modules: Dict[str, ModuleConfig], names: Sequence[str]) -> List[ModuleConfig]:
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise SystemExit(f"not configured in {CONFIG.relative_to(REPO)}: {', '.join(unknown)}")
    return [modules[n] for n in names] if names else list(modules.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("check", "run", "resume", "report"))
    parser.add_argument("modules", nargs="*", help="module paths as configured (default: every one)")
    parser.add_argument("--survivors-only", action="store_true",
                        help="resume: run the survivors again, not the mutants never run")
    args = parser.parse_intermixed_args(argv)  # options before or after the modules
    modules = load_config()
    if args.command == "check":
        print(f"{len(modules)} modules configured, every module and test file present")
        return 0
    scores = []
    for module in _selected(modules, args.modules):
        if args.command in ("run", "resume"):
            run_module(module, resume=args.command == "resume", survivors_only=args.survivors_only)
        elif not module.session().is_file():
            raise SystemExit(f"no session for {module.path}: run it first")
        scores.append(score(module.session(), module))
    for s in scores:
        for survivor in s.survivors:
            print(f"survived: {s.module} {survivor}")
    print(format_table(scores))
    return 1 if any(s.survived or s.incompetent or s.pending for s in scores) else 0


if __name__ == "__main__":
    sys.exit(main())
