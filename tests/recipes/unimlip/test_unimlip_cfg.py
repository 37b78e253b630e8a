"""``UniMlipCfg``'s ranges at their ends: the value at each end that its message admits is kept, the
value just past it, and one well past it, refused with that message, before any model is built. The ranges are the
messages' own words (``config.py``; the flags, ``docs/methods/unimlip.md``): probabilities in
[0, 1) for dropping, (0, 1) for masking, a block of at least one pixel, a crop scale 0 < min <= max <= 1."""
import pytest

from openclip_unimlip.recipes.unimlip.config import UniMlipCfg

ADMITTED = [
    ({"dropblock_prob": 0.0}, "dropblock_prob", 0.0),
    ({"dropblock_prob": 0.999}, "dropblock_prob", 0.999),
    ({"text_dropout": 0.0}, "text_dropout", 0.0),
    ({"text_dropout": 0.999}, "text_dropout", 0.999),
    ({"mlm_probability": 0.001}, "mlm_probability", 0.001),
    ({"mlm_probability": 0.999}, "mlm_probability", 0.999),
    ({"dropblock_size": 1}, "dropblock_size", 1),
    ({"view_crop_scale": (0.3, 0.7)}, "view_crop_scale", (0.3, 0.7)),
    ({"view_crop_scale": [0.5, 0.5]}, "view_crop_scale", (0.5, 0.5)),  # min = max
    ({"view_crop_scale": (1, 1)}, "view_crop_scale", (1.0, 1.0)),  # integers from JSON, kept as floats
    ({"view_crop_scale": (0.001, 1.0)}, "view_crop_scale", (0.001, 1.0)),
]
REFUSED = [
    ({"dropblock_prob": 1.0}, "dropblock_prob must be in \\[0, 1\\)"),
    ({"dropblock_prob": -0.001}, "dropblock_prob must be in \\[0, 1\\)"),
    ({"dropblock_prob": 1.5}, "dropblock_prob must be in \\[0, 1\\)"),
    ({"text_dropout": 1.0}, "text_dropout must be in \\[0, 1\\)"),
    ({"text_dropout": -0.001}, "text_dropout must be in \\[0, 1\\)"),
    ({"text_dropout": 2.0}, "text_dropout must be in \\[0, 1\\)"),
    ({"mlm_probability": 0.0}, "mlm_probability must be in \\(0, 1\\)"),
    ({"mlm_probability": 1.0}, "mlm_probability must be in \\(0, 1\\)"),
    ({"mlm_probability": -0.15}, "mlm_probability must be in \\(0, 1\\)"),
    ({"mlm_probability": 1.5}, "mlm_probability must be in \\(0, 1\\)"),
    ({"dropblock_size": 0}, "dropblock_size must be >= 1"),
    ({"view_crop_scale": (0.0, 0.5)}, "view_crop_scale needs 0 < min <= max <= 1"),
    ({"view_crop_scale": (0.6, 0.5)}, "view_crop_scale needs 0 < min <= max <= 1"),
    ({"view_crop_scale": (0.5, 1.001)}, "view_crop_scale needs 0 < min <= max <= 1"),
    ({"view_crop_scale": (-0.5, 0.5)}, "view_crop_scale needs 0 < min <= max <= 1"),
]


@pytest.mark.parametrize("values, name, kept", ADMITTED)
def test_each_range_admits_its_ends(values, name, kept):
    value = getattr(UniMlipCfg(**values), name)
    assert value == kept and type(value) is type(kept)
    if isinstance(kept, tuple):
        assert all(type(v) is float for v in value)


@pytest.mark.parametrize("values, message", REFUSED)
def test_a_value_past_an_end_is_refused_with_its_range(values, message):
    with pytest.raises(ValueError, match=message):
        UniMlipCfg(**values)
