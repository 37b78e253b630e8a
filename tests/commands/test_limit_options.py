"""``--limit N`` of the two fine-tuning commands: N below 1 stops with one message before any data is
read or any file written (a Python slice by 0 keeps nothing, by -1 everything but the last row);
1 gets past that check to the data, whose missing folder is then the message."""
import pytest

from openclip_unimlip.commands import finetune_classification, finetune_vqa

COMMANDS = {
    "classification": (finetune_classification, ["--dataset", "nih"], "images per split"),
    "vqa": (finetune_vqa, ["--dataset", "vqa-rad"], "questions per split"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("limit", ["0", "-1"])
def test_a_limit_below_one_is_refused_before_the_data(name, limit, tmp_path, capsys):
    command, dataset, unit = COMMANDS[name]
    out = tmp_path / "out"
    common = [*dataset, "--data-root", str(tmp_path / "absent"), "--model", "unimlip-tiny", "--output-dir", str(out)]
    with pytest.raises(SystemExit) as refused:
        command.main([*common, "--limit", limit])
    assert refused.value.code == 2
    error_line = capsys.readouterr().err.strip().splitlines()[-1]  # after argparse's usage lines
    assert error_line.endswith(f"error: --limit must be at least 1 ({unit}), got {limit}")
    assert not out.exists()

    with pytest.raises(SystemExit) as past_the_check:  # the same command with --limit 1 reaches the data
        command.main([*common, "--limit", "1"])
    assert past_the_check.value.code == 2
    error_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--limit" not in error_line and str(tmp_path / "absent") in error_line
    assert not out.exists()
