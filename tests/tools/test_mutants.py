"""The generated-mutant configuration (tools/mutants.toml) stays valid: every module and test file it
names exists and every equivalent mutant's line is still in its module. Running the mutants takes
minutes a module, so CI runs only this check; tools/mutants.py needs no cosmic-ray for it."""
import textwrap
from pathlib import Path

import pytest

from tools import mutants

from paths import REPO


def test_the_configuration_names_existing_modules_tests_and_lines():
    modules = mutants.load_config()
    assert "openclip_unimlip/evaluation/retrieval.py" in modules
    for module in modules.values():
        assert (REPO / module.path).is_file() and all((REPO / test.split("::")[0]).is_file() for test in module.tests)
    assert mutants.main(["check"]) == 0


def _config(tmp_path: Path, module: str) -> Path:
    (tmp_path / "openclip_unimlip").mkdir()
    (tmp_path / "openclip_unimlip" / "m.py").write_text("x = 1\ny = x + 1\nz = x + 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_m.py").write_text("")
    config = tmp_path / "mutants.toml"
    config.write_text(textwrap.dedent(module))
    return config


@pytest.mark.parametrize("module, error", [
    ('path = "openclip_unimlip/gone.py"\ntests = ["tests/test_m.py"]\ntimeout = 1', "not a module"),
    ('path = "openclip_unimlip/m.py"\ntests = ["tests/test_gone.py"]\ntimeout = 1', "not a test file"),
    ('path = "openclip_unimlip/m.py"\ntests = ["tests/test_m.py"]', "expected path, tests, timeout"),
    ('path = "openclip_unimlip/m.py"\ntests = ["tests/test_m.py"]\ntimeout = 1\n'
     '[[module.equivalent]]\noperator = "core/NumberReplacer"\nline = "x + 2"\nreason = "r"', "on no line"),
    ('path = "openclip_unimlip/m.py"\ntests = ["tests/test_m.py"]\ntimeout = 1\n'
     '[[module.equivalent]]\noperator = "core/NumberReplacer"\nline = "y = x"\nreason = ""', "a reason"),
    ('path = "openclip_unimlip/m.py"\ntests = ["tests/test_m.py"]\ntimeout = 1\n'
     '[[module.equivalent]]\noperator = "NumberReplacer"\nline = "y = x"\nreason = "r"', "no cosmic-ray"),
])
def test_a_stale_or_incomplete_configuration_is_refused(tmp_path, module, error):
    config = _config(tmp_path, "[[module]]\n" + module)
    with pytest.raises(mutants.ConfigError, match=error):
        mutants.load_config(config, root=tmp_path)


def test_a_complete_configuration_loads(tmp_path):
    config = _config(tmp_path, '[[module]]\npath = "openclip_unimlip/m.py"\ntests = ["tests/test_m.py"]\n'
                               'timeout = 30\n[[module.equivalent]]\noperator = "core/NumberReplacer"\n'
                               'line = "y = x"\nreason = "r"\n')
    module = mutants.load_config(config, root=tmp_path)["openclip_unimlip/m.py"]
    assert module.timeout == 30 and module.equivalent[0].line == "y = x"
    assert module.test_command("python") == "python -m pytest -x -q -p no:cacheprovider tests/test_m.py"


def test_a_survivor_is_equivalent_only_for_its_operator_on_its_line():
    module = mutants.ModuleConfig("openclip_unimlip/m.py", ("tests/test_m.py",), 30.0, (
        mutants.Equivalent("core/NumberReplacer", "workers: int = 0", "same images, same order"),))
    diff = ("--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n"
            "     seed: int = 0,\n-    workers: int = 0,\n+    workers: int = 1,\n")
    assert mutants._equivalent_reason(module, "core/NumberReplacer", diff) == "same images, same order"
    assert mutants._equivalent_reason(module, "core/AddNot", diff) is None
    assert mutants._equivalent_reason(module, "core/NumberReplacer", diff.replace("workers", "seed")) is None
