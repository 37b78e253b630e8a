"""The package's shape (README, "Development"): every module imports, each recipe is a peer
sub-package of ``recipes/`` holding its own model class and loss factory, and the public names
users import resolve to the recipe's modules."""
import importlib
import pkgutil

import openclip_unimlip
from openclip_unimlip.recipes import RECIPES


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
