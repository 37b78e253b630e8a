"""The mutation harness (tools/mutation.py): every listed break still applies, stale or
ambiguous snippets are errors, the copy is what the tests import, and caught/survived are told apart."""
import textwrap
from pathlib import Path

import pytest

from tools import mutation

from paths import REPO, TESTS  # noqa: E402

MUTATIONS = TESTS / "mutations"  # one TOML file per area


@pytest.mark.parametrize("break_", mutation.load_mutations(MUTATIONS), ids=lambda m: m.name)
def test_every_listed_break_applies_to_the_package(break_):
    """A break whose snippet moved, changed or became ambiguous would otherwise only show up
    when the harness runs (which CI does not: it takes too long)."""
    path, source = mutation.mutated_source(REPO / mutation.PACKAGE, break_)
    assert break_.replace in source and source != path.read_text()
    assert mutation.expand_tests(REPO, break_.tests)


def _write(root: Path, files: dict) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))


@pytest.fixture
def toy_tree(tmp_path):
    """A source tree with a package of the same name as ours (so the editable install is what
    it must shadow) and one test that pins ``double`` but not ``half``."""
    root = tmp_path / "toy"
    _write(root, {
        f"{mutation.PACKAGE}/__init__.py": "",
        f"{mutation.PACKAGE}/seam/__init__.py": "",
        f"{mutation.PACKAGE}/seam/autoload.py": "",  # the venv's .pth hook imports it at start-up
        f"{mutation.PACKAGE}/arith.py": """
            def double(x):
                return 2 * x


            def half(x):
                return x / 2
            """,
        "tests/test_arith.py": """
            from openclip_unimlip.arith import double


            def test_double():
                assert double(3) == 6
            """,
        "data/ignored.bin": "not copied",
    })
    return root


def test_snippet_must_occur_exactly_once(toy_tree):
    package = toy_tree / mutation.PACKAGE
    assert mutation.locate(package, "return 2 * x").name == "arith.py"
    with pytest.raises(mutation.MutationError, match="found nowhere"):
        mutation.locate(package, "return 4 * x")
    with pytest.raises(mutation.MutationError, match="x2"):
        mutation.locate(package, "(x):")
    with pytest.raises(mutation.MutationError, match="invalid Python"):
        mutation.apply(package, mutation.Mutation("bad", "syntax", "return 2 * x", "return 2 *"))


def test_the_tests_import_the_copy_not_the_installed_package(tmp_path):
    copy = mutation.copy_tree(REPO, tmp_path / "copy")
    assert not (copy / ".venv").exists() and not (copy / ".git").exists()
    assert (copy / mutation.PACKAGE / "data" / "__init__.py").exists()  # a sub-package named like a run folder
    origin = mutation.imported_origin(copy, f"{mutation.PACKAGE}.recipes.unimlip.views")
    assert origin == (copy / mutation.PACKAGE / "recipes" / "unimlip" / "views.py").resolve()


def test_caught_survived_stale_and_baseline_are_told_apart(toy_tree):
    caught = mutation.Mutation("double", "double doubles", "return 2 * x", "return 3 * x", ("tests",))
    survived = mutation.Mutation("half", "half halves", "return x / 2", "return x / 3", ("tests/test_*.py",))
    stale = mutation.Mutation("stale", "gone", "return 4 * x", "return 5 * x")
    outcomes = {o.mutation.name: o for o in mutation.run_all(toy_tree, [caught, survived, stale])}
    assert {n: o.status for n, o in outcomes.items()} == {"double": "caught", "half": "survived", "stale": "error"}
    assert outcomes["double"].module == f"{mutation.PACKAGE}.arith" and "test_double" in outcomes["double"].detail
    assert "return 2 * x" in (toy_tree / mutation.PACKAGE / "arith.py").read_text()  # the source is untouched
    assert mutation.baseline(toy_tree, ["tests"]).status == "passed"
    assert "| half | half halves | survived |" in mutation.format_table(list(outcomes.values()))


def test_bad_mutation_files_are_refused(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text("[[mutation]]\nname = 'a'\nbreaks = 'b'\nfind = 'x'\n")
    with pytest.raises(mutation.MutationError, match="missing keys \\['replace'\\]"):
        mutation.load_mutations(path)
    path.write_text("[[mutation]]\nname = 'a'\nbreaks = 'b'\nfind = 'x'\nreplace = 'x'\n")
    with pytest.raises(mutation.MutationError, match="equals"):
        mutation.load_mutations(path)


def test_names_are_unique_across_the_files_of_a_folder(tmp_path):
    entry = "[[mutation]]\nname = 'same'\nbreaks = 'b'\nfind = 'x'\nreplace = 'y'\n"
    (tmp_path / "a.toml").write_text(entry)
    (tmp_path / "b.toml").write_text(entry)
    with pytest.raises(mutation.MutationError, match="duplicate mutation name 'same'"):
        mutation.load_mutations(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(mutation.MutationError, match="no \\*.toml"):
        mutation.load_mutations(tmp_path / "empty")
