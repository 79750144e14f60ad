"""geometry.io.images: the one PNG writer (values, bytes, modes, atomicity)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from geometry.io.images import encode_png, to_uint8, write_png


def _read(path) -> tuple[np.ndarray, str]:
    with Image.open(path) as im:
        return np.asarray(im), im.mode


def test_float_rounds_half_up_after_clipping():
    values = np.array([[-0.2, 0.0, 0.5 / 255, 0.49 / 255, 0.5, 1.0, 1.3]], np.float64)
    np.testing.assert_array_equal(to_uint8(values), [[0, 0, 1, 0, 128, 255, 255]])


def test_float32_is_rounded_in_float32_like_the_writers_it_replaced():
    # 0.527451 (float32): x*255+0.5 is 135.0 in float32 but 134.99999... in float64; the
    # old writers computed in the tensor's float32, so this pixel must stay 135.
    x = np.float32(0.5274509787559509)
    assert int((np.float64(x) * 255.0 + 0.5).astype(np.uint8)) == 134
    assert to_uint8(np.array([x]))[0] == 135
    assert to_uint8(torch.tensor([float(x)], dtype=torch.float32))[0] == 135


def test_torch_and_numpy_give_the_same_pixels_and_bytes():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(-0.1, 1.1, (7, 9, 3)).astype(np.float32)
    tensor = torch.from_numpy(rgb).requires_grad_()
    expected = (np.clip(rgb, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(to_uint8(tensor), expected)
    np.testing.assert_array_equal(to_uint8(rgb), expected)
    assert encode_png(tensor) == encode_png(rgb) == encode_png(expected)


def test_bytes_match_a_plain_pillow_save(tmp_path):
    """The old writers called ``Image.fromarray(arr).save(path)``: same file, byte for byte."""
    rng = np.random.default_rng(1)
    rgb = rng.random((12, 10, 3)).astype(np.float32)
    old = tmp_path / "old.png"
    Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8)).save(old)
    new = write_png(tmp_path / "new.png", torch.from_numpy(rgb))
    assert new == tmp_path / "new.png"
    assert new.read_bytes() == old.read_bytes()


@pytest.mark.parametrize(("shape", "mode"), [((5, 6), "L"), ((5, 6, 3), "RGB"),
                                             ((5, 6, 4), "RGBA")])
def test_modes_round_trip(tmp_path, shape, mode):
    image = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape) * 3
    write_png(tmp_path / "a.png", image)
    read, read_mode = _read(tmp_path / "a.png")
    assert read_mode == mode
    np.testing.assert_array_equal(read, image)


def test_bool_mask_is_0_and_255():
    mask = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(to_uint8(mask), [[255, 0], [0, 255]])
    with Image.open(io.BytesIO(encode_png(torch.from_numpy(mask)))) as im:
        np.testing.assert_array_equal(np.asarray(im), [[255, 0], [0, 255]])


def test_half_precision_is_widened():
    half = torch.tensor([[0.25, 0.75]], dtype=torch.float16)
    np.testing.assert_array_equal(to_uint8(half), [[64, 191]])
    np.testing.assert_array_equal(to_uint8(half.to(torch.bfloat16)), [[64, 191]])


def test_creates_parent_folders_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "a" / "b" / "c.png"
    write_png(path, np.zeros((2, 3, 3), np.uint8))
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.png"]


def test_bad_input_raises_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "a.png"
    write_png(path, np.full((2, 2), 7, np.uint8))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="shape"):
        write_png(path, np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        write_png(path, np.zeros((2, 2), np.uint16))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
