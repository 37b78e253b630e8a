"""A recipe's section of the model JSON (``openclip_unimlip/recipes/config.py``, read by each MLIP
recipe's config and loss factory): a bad section is refused with a message naming it, and every value
of a section reaches the loss its factory builds."""
import argparse

import pytest
import torch

from openclip_unimlip.recipes.mlip_li.loss import MlipLiLoss, create_mlip_li_loss
from openclip_unimlip.recipes.mlip_liu.loss import MlipLiuLoss, create_mlip_liu_loss

from mlip_helpers import li_inputs as _li_inputs
from mlip_helpers import liu_inputs as _liu_inputs

ONE_PROCESS = argparse.Namespace(local_loss=False, gather_with_grad=False, rank=0, world_size=1)


def test_bad_recipe_sections_are_refused():
    from openclip_unimlip.recipes.mlip_li.config import LiCfg
    from openclip_unimlip.recipes.mlip_liu.config import LiuCfg

    with pytest.raises(ValueError, match="Unknown mlip_liu_cfg keys"):
        LiuCfg.from_dict({"mask_ration": 0.5})
    with pytest.raises(ValueError, match="mask_ratio"):
        LiuCfg.from_dict({"mask_ratio": 1.0})
    with pytest.raises(ValueError, match="nothing to train"):
        LiCfg.from_dict({"loss_weights": {"global": 0, "divergence": 0, "local": 0, "prototype": 0}})


def test_loss_factories_pass_every_value_of_the_config_section():
    liu = {"psm_temperature": 0.05, "ot_epsilon": 0.2, "ot_iterations": 7, "ot_tolerance": 0.0,
           "loss_weights": {"reconstruction": 0.5}}
    loss = create_mlip_liu_loss(ONE_PROCESS, {"mlip_liu_cfg": liu})
    assert (loss.psm_temperature, loss.ot_epsilon, loss.ot_iterations, loss.ot_tolerance) == (0.05, 0.2, 7, 0.0)
    assert loss.weights == {"masked_contrastive": 1.0, "patch_sentence": 1.0, "reconstruction": 0.5}
    direct = MlipLiuLoss(weights={"reconstruction": 0.5}, psm_temperature=0.05, ot_epsilon=0.2, ot_iterations=7,
                         ot_tolerance=0.0)
    torch.testing.assert_close(loss(**_liu_inputs()), direct(**_liu_inputs()))

    li = {"divergence_temperature": 0.05, "local_temperature": 0.2, "prototype_temperature": 0.3,
          "sinkhorn_epsilon": 0.1, "sinkhorn_iterations": 5, "sinkhorn_tolerance": 0.5,
          "loss_weights": {"local": 0.25}}
    loss = create_mlip_li_loss(ONE_PROCESS, {"mlip_li_cfg": li})
    assert (loss.divergence_temperature, loss.local_temperature, loss.prototype_temperature, loss.sinkhorn_epsilon,
            loss.sinkhorn_iterations, loss.sinkhorn_tolerance) == (0.05, 0.2, 0.3, 0.1, 5, 0.5)
    assert loss.weights == {"global": 1.0, "divergence": 1.0, "local": 0.25, "prototype": 1.0}
    direct = MlipLiLoss(weights={"local": 0.25}, divergence_temperature=0.05, local_temperature=0.2,
                        prototype_temperature=0.3, sinkhorn_epsilon=0.1, sinkhorn_iterations=5, sinkhorn_tolerance=0.5)
    torch.testing.assert_close(loss(**_li_inputs()), direct(**_li_inputs()))


def test_loss_weights_refuse_any_negative_and_an_all_zero_set():
    from openclip_unimlip.recipes.config import check_loss_weights

    terms = ("a", "b")
    check_loss_weights({"a": 0.0, "b": 1e-9}, terms, "R")  # one term barely on: accepted
    for weights in ({"a": -0.5, "b": 1.0}, {"a": -1e-9, "b": 1.0}):
        with pytest.raises(ValueError, match="R loss weights must be >= 0"):
            check_loss_weights(weights, terms, "R")
    with pytest.raises(ValueError, match="every R loss weight is 0: nothing to train"):
        check_loss_weights({"a": 0.0, "b": 0.0}, terms, "R")


def test_the_active_terms_are_those_weighted_above_0():
    from openclip_unimlip.recipes.config import active_terms

    assert active_terms({"a": 0.0, "b": 0.5, "c": 1e-9, "d": -0.0}) == ("b", "c")


@pytest.mark.parametrize("value, positive, non_negative", [(1e-9, True, True), (0.0, False, True),
                                                          (-1e-9, False, False), (-0.5, False, False)])
def test_positive_and_non_negative_checks_name_the_field(value, positive, non_negative):
    from types import SimpleNamespace

    from openclip_unimlip.recipes.config import check_non_negative, check_positive

    cfg = SimpleNamespace(fine=1.0, value=value)
    for check, accepted, word in ((check_positive, positive, "> 0"), (check_non_negative, non_negative, ">= 0")):
        if accepted:
            check(cfg, ("fine", "value"))
        else:
            with pytest.raises(ValueError, match=f"value must be {word}, got {value}"):
                check(cfg, ("fine", "value"))  # the second name is checked too
