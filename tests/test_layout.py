"""The package's shape (README, "Layout"; docs/development.md): every module imports, each recipe is a peer
sub-package of ``recipes/`` holding its own model class and loss factory, the public names
users import resolve to the recipe's modules, and the developer tooling (``tools/``) stays out
of the installed package."""
import ast
import importlib
import pkgutil

import tomllib

import openclip_unimlip
from openclip_unimlip.recipes import RECIPES

from paths import REPO  # noqa: E402

PACKAGE = REPO / "openclip_unimlip"
# the two mutation tools, the two benchmarks, the GPU check, the generator of a vendored data file
TOOLS = ("mutation", "mutants", "bench", "bench_data", "gpu_check", "chexclusion_test_lists")


def test_every_module_of_the_package_imports():
    names = [m.name for m in pkgutil.walk_packages(openclip_unimlip.__path__, "openclip_unimlip.")]
    assert len(names) > 50
    for name in names:
        importlib.import_module(name)


def test_each_recipe_is_a_peer_sub_package_with_its_model_and_loss():
    folders = []
    for recipe in RECIPES:
        model_module, loss_module = recipe.model_class.split(":")[0], recipe.loss_factory.split(":")[0]
        folder = model_module.rsplit(".", 1)[0]
        assert folder.rsplit(".", 1)[0] == "openclip_unimlip.recipes", recipe
        assert loss_module.startswith(folder + "."), recipe
        assert callable(recipe.load_model_class()) and callable(getattr(importlib.import_module(loss_module),
                                                                        recipe.loss_factory.split(":")[1]))
        folders.append(folder)
    assert sorted(folders) == sorted(set(folders)) == ["openclip_unimlip.recipes.mlip_li",
                                                       "openclip_unimlip.recipes.mlip_liu",
                                                       "openclip_unimlip.recipes.unimlip"]


def test_the_public_names_come_from_the_unimlip_recipe():
    from openclip_unimlip import TERMS, StrongViews, UniMlip, UniMlipCfg, UniMlipLoss, set_batchnorm_stats_frozen

    for obj in (StrongViews, UniMlip, UniMlipCfg, UniMlipLoss, set_batchnorm_stats_frozen):
        assert obj.__module__.startswith("openclip_unimlip.recipes.unimlip."), obj
    assert TERMS == ("itc", "image_perturbed_itc", "text_perturbed_itc", "simclr", "mlm")


def test_developer_tools_sit_beside_the_package_and_outside_the_wheel():
    """hatch's wheel target ships the listed packages (plus the force-included files) only, so a
    folder beside the package is left out; the tools are there and nowhere in the package."""
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert build["packages"] == ["openclip_unimlip"]
    assert not any(path.split("/")[0] == "tools" for path in [*build.get("force-include", {}),
                                                              *build.get("force-include", {}).values()])
    assert (REPO / "tools" / "__init__.py").is_file()
    for name in TOOLS:
        assert (REPO / "tools" / f"{name}.py").is_file(), name
        assert not list(PACKAGE.rglob(f"{name}.py")), name
        assert importlib.import_module(f"tools.{name}").__file__ == str(REPO / "tools" / f"{name}.py")


def test_the_package_never_imports_the_tools():
    """An installed package has no ``tools`` to import: not one import statement or dotted name of
    the package may reach it (the tools import the package, not the other way round)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""] if node.level == 0 else []
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                modules = [node.value] if node.value.startswith("tools.") else []
            else:
                continue
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {m}" for m in modules if m.split(".")[0] == "tools"]
    assert not offenders


def test_each_console_command_is_a_module_of_commands_and_nothing_else_imports_them():
    """Issue 35's layout: every ``[project.scripts]`` entry is ``cli`` of its own module of
    ``openclip_unimlip.commands`` (and every module there is one's), and commands import the studies and
    libraries, never the reverse: no module outside ``commands/`` names ``openclip_unimlip.commands``."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    modules = [target.split(":")[0] for target in scripts.values()]
    assert all(target.endswith(":cli") for target in scripts.values())
    assert sorted(modules) == sorted(set(modules)) == sorted(
        f"openclip_unimlip.commands.{path.stem}" for path in (PACKAGE / "commands").glob("*.py")
        if path.stem != "__init__")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE / "commands":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]
            else:
                continue
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                          if n.startswith("openclip_unimlip.commands")]
    assert not offenders
