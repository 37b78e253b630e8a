"""``--model-config``: each command that takes models by name registers a user's config with OpenCLIP
before it builds anything, and a path that does not exist stops it with one message first."""
import json

import open_clip
import pytest

from openclip_unimlip.commands import benchmark, eval_retrieval, eval_zero_shot

CONFIG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
          "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.mark.parametrize("command, rest", [
    (eval_retrieval, ["--data", "unused.csv"]),
    (eval_zero_shot, ["--data", "unused.csv"]),
    (benchmark, ["--data-root", "unused", "--out", "unused-out", "--plan"]),
])
def test_a_missing_model_config_stops_before_anything_runs(command, rest, tmp_path, capsys):
    with pytest.raises(SystemExit):
        command.main(["--model", "my-model", "--model-config", str(tmp_path / "missing.json"), *rest])
    assert f"--model-config {tmp_path / 'missing.json'} does not exist" in capsys.readouterr().err


def test_a_registered_config_is_built_by_openclips_factory(tmp_path):
    path = tmp_path / "user-rn-tiny-test.json"
    path.write_text(json.dumps(CONFIG))
    assert "user-rn-tiny-test" not in open_clip.list_models()
    eval_retrieval.parse_args(["--model", "user-rn-tiny-test", "--data", "unused.csv", "--model-config", str(path)])
    assert "user-rn-tiny-test" in open_clip.list_models()
    assert open_clip.get_model_config("user-rn-tiny-test") == CONFIG
