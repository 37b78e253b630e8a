"""write_dataset stores PNGs of every mode so that they decode to the right RGB picture.

Each mode is written through ``write_dataset``, read back through webdataset's ``pilrgb``
decoder (what open_clip_train uses) and compared with a reference computed another way: PIL's
own paste-with-mask onto black for transparency, PIL's ``convert("RGB")`` for the modes it
decodes faithfully, a NumPy rescale for 16-bit greyscale.
"""
import io

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from openclip_unimlip.data.shards import Row, write_dataset

SIZE = 24


def png_bytes(image: Image.Image, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **params)
    return out.getvalue()


def colour_pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def on_black(image: Image.Image) -> np.ndarray:
    """PIL's paste with the alpha band as mask: an independent route to compositing on black."""
    rgba = image.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, (0, 0, 0))
    canvas.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return np.asarray(canvas)


def sources():
    rng = np.random.default_rng(0)
    alpha = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([colour_pixels(1), alpha]), "RGBA")
    la = Image.fromarray(np.dstack([colour_pixels(2)[..., 0], alpha]), "LA")
    palette = Image.fromarray(colour_pixels(3)).quantize(16)
    palette_transparent = palette.copy()
    palette_transparent.info["transparency"] = 5  # palette entry 5 is fully transparent (tRNS)
    levels = rng.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16)
    sixteen = Image.fromarray(levels)
    rgb, grey = Image.fromarray(colour_pixels(4)), Image.fromarray(colour_pixels(5)[..., 0])
    return {
        "rgba": (png_bytes(rgba), on_black(rgba)),
        "la": (png_bytes(la), on_black(la)),
        "palette": (png_bytes(palette), np.asarray(palette.convert("RGB"))),
        "palette_transparent": (png_bytes(palette_transparent, transparency=5), on_black(palette_transparent)),
        "sixteen_bit": (png_bytes(sixteen), np.repeat(np.round(levels / 257.0)[..., None], 3, axis=2)),
        "rgb": (png_bytes(rgb), np.asarray(rgb)),
        "grey": (png_bytes(grey), np.asarray(grey.convert("RGB"))),
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("modes")
    data = sources()
    rows = [Row(source=name, key=name, image=encoded, caption=f"a {name} image", split="train")
            for name, (encoded, _) in data.items()]
    write_dataset(rows, out)
    decoded = {s["__key__"]: s for s in wds.WebDataset(str(out / "train" / "00000.tar"), shardshuffle=False)
               .decode("pilrgb")}
    return data, decoded, out


@pytest.mark.parametrize("name", ["rgba", "la", "palette", "palette_transparent", "sixteen_bit", "rgb", "grey"])
def test_every_png_mode_decodes_to_its_reference_rgb(written, name):
    data, decoded, _ = written
    got = np.asarray(decoded[name]["png"]).astype(int)
    expected = data[name][1].astype(int)
    assert got.shape == (SIZE, SIZE, 3)
    assert np.array_equal(got, expected), name  # paste with an alpha mask rounds as alpha_composite on black


def test_the_fixed_modes_differ_from_what_a_plain_rgb_conversion_gives(written):
    """The re-encoding matters: convert("RGB") on the source bytes drops alpha and clips 16 bits."""
    data, decoded, _ = written
    for name in ("rgba", "la", "sixteen_bit"):
        naive = np.asarray(Image.open(io.BytesIO(data[name][0])).convert("RGB")).astype(int)
        assert np.abs(naive - data[name][1].astype(int)).mean() > 20, name


def test_colour_stays_colour_and_faithful_modes_keep_their_bytes(written):
    data, decoded, out = written
    rgba = np.asarray(decoded["rgba"]["png"])
    assert not (np.array_equal(rgba[..., 0], rgba[..., 1]) and np.array_equal(rgba[..., 1], rgba[..., 2]))
    import tarfile

    with tarfile.open(out / "train" / "00000.tar") as tar:
        stored = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert stored["rgb.png"] == data["rgb"][0] and stored["grey.png"] == data["grey"][0]
    assert Image.open(io.BytesIO(stored["rgba.png"])).mode == "RGB"


def test_image_size_downscales_the_short_side_like_pil_bicubic(tmp_path):
    wide = Image.fromarray(np.random.default_rng(7).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    small = Image.fromarray(colour_pixels(8))
    rows = [Row(source="wide", key="wide", image=png_bytes(wide), caption="wide", split="train"),
            Row(source="small", key="small", image=png_bytes(small), caption="small", split="train")]
    write_dataset(rows, tmp_path, image_size=30)
    decoded = {s["__key__"]: s for s in wds.WebDataset(str(tmp_path / "train" / "00000.tar"), shardshuffle=False)
               .decode("pilrgb")}
    expected = wide.resize((45, 30), Image.BICUBIC)  # OpenCLIP's Resize on a PIL image, done by PIL itself
    assert decoded["wide"]["png"].size == (45, 30)
    assert np.array_equal(np.asarray(decoded["wide"]["png"]), np.asarray(expected))
    assert np.array_equal(np.asarray(decoded["small"]["png"]), np.asarray(small))  # never upscaled
