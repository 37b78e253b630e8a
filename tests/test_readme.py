"""CI runs both of the README's commands verbatim: command 1 (default install + demo), then
command 2 (test install + tests), each as the body of a ``<<'README'`` block in ``.ci/run``."""
import re

from paths import REPO  # noqa: E402


def readme_commands():
    setup_block = (REPO / "README.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in setup_block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_both_readme_commands_in_order():
    commands = readme_commands()
    assert len(commands) == 2
    assert "-e ." in commands[0] and "[test]" not in commands[0] and "scripts/demo.py" in commands[0]
    assert "-e '.[test]'" in commands[1] and "pytest" in commands[1]
    ci_script = (REPO / ".ci" / "run").read_text()
    blocks = re.findall(r"<<'README'\n(.*?)\nREADME\n", ci_script, flags=re.S)
    assert blocks == commands
    # each gets a fresh environment: command 1's .venv is gone before command 2 runs
    between = ci_script.split(commands[0], 1)[1].split(commands[1], 1)[0]
    assert "rm -rf .venv" in between
