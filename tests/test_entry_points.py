"""One script convention: each console command of pyproject's ``[project.scripts]`` resolves to a
function that a console script can call (``sys.exit(function())``: no arguments, returns None, so
a finished run exits 0) and that answers ``--help``; each ``scripts/*.py`` is either a developer
tool (it imports the checkout's ``tools/``) or a thin shim whose ``__main__`` block calls that
same function, and run as a script it prints the command's help."""
import ast
import importlib
import inspect
import runpy
import sys

import pytest
import tomllib

from paths import REPO  # noqa: E402

ENTRY_POINTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
SCRIPTS = sorted((REPO / "scripts").glob("*.py"))


def _function(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _imports_tools(tree: ast.Module) -> bool:
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    return any(name.split(".")[0] == "tools" for name in names)


def _shim_target(tree: ast.Module, name: str) -> str:
    """``module:function`` that a shim's ``if __name__ == "__main__":`` block calls, read from its
    syntax tree; a shim holds nothing but a docstring, that one import and the block."""
    imported = {alias.asname or alias.name: f"{node.module}:{alias.name}"
                for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    guards = [node for node in tree.body
              if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"]
    docstring = [node for node in tree.body[:1] if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)]
    assert len(guards) == 1 and len(imported) == 1 and len(tree.body) == len(docstring) + 2, f"{name} is not a shim"
    (statement,) = guards[0].body
    call = statement.value if isinstance(statement, ast.Expr) else None
    assert isinstance(call, ast.Call) and not call.args and not call.keywords, f"{name} must call one function"
    return imported[call.func.id]


def _help(run, argv0: str, capsys) -> str:
    """What ``run()`` prints for ``argv0 --help``; it must exit 0, as argparse's help does."""
    argv = sys.argv
    sys.argv = [argv0, "--help"]
    try:
        with pytest.raises(SystemExit) as exit_info:
            sys.exit(run())
    finally:
        sys.argv = argv
    assert exit_info.value.code == 0, argv0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(ENTRY_POINTS))
def test_each_console_command_is_a_no_argument_function_that_answers_help(command, capsys):
    assert command.startswith("unimlip-")
    function = _function(ENTRY_POINTS[command])
    signature = inspect.signature(function)
    assert not [p for p in signature.parameters.values() if p.default is inspect.Parameter.empty], command
    assert signature.return_annotation in (None, "None"), f"{command}: a returned value would be its exit status"
    printed = _help(function, command, capsys)
    assert printed.startswith(f"usage: {command} ") and "-h, --help" in printed


def test_each_script_is_a_developer_tool_or_a_shim_over_one_console_command():
    called = {}
    for path in SCRIPTS:
        tree = ast.parse(path.read_text())
        if not _imports_tools(tree):
            called.setdefault(_shim_target(tree, path.name), []).append(path.name)
    assert set(called) == set(ENTRY_POINTS.values()), "every command has its scripts/ shim and every shim its command"
    assert all(len(names) == 1 for names in called.values()), called


@pytest.mark.parametrize("path", [p for p in SCRIPTS if not _imports_tools(ast.parse(p.read_text()))],
                         ids=lambda p: p.name)
def test_a_shim_run_as_a_script_prints_its_commands_help(path, capsys):
    """The shim itself runs (as ``python scripts/X.py --help`` would, in this process) and prints
    exactly what the console command's function prints for the same program name."""
    target = _shim_target(ast.parse(path.read_text()), path.name)
    as_script = _help(lambda: runpy.run_path(str(path), run_name="__main__"), path.name, capsys)
    assert as_script == _help(_function(target), path.name, capsys)
