"""The whole tree keeps to pyproject's ``[tool.ruff]`` rules (pyflakes, import order, pycodestyle with
lines of at most 120 characters): one ruff run over the checkout, its report as the failure message.
ruff comes with the ``test`` extra; ``ruff check --fix`` sorts imports."""
import subprocess
import sys

from paths import REPO  # noqa: E402


def test_ruff_finds_nothing_in_the_tree():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
