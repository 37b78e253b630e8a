"""Each recipe's run options (``recipes/run_options.py``): the flags generated from the dataclass have
its defaults, and every field travels the whole way and back through the same class: argv built by
``to_argv``, parsed by ``open_clip_train``'s own (patched) parser, ``params.txt`` written as
``open_clip_train.main`` writes it (3.3, main.py l.288-293), read back by ``from_values``."""
import dataclasses
from typing import ClassVar

import open_clip
import pytest

from openclip_unimlip.recipes import RECIPES
from openclip_unimlip.recipes.mlip_li.config import LiCfg
from openclip_unimlip.recipes.mlip_li.flags import MlipLiOptions
from openclip_unimlip.recipes.mlip_liu.config import LiuCfg
from openclip_unimlip.recipes.mlip_liu.flags import MlipLiuOptions
from openclip_unimlip.recipes.run_options import RunOptions
from openclip_unimlip.recipes.run_params import read_params
from openclip_unimlip.recipes.unimlip.flags import UniMlipOptions

OPTIONS = [recipe.load_flags() for recipe in RECIPES]
# every flag of each recipe at a value other than its default, valid together
NOT_DEFAULT = {
    "unimlip-tiny": UniMlipOptions(
        itc_weight=0.11, image_perturbed_itc_weight=0.22, text_perturbed_itc_weight=0.33, simclr_weight=0.44,
        mlm_weight=0.66, simclr_temperature=0.07, simclr_start_epoch=1, feed_views=True, no_bn_freeze=True,
        dropblock_shared_mask=True, itc_on_clean_caption=True, view_crop_scale=(0.3, 0.7), mlm_probability=0.3,
        mlm_replacement="bert", dropblock_prob=0.2, dropblock_size=2, text_dropout=0.4, fusion_image_tokens="grid",
        simclr_head="none", view_augmentation="mocov2"),
    "mlip-liu-tiny": MlipLiuOptions(masked_contrastive_weight=0.5, patch_sentence_weight=0.25,
                                    reconstruction_weight=0.0),
    "mlip-li-tiny": MlipLiOptions(global_weight=0.5, divergence_weight=0.0, local_weight=0.25, prototype_weight=2.0),
}


@pytest.fixture
def parse_args(monkeypatch):
    from open_clip_train.params import parse_args

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(patches, "_training_run", None)  # parsing a recipe's run records its options
    return parse_args


@pytest.mark.parametrize("options", OPTIONS, ids=lambda cls: cls.__name__)
def test_the_generated_flags_default_to_the_dataclass_defaults(options):
    parsed = vars(options.build_parser().parse_args([]))
    assert parsed == {options.dest(f.name): f.default for f in options.flag_fields()}
    assert options.split_argv([]) == (options(), [], False)
    assert options().to_argv() == []


@pytest.mark.parametrize("model", NOT_DEFAULT)
def test_every_field_round_trips_through_the_trainer_and_params_txt(parse_args, tmp_path, model):
    given = NOT_DEFAULT[model]
    assert all(getattr(given, f.name) != f.default for f in given.flag_fields())  # every flag is exercised
    assert given.split_argv(given.to_argv())[0] == given

    args = parse_args(["--model", model, "--epochs", "4", *given.to_argv()])
    with open(tmp_path / "params.txt", "w") as f:  # open_clip_train/main.py l.289-293, verbatim
        for name in sorted(vars(args)):
            f.write(f"{name}: {getattr(args, name)}\n")
    recorded = type(given).from_values(read_params(tmp_path / "params.txt"))
    assert recorded == type(given).from_args(args)
    # what the trainer derived (Uni-Mlip's start reason) is recorded too; every given value as given
    assert dataclasses.replace(recorded, **{f.name: getattr(given, f.name) for f in dataclasses.fields(given)
                                            if not f.metadata.get("flag", True)}) == given


@pytest.mark.parametrize("model", ["mlip-liu-tiny", "mlip-li-tiny"])
def test_mlip_weight_flags_reach_the_run_loss_over_the_config(parse_args, model):
    args = parse_args(["--model", model, "--epochs", "2", *NOT_DEFAULT[model].to_argv()])
    args.rank, args.world_size = 0, 1  # init_distributed_device
    key, cfg = {"mlip-liu-tiny": ("mlip_liu_cfg", LiuCfg), "mlip-li-tiny": ("mlip_li_cfg", LiCfg)}[model]
    registered = cfg.from_dict(open_clip.get_model_config(model)[key]).loss_weights
    expected = {**registered, **NOT_DEFAULT[model].loss_weights()}
    assert expected != registered
    assert open_clip.create_loss(args).weights == {t: w for t, w in expected.items() if w > 0}


def test_a_bad_mlip_weight_is_refused_before_the_run(parse_args):
    with pytest.raises(SystemExit, match="error: MLIP \\(Li\\) loss weights must be >= 0, got {'local': -1.0}"):
        parse_args(["--model", "mlip-li-tiny", "--mlip-li-local-weight", "-1"])


@pytest.mark.parametrize("model", NOT_DEFAULT)
def test_each_field_alone_off_its_default_is_the_only_flag_written(model):
    given = NOT_DEFAULT[model]
    for f in given.flag_fields():
        alone = type(given)(**{f.name: getattr(given, f.name)})
        argv = alone.to_argv()
        assert argv[0] == given.flag(f.name)  # written, whatever its place among the fields
        assert [a for a in argv if a.startswith("--")] == [argv[0]]
        assert type(given).split_argv(argv)[0] == alone


def test_values_equal_to_the_defaults_but_read_back_are_not_written():
    # params.txt and nargs give lists and new floats: equal to the defaults, not the same objects
    values = {UniMlipOptions.dest(f.name): (list(f.default) if isinstance(f.default, tuple) else
                                            float(str(f.default)) if isinstance(f.default, float) else f.default)
              for f in UniMlipOptions.flag_fields()}
    assert UniMlipOptions.from_values(values).to_argv() == []
    parsed, _, _ = UniMlipOptions.split_argv(["--unimlip-simclr-temperature", "0.1"])
    assert parsed.simclr_temperature == 0.1 and parsed.to_argv() == []  # the paper's value, given explicitly


def test_the_recipe_parsers_leave_help_and_abbreviations_to_the_trainer():
    for options in OPTIONS:
        # --help is OpenCLIP's (its parser lists every flag); a prefix of a flag is not that flag
        assert options.split_argv(["--help"])[1] == ["--help"]
        full = options.flag(options.flag_fields()[-1].name)
        with pytest.raises(SystemExit, match=f"unrecognized .* arguments: {full[:-2]}"):
            options.split_argv([full[:-2], "1"])


def test_flag_names_are_the_parsers_destinations():
    for options in OPTIONS:
        parser_dests = [a.dest for a in options.build_parser()._actions]
        assert list(options.flag_names()) == parser_dests
        assert len(parser_dests) == len(options.flag_fields())


def test_the_model_section_takes_the_given_options_and_keeps_the_rest():
    section = {"dropblock_size": 1, "mlm_probability": 0.15, "loss_weights": {"itc": 1.0, "mlm": 0.5}}
    assert UniMlipOptions().model_section(section) == section
    run = UniMlipOptions(dropblock_prob=0.2, feed_views=True, mlm_weight=0.25)
    assert run.model_section(section) == {
        "dropblock_size": 1, "mlm_probability": 0.15, "dropblock_prob": 0.2, "feed_views_without_simclr": True,
        "loss_weights": {"itc": 1.0, "mlm": 0.25}}
    assert UniMlipOptions(dropblock_size=2).model_section(section)["dropblock_size"] == 2
    assert section == {"dropblock_size": 1, "mlm_probability": 0.15, "loss_weights": {"itc": 1.0, "mlm": 0.5}}


@pytest.mark.parametrize("default", [True, 0, None])
def test_a_switch_must_default_to_false(default):
    @dataclasses.dataclass(frozen=True)
    class Options(RunOptions):
        prefix: ClassVar[str] = "toy"
        switch: bool = dataclasses.field(default=default, metadata={"help": "a switch"})

    with pytest.raises(TypeError, match="Options.switch: a switch defaults to False"):
        Options.build_parser()
