"""Imports run only downwards (issue 35): the package's folders form floors, and a module imports
only from its own floor or the floors below it, so each floor can be read, tested and changed
without the ones above. From the top:

- ``commands/``: the console commands (start studies, call the libraries below);
- ``studies/``: the experiments (benchmark, ablation, demo, pre-training runs);
- ``export``: a checkpoint exported as a ``local-dir:``/``hf-hub:`` folder with its model card
  (reads the registry and the seam, and a retrieval result);
- ``evaluation/``: protocols, downstream models, metrics (read the datasets of ``data/``);
- ``data/``: dataset readers and converters;
- ``seam/``: the only code touching OpenCLIP; it reaches the recipes through the registry;
- ``recipes/``: the registry and the recipes, which know nothing above them.

Every import counts, including those inside functions, and so does a string naming a module of the
package (``"openclip_unimlip.x.y"`` or ``"openclip_unimlip.x.y:name"``: what ``importlib`` and
``python -m`` are handed)."""
import ast
import re

from paths import REPO  # noqa: E402

PACKAGE = REPO / "openclip_unimlip"
FLOORS = ("commands", "studies", "export", "evaluation", "data", "seam", "recipes")  # top first
MODULE_NAME = re.compile(r"openclip_unimlip(\.\w+)+(:\w+)?")


def imported_modules(path):
    """(line, dotted name) of every module of the package that ``path`` imports or names."""
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    package = module.removesuffix(".__init__") if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base]).rstrip(".")
            # `from openclip_unimlip import export` imports the module openclip_unimlip.export
            names = [f"{base}.{alias.name}" for alias in node.names] if base == "openclip_unimlip" else [base]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.fullmatch(node.value):
            names = [node.value.split(":")[0]]
        else:
            continue
        yield from ((node.lineno, name) for name in names if name.startswith("openclip_unimlip."))


def floor_of(dotted_name):
    return dotted_name.split(".")[1]


def test_the_floors_name_every_folder_and_top_level_module_of_the_package():
    top_level = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    top_level |= {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert top_level == set(FLOORS)


def test_each_floor_imports_only_from_its_own_floor_or_below():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":  # the lazy public API: it names no floor, every floor may use it
            continue
        source = FLOORS.index(floor_of(".".join(path.relative_to(REPO).with_suffix("").parts)))
        for line, name in imported_modules(path):
            target = floor_of(name)
            if target not in FLOORS:
                violations.append(f"{path.relative_to(REPO)}:{line} imports {name}, which is on no floor")
            elif FLOORS.index(target) < source:
                violations.append(f"{path.relative_to(REPO)}:{line} ({FLOORS[source]}) imports {name} "
                                  f"({target}, a floor above)")
    assert not violations, "imports running upwards:\n" + "\n".join(violations)
