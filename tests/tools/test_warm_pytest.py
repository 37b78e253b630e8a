"""tools/warm_pytest.py: pytest in a fork of a warm server gives what pytest in a fresh interpreter
gives (the reference: a plain ``python -m pytest`` subprocess), sees a module edited on disk between
two runs (the point of forking before the package is imported: each mutant is read afresh), and a
killed client takes its fork with it (cosmic-ray's timeout kills only the client's group)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools import warm_pytest

from paths import REPO

TOOL = str(REPO / "tools" / "warm_pytest.py")
TESTS = {
    "edited.py": "VALUE = 1\n",
    "test_passes.py": "def test_one():\n    assert 1 + 1 == 2\n",
    "test_fails.py": "def test_one():\n    assert 1 + 1 == 3\n",
    "test_reads_module.py": "from edited import VALUE\n\ndef test_value():\n    assert VALUE == 1\n",
    "test_sleeps.py": ("import os, time\nfrom pathlib import Path\n\ndef test_sleep():\n"
                       "    Path('fork.pid').write_text(str(os.getpid()))\n    time.sleep(120)\n"),
}


@pytest.fixture
def server(tmp_path):
    for name, text in TESTS.items():
        (tmp_path / name).write_text(text)
    socket_path = tmp_path / "warm.sock"
    # only pytest preloaded: the behaviour under test is the fork, not the import time
    process = subprocess.Popen([sys.executable, TOOL, "serve", str(socket_path), "--preload", "pytest"],
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert "ready" in process.stdout.readline()
    yield socket_path
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _warm(socket_path: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TOOL, "run", str(socket_path), "--", "-q", "-p", "no:cacheprovider", *args],
                          cwd=socket_path.parent, capture_output=True, text=True, **kwargs)


def _fresh(directory: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=directory, capture_output=True, text=True)


def _outcomes(output: str) -> list:
    # pytest's summary line, warnings aside (a fork may warn that a plugin was imported before it)
    return re.findall(r"(\d+) (passed|failed|errors?)\b", output.strip().splitlines()[-1])


def test_a_fork_gives_a_fresh_interpreters_exit_status_and_output(server):
    for args in (["test_passes.py"], ["test_passes.py", "test_fails.py"], ["test_gone.py"]):
        warm, fresh = _warm(server, *args), _fresh(server.parent, *args)
        assert warm.returncode == fresh.returncode, args
        assert _outcomes(warm.stdout) == _outcomes(fresh.stdout), args
        assert warm.returncode != 0 or args == ["test_passes.py"]


def test_a_module_edited_between_two_runs_is_read_afresh(server):
    assert _warm(server, "test_reads_module.py").returncode == 0
    edited = server.parent / "edited.py"
    edited.write_text("VALUE = 2\n")  # what cosmic-ray does to the module between two mutants
    assert _warm(server, "test_reads_module.py").returncode == 1
    edited.write_text("VALUE = 1\n")
    assert _warm(server, "test_reads_module.py").returncode == 0
    assert not list(server.parent.glob("__pycache__/edited*.pyc"))  # no bytecode of an edited module is kept


def test_a_killed_client_takes_its_fork_with_it(server):
    client = subprocess.Popen([sys.executable, TOOL, "run", str(server), "--", "-q", "test_sleeps.py"],
                              cwd=server.parent, stdout=subprocess.DEVNULL, start_new_session=True)
    pid_file = server.parent / "fork.pid"
    deadline = time.monotonic() + 60
    while not pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    fork = int(pid_file.read_text())
    os.killpg(client.pid, signal.SIGKILL)  # as cosmic-ray does at a mutant's timeout
    client.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{fork}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{fork}").exists()
    assert _warm(server, "test_passes.py").returncode == 0  # the server serves the next mutant


def test_importing_open_clip_imports_the_seam_so_its_mutants_get_a_server_without_it():
    # OpenCLIP's import runs the seam's patches (openclip_unimlip.pth's hook): a fork of a server that
    # preloaded OpenCLIP would test the unmutated copy, so tools/mutants.py gives those modules a
    # server with every other library preloaded, whose forks import OpenCLIP and the seam from disk
    assert "open_clip" in warm_pytest.PRELOAD
    assert "openclip_unimlip.seam.patches" in warm_pytest.preloaded(preload=("open_clip",))
    # in a fresh interpreter: this one imported OpenCLIP long ago
    listed = subprocess.run([sys.executable, TOOL, "preloaded", "--without-openclip"], capture_output=True,
                            text=True, check=True).stdout.split()
    assert listed == ["openclip_unimlip", "openclip_unimlip.seam", "openclip_unimlip.seam.autoload"]  # the .pth hook
    assert set(warm_pytest.PRELOAD) - set(warm_pytest.WITHOUT_OPENCLIP) == {"open_clip", "open_clip_train.main"}


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_the_server_ends_when_the_process_that_started_it_is_killed(tmp_path):
    # tools/mutants.py kills its server on the way out; killed outright (SIGKILL), it cannot, and the
    # server must not outlive it
    socket_path = tmp_path / "warm.sock"
    starter = subprocess.Popen(["sh", "-c", f'"{sys.executable}" "{TOOL}" serve "{socket_path}" --preload pytest & '
                                            'echo $!; wait'], stdout=subprocess.PIPE, text=True)
    server = int(starter.stdout.readline())
    deadline = time.monotonic() + 60
    while not socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(server)
    starter.kill()
    starter.wait()
    deadline = time.monotonic() + 20
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(server)


TOY_MODULE = '''LIMIT = 10


def double(x):
    return 2 * x


def clipped(x):
    if x > LIMIT:
        return LIMIT
    return x
'''
TOY_TESTS = '''from pathlib import Path

from toy.arith import clipped, double


def _ran(name):
    with open("ran.txt", "a") as log:
        log.write(name + "\\n")


def test_double():
    _ran("test_double")
    assert double(3) == 6


def test_clipped_below():
    _ran("test_clipped_below")
    assert clipped(3) == 3


def test_clipped_above():
    _ran("test_clipped_above")
    assert clipped(30) == 10
'''


@pytest.fixture
def toy(tmp_path):
    """A package module, its tests and a warm server in ``tmp_path``; the module's line map."""
    from tools import mutants

    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "__init__.py").write_text("")
    (tmp_path / "toy" / "arith.py").write_text(TOY_MODULE)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_toy.py").write_text(TOY_TESTS)
    module = mutants.ModuleConfig("toy/arith.py", ("tests/test_toy.py",), 60.0)
    line_map = mutants.record_line_map(module, tmp_path, mutants.test_environment(tmp_path), tmp_path / "toy.json")
    (tmp_path / "ran.txt").unlink()
    socket_path = tmp_path / "warm.sock"
    process = subprocess.Popen([sys.executable, TOOL, "serve", str(socket_path), "--preload", "pytest"],
                               cwd=tmp_path, env=mutants.test_environment(tmp_path), stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    assert "ready" in process.stdout.readline()
    yield tmp_path, socket_path, line_map
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_the_line_map_names_the_tests_that_ran_each_line(toy):
    root, _, line_map = toy
    recorded = json.loads(line_map.read_text())
    lines = TOY_MODULE.splitlines()
    at = {text.strip(): number for number, text in enumerate(lines, 1)}  # every line of the toy is distinct
    ids = tuple(f"tests/test_toy.py::{name}" for name in ("test_double", "test_clipped_below", "test_clipped_above"))
    assert recorded["order"] == list(ids)  # collection order, as the file lists them
    assert recorded["lines"][str(at["return 2 * x"])] == [ids[0]]
    assert recorded["lines"][str(at["if x > LIMIT:"])] == [ids[1], ids[2]]
    assert recorded["lines"][str(at["return LIMIT"])] == [ids[2]]
    assert recorded["lines"][str(at["return x"])] == [ids[1]]
    # run at import, by collection: the constant and the signatures
    assert {at["LIMIT = 10"], at["def double(x):"], at["def clipped(x):"]} <= set(recorded["import_time"])
    assert at["return 2 * x"] not in recorded["import_time"]
    assert not (root / "toy.coverage").exists()


def _mutate_and_run(root: Path, socket_path: Path, line_map: Path, old: str, new: str):
    (root / "toy" / "arith.py").write_text(TOY_MODULE.replace(old, new, 1))
    (root / "ran.txt").unlink(missing_ok=True)
    warm = subprocess.run([sys.executable, TOOL, "run", "--lines", str(line_map), str(socket_path), "--",
                           "-x", "-q", "-p", "no:cacheprovider", "tests/test_toy.py"], cwd=root, capture_output=True,
                          text=True)
    assert (root / "ran.txt").is_file(), warm.stdout + warm.stderr
    ran = (root / "ran.txt").read_text().split()
    fresh = _fresh(root, "-x", "tests/test_toy.py")
    return warm.returncode, fresh.returncode, ran


@pytest.mark.parametrize("old, new, killed, ran", [
    # the changed line's tests first; one fails: the rest never run
    ("return LIMIT", "return LIMIT + 1", True, ["test_clipped_above"]),
    # its tests pass: every other test runs after them (a survivor is one every test let through)
    ("if x > LIMIT:", "if x >= LIMIT:", False, ["test_clipped_below", "test_clipped_above", "test_double"]),
    # a line run at import: every test, in the file's order (-x stops at the first failure)
    ("LIMIT = 10", "LIMIT = 11", True, ["test_double", "test_clipped_below", "test_clipped_above"]),
    ("return 2 * x", "return 2 + x", True, ["test_double"]),
])
def test_the_tests_that_ran_a_changed_line_run_first_and_the_verdict_is_a_full_runs(toy, old, new, killed, ran):
    root, socket_path, line_map = toy
    warm_status, fresh_status, ran_tests = _mutate_and_run(root, socket_path, line_map, old, new)
    assert (warm_status != 0) == (fresh_status != 0) == killed  # the reference: a fresh pytest over every test
    assert ran_tests == ran


def test_changed_lines_are_those_of_the_recorded_source():
    original = "a\nb\nc\nd\n"
    assert warm_pytest.changed_lines(original, original) == set()
    assert warm_pytest.changed_lines(original, "a\nB\nc\nd\n") == {2}
    assert warm_pytest.changed_lines(original, "a\nc\nd\n") == {2}
    assert warm_pytest.changed_lines(original, "a\nb\nx\nc\nd\n") == {2, 3}  # an insertion: both neighbours
