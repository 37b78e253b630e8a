"""The wrapped OpenCLIP functions look like OpenCLIP's own to ``help``, ``inspect`` and tools that
read signatures (``functools.wraps``), checked against OpenCLIP's source file; and the names the
wrappers swap inside a call (``seam/patches.py``'s ``_swapped``) are OpenCLIP's own again after it."""
import ast
import inspect
import re
from pathlib import Path

import open_clip
import open_clip_train.params
import open_clip_train.train
import pytest
from open_clip import factory

WRAPPED = [(factory, "create_model"), (factory, "create_model_and_transforms"), (factory, "create_loss"),
           (factory, "get_tokenizer"), (open_clip_train.params, "parse_args"),
           (open_clip_train.train, "train_one_epoch")]


def _source_definition(module, name: str) -> ast.FunctionDef:
    tree = ast.parse(Path(module.__file__).read_text())
    return next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name)


@pytest.mark.parametrize("module, name", WRAPPED, ids=[name for _, name in WRAPPED])
def test_each_wrapper_keeps_openclips_name_docstring_and_signature(module, name):
    wrapped, source = getattr(module, name), _source_definition(module, name)
    assert hasattr(wrapped, "__wrapped__")  # it is the plugin's wrapper
    assert (wrapped.__name__, wrapped.__module__) == (name, module.__name__)
    assert wrapped.__doc__ == ast.get_docstring(source, clean=False)
    arguments = source.args
    expected = [a.arg for a in (*arguments.posonlyargs, *arguments.args)]
    expected += [f"*{arguments.vararg.arg}"] if arguments.vararg else []
    expected += [a.arg for a in arguments.kwonlyargs]
    expected += [f"**{arguments.kwarg.arg}"] if arguments.kwarg else []
    shown = [f"*{p.name}" if p.kind is p.VAR_POSITIONAL else f"**{p.name}" if p.kind is p.VAR_KEYWORD else p.name
             for p in inspect.signature(wrapped).parameters.values()]
    assert shown == expected


def test_the_names_swapped_for_a_call_are_openclips_again_after_it():
    from open_clip.model import CustomTextCLIP
    from open_clip.tokenizer import HFTokenizer

    def openclips_own():
        return (factory.CustomTextCLIP is CustomTextCLIP and factory.HFTokenizer is HFTokenizer
                and factory.load_checkpoint.__module__ == "open_clip.factory"
                and not hasattr(factory.load_checkpoint, "__wrapped__"))

    assert openclips_own()
    open_clip.create_model("unimlip-tiny")  # ours: CustomTextCLIP and load_checkpoint swapped for the call
    open_clip.get_tokenizer("unimlip-tiny")  # ours: HFTokenizer swapped for the call
    open_clip.create_model("RN50")  # OpenCLIP's: the same wrapper, the same swap
    assert openclips_own()


def test_patching_again_changes_nothing():
    """The import hooks patched OpenCLIP already; ``install_all`` (``python -m
    openclip_unimlip.commands.train``) or a second hook call must not wrap the wrappers."""
    from openclip_unimlip.seam import patches

    before = {(module.__name__, name): getattr(module, name) for module, name in WRAPPED}
    patches.install_all()
    patches.patch_open_clip(open_clip)
    patches.patch_params(open_clip_train.params)
    patches.patch_train(open_clip_train.train)
    assert {(module.__name__, name): getattr(module, name) for module, name in WRAPPED} == before
    for module, name in WRAPPED:  # each wraps OpenCLIP's own function, defined in its own module
        assert getattr(module, name).__wrapped__.__module__ == module.__name__
        assert not hasattr(getattr(module, name).__wrapped__, "__wrapped__")


def test_weights_that_do_not_fit_one_of_our_models_are_explained_and_openclips_errors_left_alone(tmp_path):
    import torch

    from openclip_unimlip.seam.hub import WeightsDoNotFit

    ours = open_clip.create_model("unimlip-tiny")
    state = ours.state_dict()
    missing = next(iter(state))
    torch.save({key: value for key, value in state.items() if key != missing}, tmp_path / "ours.pt")
    with pytest.raises(WeightsDoNotFit, match=re.escape(missing)):
        open_clip.create_model("unimlip-tiny", pretrained=str(tmp_path / "ours.pt"))
    torch.save({"not": torch.zeros(1)}, tmp_path / "theirs.pt")
    with pytest.raises(RuntimeError, match=re.escape("Error(s) in loading state_dict")) as error:
        open_clip.create_model("RN50", pretrained=str(tmp_path / "theirs.pt"))
    assert type(error.value) is RuntimeError  # OpenCLIP's model: torch's own error
