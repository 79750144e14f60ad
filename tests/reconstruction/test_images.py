"""The image loader: orientation, alpha, greyscale, sizes, EXIF focal, skipped and bad files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from geometry.errors import UserError
from reconstruction.images import (
    exif_focal_px,
    list_image_files,
    load_image,
    load_images,
    shared_camera,
)


def _gradient(w: int, h: int) -> np.ndarray:
    """An RGB image whose pixel (x, y) is (x, y, 7) so orientation errors are visible."""
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    return np.stack([xs, ys, np.full_like(xs, 7)], axis=2).astype(np.uint8)


def test_exif_orientation_is_applied(tmp_path):
    arr = _gradient(40, 20)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored image must be rotated 90 deg clockwise
    Image.fromarray(arr).save(tmp_path / "a.png", exif=exif)
    im = load_image(tmp_path / "a.png")
    assert (im.height, im.width) == (40, 20)
    expected = np.rot90(arr, k=-1).astype(np.float32) / 255  # clockwise
    np.testing.assert_allclose(im.rgb.numpy(), expected, atol=1e-6)


def test_rgba_is_composited_on_the_background(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 51  # alpha 0.2
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    im = load_image(tmp_path / "a.png", background=(0.0, 1.0, 0.5))
    assert im.had_alpha
    np.testing.assert_allclose(im.rgb[0, 0].numpy(), [0.2, 0.8, 0.4], atol=1e-6)


def test_greyscale_and_16_bit_are_expanded(tmp_path):
    Image.fromarray(np.full((9, 12), 128, np.uint8), "L").save(tmp_path / "g.png")
    grey = load_image(tmp_path / "g.png")
    assert grey.rgb.shape == (9, 12, 3)
    np.testing.assert_allclose(grey.rgb.numpy(), 128 / 255, atol=1e-6)
    Image.fromarray(np.full((9, 12), 65535 // 4, np.uint16)).save(tmp_path / "w.png")
    wide = load_image(tmp_path / "w.png")
    np.testing.assert_allclose(wide.rgb.numpy(), (65535 // 4) / 65535, atol=1e-6)


def test_max_size_and_mixed_sizes(tmp_path):
    Image.fromarray(np.full((100, 200, 3), 90, np.uint8)).save(tmp_path / "a.jpg", quality=100)
    Image.fromarray(np.full((30, 20, 3), 90, np.uint8)).save(tmp_path / "b.png")
    images = load_images(tmp_path, max_size=50)
    assert [(im.width, im.height) for im in images] == [(50, 25), (20, 30)]  # b not enlarged
    np.testing.assert_allclose(images[0].rgb.numpy(), 90 / 255, atol=2 / 255)
    assert not shared_camera(images)


def test_exif_focal_35mm_equivalent_is_scaled_with_the_image(tmp_path):
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Cam"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.FocalLengthIn35mmFilm] = 28
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(_gradient(300, 200)).save(tmp_path / name, exif=exif)
    images = load_images(tmp_path, max_size=150)
    # 3:2 frame: the diagonal definition gives f35 / 36 mm * width.
    np.testing.assert_allclose(images[0].focal_px, 28 / 36 * 150, rtol=1e-9)
    assert shared_camera(images)
    # Sensor resolution route: 4.5 mm at 1000 px/cm on a 4000 px wide original, read at 2000 px.
    tags = {ExifTags.Base.FocalLength: 4.5, ExifTags.Base.FocalPlaneXResolution: 1000,
            ExifTags.Base.FocalPlaneResolutionUnit: 3, ExifTags.Base.ExifImageWidth: 4000,
            ExifTags.Base.ExifImageHeight: 3000}
    assert math.isclose(exif_focal_px(tags, 2000, 1500), 4.5 * 100 / 2)
    assert exif_focal_px({}, 100, 100) is None


def test_non_images_are_skipped_with_one_warning(tmp_path, capsys):
    for name in ("a.png", "b.png"):
        Image.fromarray(_gradient(16, 16)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "poses.npy").write_bytes(b"x")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_image_files(tmp_path)] == ["a.png", "b.png"]
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "notes.txt" in err and "poses.npy" in err
    assert ".DS_Store" not in err


def test_bad_folders_and_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list_image_files(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is empty"):
        list_image_files(tmp_path / "empty")
    one = tmp_path / "one"
    one.mkdir()
    Image.fromarray(_gradient(16, 16)).save(one / "a.png")
    (one / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="has 1 image"):
        list_image_files(one)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(UserError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")
    full = tmp_path / "full.jpg"
    Image.fromarray(_gradient(64, 64)).save(full)
    (tmp_path / "cut.jpg").write_bytes(full.read_bytes()[:200])
    with pytest.raises(UserError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")


def test_tensor_is_float32_in_unit_range(tmp_path):
    Image.fromarray(_gradient(16, 12)).save(tmp_path / "a.png")
    im = load_image(tmp_path / "a.png")
    assert im.rgb.dtype == torch.float32
    assert float(im.rgb.min()) >= 0 and float(im.rgb.max()) <= 1
    assert im.rgb[3, 5].tolist() == pytest.approx([5 / 255, 3 / 255, 7 / 255])


def test_huge_photo_is_refused_from_its_header(tmp_path):
    """A 12000x12000 PNG (a few KB: 1-bit, all black) was decoded to ~1.7 GB of float RGB
    after PIL's raw DecompressionBombWarning; now its header refuses it, fast and quiet."""
    import time
    import tracemalloc
    import warnings

    from reconstruction.images import MAX_PIXELS, image_size

    path = tmp_path / "huge.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.new("1", (12000, 12000)).save(path)
    assert path.stat().st_size < 100_000 and 12000 * 12000 > MAX_PIXELS
    Image.fromarray(_gradient(16, 16)).save(tmp_path / "ok.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracemalloc.start()
        t0 = time.perf_counter()
        with pytest.raises(UserError, match=r"huge\.png is 12000x12000 pixels \(144 megapixels"
                                            r"\), more than the 89 megapixels.*shrink it"):
            load_image(path, max_size=512)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        with pytest.raises(UserError, match="huge.png is 12000x12000"):
            load_images(tmp_path)
        with pytest.raises(UserError, match="huge.png is 12000x12000"):
            image_size(path)
    assert not caught, [str(w.message) for w in caught]
    # Decoding would take seconds and >1 GB; the header alone takes milliseconds and KB.
    assert seconds < 0.5 and peak < 10_000_000, (seconds, peak)
    assert image_size(tmp_path / "ok.png") == (16, 16)


def test_image_size_reads_the_header_with_exif_rotation(tmp_path):
    from reconstruction.images import image_size

    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # rotated 90 degrees: 40x20 stored, 20x40 shown
    Image.fromarray(_gradient(40, 20)).save(tmp_path / "r.jpg", exif=exif)
    assert image_size(tmp_path / "r.jpg") == (20, 40)
    assert load_image(tmp_path / "r.jpg").source_size == (20, 40)
