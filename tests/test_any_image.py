"""Any image a dataset ships: every size and mode reaches every backbone, each image resized on its
own; a file that cannot be decoded is one error line naming it, and leaves nothing in the cache."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import run_bench
from bench.backbones import build_backbone
from bench.errors import BenchError
from bench.images import cap_aspect, load_image
from tiny_models import tiny  # noqa: F401  (session fixture)
from tools.make_climb_data import ODD_MODES, ODD_SIZES, picture, write_image

FIXTURES = Path(__file__).parent / "fixtures"


def photo(w=30, h=20):
    return picture((w, h), np.random.default_rng(w * 1000 + h))


def test_sixteen_bit_png_behind_a_jpg_name_is_scaled_to_eight_bits(tmp_path):
    grey = photo()[:, :, 0]
    path = tmp_path / "000000000001.jpg"
    Image.fromarray(grey.astype(np.uint16) * 257).save(path, format="PNG")  # 65535 = 255 * 257
    assert np.array_equal(load_image(path), np.repeat(grey[:, :, None], 3, 2))


def test_transparent_pixels_are_white(tmp_path):
    rgb = photo()
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:10] = 0
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert (out[:10] == 255).all() and np.array_equal(out[10:], rgb[10:])
    palette = Image.fromarray(rgb).quantize(4)
    index = np.asarray(palette)
    palette.save(tmp_path / "p.png", transparency=int(index[0, 0]))
    out = load_image(tmp_path / "p.png")
    assert (out[index == index[0, 0]] == 255).all()
    assert np.array_equal(out[index != index[0, 0]], np.asarray(palette.convert("RGB"))[index != index[0, 0]])


def test_exif_orientation_is_applied(tmp_path):
    stored = photo(30, 20)  # stored sideways; orientation 6: rotate 90 degrees clockwise to view
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.png", exif=exif)
    assert np.array_equal(load_image(tmp_path / "r.png"), np.rot90(stored, k=-1))


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "P", "I;16"])
def test_every_mode_reads_as_rgb(tmp_path, mode):
    write_image(tmp_path / "x.jpg", (30, 20), np.random.default_rng(1), mode)
    out = load_image(tmp_path / "x.jpg")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    if mode in ("L", "1", "I;16"):  # grey: three equal channels
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("content", [b"", b"not an image", "truncated"])
def test_an_undecodable_file_is_one_error_naming_it(tmp_path, content):
    path = tmp_path / "000000000042.jpg"
    if content == "truncated":
        Image.fromarray(photo(300, 200)).save(path, quality=90)
        content = path.read_bytes()[:2000]
    path.write_bytes(content)
    with pytest.raises(BenchError, match=r"cannot read image .*000000000042\.jpg"):
        load_image(path)


def test_extreme_aspect_ratios_are_centre_cropped():
    im = Image.fromarray(photo(400, 3))
    cropped = cap_aspect(im, 20)
    assert cropped.size == (60, 3)
    assert np.array_equal(np.asarray(cropped), np.asarray(im)[:, 170:230])
    assert cap_aspect(im, 200) is im


def odd_images(tmp_path) -> list[str]:
    """Every odd size (RGB) and every odd mode (at 50x40), as files."""
    paths = []
    for k, size in enumerate(ODD_SIZES):
        paths.append(tmp_path / f"size{k}.jpg")
        write_image(paths[-1], size, np.random.default_rng(k))
    for k, mode in enumerate(ODD_MODES):
        paths.append(tmp_path / f"mode{k}.jpg")
        write_image(paths[-1], (50, 40), np.random.default_rng(100 + k), mode)
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def every_backbone(tiny):  # noqa: F811
    return {name: build_backbone(spec).eval() for name, spec in
            {"default": "default", "toy": "toy", "vilt": tiny["vilt"], "hf_clip": tiny["hf_clip"],
             "open_clip": tiny["open_clip"]}.items()}


@pytest.mark.parametrize("name", ["default", "toy", "vilt", "hf_clip", "open_clip"])
def test_every_backbone_takes_every_size_and_mode_each_image_on_its_own(every_backbone, tmp_path, name):
    backbone = every_backbone[name]
    images = odd_images(tmp_path)
    encoded = backbone.encode_images(images)
    assert len(encoded) == len(images)
    for k in (0, 1, 3, 4, len(ODD_SIZES) + 2):  # 1x1, 2x3, 600x4, 3000x2000, transparent palette
        alone = backbone.encode_images([images[k]])[0]  # oracle: the image in a batch of its own
        assert torch.allclose(encoded[k].float(), alone.float(), atol=1e-5), k
    fields = dict(backbone.encode_texts(["what is it?"] * len(images)))
    fields["image_feats"] = encoded[:, None]
    with torch.no_grad():
        out = backbone(fields)
    assert out.shape[0] == len(images) and torch.isfinite(out).all()


def test_a_bad_image_while_encoding_the_suites_data_is_one_error_line(tmp_path, capsys):
    root = tmp_path / "climb"
    shutil.copytree(FIXTURES / "climb", root)
    for image in (root / "ms-coco" / "images").iterdir():  # whichever the caps pick
        image.write_bytes(image.read_bytes()[:40])  # truncated
    cache = tmp_path / "cache"
    code = run_bench.main(["run", "--sequence", "climb", "--quick", "--methods", "finetune", "--seeds", "0", "1",
                           "--backbone", "toy", "--workers", "2", "--out", str(tmp_path / "out"),
                           "--set", f"data_root={root}", "--set", f"cache_dir={cache}"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read image {root}/ms-coco/images/"), err
    written = [p for p in cache.rglob("*") if p.is_file() and not p.name.startswith(".")]  # lock files aside
    assert not written, f"a split that failed to encode left {written} in the cache"
