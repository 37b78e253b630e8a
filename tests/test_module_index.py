"""Each package's ``__init__.py`` docstring is the index of its folder (issue 35: navigation text had
drifted from the code): one line per module, ``- `name`: what it holds``, a sub-package written
``- `name/`: ...``. Checked both ways, like ``tests/test_layout.py`` checks the folders: every module
and sub-package of the folder is listed, and every listed name is one of them."""
import ast
import re

from paths import REPO  # noqa: E402

PACKAGE = REPO / "openclip_unimlip"
# an index line: "- `name`: ..." or "- `name/`: ..." at the start of a docstring line
INDEX_ENTRY = re.compile(r"^- `(\w+/?)`:", flags=re.M)


def listed_names(package_dir):
    docstring = ast.get_docstring(ast.parse((package_dir / "__init__.py").read_text())) or ""
    return INDEX_ENTRY.findall(docstring)


def actual_names(package_dir):
    modules = [path.stem for path in package_dir.glob("*.py") if path.stem != "__init__"]
    sub_packages = [f"{path.parent.name}/" for path in package_dir.glob("*/__init__.py")]
    return modules + sub_packages


def test_each_package_docstring_lists_exactly_its_modules():
    packages = sorted(path.parent for path in PACKAGE.rglob("__init__.py"))
    assert len(packages) >= 10
    problems = []
    for package_dir in packages:
        folder = package_dir.relative_to(REPO)
        listed, actual = listed_names(package_dir), actual_names(package_dir)
        problems += [f"{folder}/__init__.py: `{name}` is not listed" for name in sorted(set(actual) - set(listed))]
        problems += [f"{folder}/__init__.py: lists `{name}`, which {folder}/ does not hold"
                     for name in sorted(set(listed) - set(actual))]
        problems += [f"{folder}/__init__.py: lists `{name}` twice" for name in sorted(set(listed))
                     if listed.count(name) > 1]
    assert not problems, "module index docstrings out of date:\n" + "\n".join(problems)
