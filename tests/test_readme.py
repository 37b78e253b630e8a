"""CI runs the README's test command verbatim."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = (ROOT / "README.md").read_text()
    setup_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in setup_block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2 and commands[1] == ci_command
