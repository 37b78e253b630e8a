"""pytest in a process forked from one that has already imported torch and OpenCLIP.

A mutant's test command spends most of its time importing: ``import open_clip`` alone takes about
7 of the 8 seconds before the first test runs on these two cores, for tests that often take less.
cosmic-ray starts a fresh command per mutant and has no warm runner (mutmut 3 has a forking one,
but it copies the project away from ``../shared``: docs/development.md, "Generated mutants"), so
``tools/mutants.py`` starts this server once per module and makes each mutant's command a client:

    python tools/warm_pytest.py serve SOCKET            # imports the heavy libraries, then waits
    python tools/warm_pytest.py run SOCKET -- ARGS...   # pytest ARGS in a fresh fork; its exit status
    python tools/warm_pytest.py run --lines MAP SOCKET -- ARGS...  # the tests that ran the changed lines first

The server imports only third-party libraries (and what importing OpenCLIP imports of this package:
the seam's patches), never the module under mutation: ``tools/mutants.py`` uses the server only for
a module that ``preloaded`` does not list, so each fork imports the mutated file from disk, as a
fresh interpreter would. For a module that importing OpenCLIP imports, the server preloads every
library but OpenCLIP (``--without-openclip``): each fork imports OpenCLIP, and through
``openclip_unimlip.pth``'s hook the mutated module, itself (about a second once torch,
torchvision and transformers are in). Nothing computes in the server before it forks (no thread pool exists to
be copied half-held), and a fork's changes to imported state die with it. The client hands its
standard streams to the fork (the test output reaches cosmic-ray as from any command); when the
client is killed (cosmic-ray's timeout kills its process group), the server kills the fork's group.

With ``--lines``, a map of which tests ran which line of the module (``tools/mutants.py`` records it
with coverage's per-test contexts before the session), the client first runs only the tests that ran
the lines the mutant changed. If one of them fails, the mutant is killed without running the rest;
if they all pass, the rest run, so a survivor is one that every test let through, exactly as without
the map. A changed line that ran at import (a default, a constant, a signature) or that no test ran
in-process (a test may run it in a subprocess) runs every test at once.
"""
import argparse
import difflib
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

# the libraries the package's tests import, heaviest first; each is imported once, in the server
PRELOAD = ("torch", "torchvision", "open_clip", "open_clip_train.main", "transformers",
           "transformers.models.bert.modeling_bert", "timm", "numpy", "scipy.stats", "sklearn.linear_model",
           "sklearn.metrics", "PIL.Image", "matplotlib.backends.backend_agg", "matplotlib.figure",
           "kornia.augmentation", "webdataset", "pydicom", "imagehash", "requests", "pytest")
# OpenCLIP's import runs the seam's patches (openclip_unimlip.pth's hook), which import recipe modules
WITHOUT_OPENCLIP = tuple(name for name in PRELOAD if name.split(".")[0] not in ("open_clip", "open_clip_train"))
_STATUS = struct.Struct("!i")


def preloaded(package: str = "openclip_unimlip", preload: Sequence[str] = PRELOAD) -> List[str]:
    """The modules of ``package`` that importing ``preload`` imports (run in a fresh interpreter)."""
    for name in preload:
        importlib.import_module(name)
    return sorted(m for m in sys.modules if m == package or m.startswith(f"{package}."))


def _run_fork(server: socket.socket, connection: socket.socket, streams: Sequence[int], args: Sequence[str]) -> int:
    """pytest ``args`` in a fork whose standard streams are ``streams``; its exit status, or 128 +
    the signal that ended it. The fork is killed (its whole process group) if the client goes."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()  # its own group: a test's subprocesses are killed with it
            for target, stream in enumerate(streams):
                os.dup2(stream, target)
            connection.close()
            server.close()
            import pytest

            status = int(pytest.main(list(args)))
        except BaseException:  # noqa: BLE001 - whatever went wrong, the fork must not return to the server
            import traceback

            traceback.print_exc()
            status = 3
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)
    for stream in streams:
        os.close(stream)  # the fork holds them: cosmic-ray's pipes end when it ends
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        readable, _, _ = select.select([connection], [], [], 0.1)
        if readable and not connection.recv(1):  # the client is gone (killed at its timeout)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return 128 + signal.SIGKILL


def serve(path: str, preload: Sequence[str] = PRELOAD) -> None:
    """Import ``preload``, then run one client's pytest at a time until killed."""
    sys.dont_write_bytecode = True  # a mutant's bytecode must never be cached (nor the original's replaced)
    preloaded(preload=preload)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
        os.unlink(path)
    server.bind(path)
    server.listen(1)
    print(f"warm pytest server ready on {path}", flush=True)
    parent = os.getppid()
    server.settimeout(5.0)
    while True:
        try:
            connection, _ = server.accept()
        except socket.timeout:
            if os.getppid() != parent:  # whoever started it is gone (killed outright): so is its session
                return
            continue
        connection.settimeout(None)
        with connection:
            message, descriptors, _, _ = socket.recv_fds(connection, 1 << 20, 3)
            if len(descriptors) != 3:
                raise SystemExit("a client must send its three standard streams")
            cwd, *args = message.decode().split("\0")
            os.chdir(cwd)
            status = _run_fork(server, connection, descriptors, args)
            try:
                connection.sendall(_STATUS.pack(status))
            except OSError:
                pass  # the client is gone


def changed_lines(original: str, current: str) -> Set[int]:
    """The lines of ``original`` (from 1) that ``current`` replaces or removes; an insertion marks
    the lines on either side of it."""
    changed: Set[int] = set()
    matcher = difflib.SequenceMatcher(None, original.splitlines(), current.splitlines(), autojunk=False)
    for tag, start, end, _, _ in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            changed.update(range(start + 1, end + 1))
        elif tag == "insert":
            changed.update({start, start + 1})
    return changed


def tests_first(line_map: Dict, root: Path) -> Optional[List[str]]:
    """The tests (pytest node ids, in collection order) that ran the lines of ``line_map``'s module
    that differ from its recorded source; None where every test must run: nothing changed, or a
    changed line ran at import or in no test."""
    current = (root / line_map["module"]).read_text()
    changed = changed_lines(line_map["source"], current)
    by_line = {int(line): tests for line, tests in line_map["lines"].items()}
    if not changed or any(line in line_map["import_time"] or not by_line.get(line) for line in changed):
        return None
    first = set().union(*(by_line[line] for line in changed))
    return [test for test in line_map["order"] if test in first]


def run(path: str, args: Sequence[str], lines: Optional[str] = None) -> int:
    """pytest ``args`` in a fork of the server at ``path``, in this directory; pytest's exit status.
    With ``lines`` (a line map, see the module's doc), the tests that ran the changed lines first."""
    if lines is None:
        return _ask(path, args)
    line_map = json.loads(Path(lines).read_text())
    first = tests_first(line_map, Path.cwd())
    if first is None:
        return _ask(path, args)
    options = [arg for arg in args if arg not in line_map["tests"]]
    status = _ask(path, [*options, *first])
    if status == 1:  # a test failed: killed
        return status
    if status != 0:  # not a clean run of the first tests (a collection error): decide on every test
        return _ask(path, args)
    rest = _ask(path, [*args, *(arg for test in first for arg in ("--deselect", test))])
    return 0 if rest == 5 else rest  # 5: no test left to run, all having passed first


def _ask(path: str, args: Sequence[str]) -> int:
    """Ask the server at ``path`` to run pytest ``args`` in this directory; pytest's exit status."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    socket.send_fds(client, ["\0".join([os.getcwd(), *args]).encode()], [0, 1, 2])
    received = b""
    while len(received) < _STATUS.size:
        chunk = client.recv(_STATUS.size - len(received))
        if not chunk:
            return 3  # the server went away
        received += chunk
    return _STATUS.unpack(received)[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    preloaded_parser = commands.add_parser("preloaded", help="the package's modules the server imports before any fork")
    serve_parser = commands.add_parser("serve", help="import the heavy libraries, then serve clients")
    serve_parser.add_argument("socket")
    for sub in (preloaded_parser, serve_parser):
        choice = sub.add_mutually_exclusive_group()
        choice.add_argument("--preload", nargs="+", default=PRELOAD, help="the modules to import first")
        choice.add_argument("--without-openclip", dest="preload", action="store_const", const=WITHOUT_OPENCLIP,
                            help="every library but OpenCLIP (whose import imports the seam's patches)")
    run_parser = commands.add_parser("run", help="pytest ARGS (after --) in a fork of the server")
    run_parser.add_argument("socket")
    run_parser.add_argument("--lines", help="a line map (tools/mutants.py): the tests that ran the changed lines first")
    run_parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "preloaded":
        print("\n".join(preloaded(preload=args.preload)))
        return 0
    if args.command == "serve":
        serve(args.socket, args.preload)
        return 0
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    return run(args.socket, pytest_args, args.lines)


if __name__ == "__main__":
    sys.exit(main())
