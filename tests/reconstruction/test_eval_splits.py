"""Training/test splits of the literature, and the real DTU scan read through geometry.io."""

from __future__ import annotations

from pathlib import Path

import pytest

from geometry.errors import UserError
from reconstruction.eval.config import parse_views
from reconstruction.eval.splits import choose_split, dtu_split, llff_split

DATASETS = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
DTU = DATASETS / "dtu_scan24"

# pixelNeRF's DTU test views as RegNeRF's datasets.py builds them (all views except the
# 9 training candidates and the excluded 3-7, 16-21, 36-39).
REGNERF_DTU_TEST = [1, 2, 9, 10, 11, 12, 14, 15, 23, 24, 26, 27, 29, 30, 31, 32, 33, 34, 35,
                    41, 42, 43, 45, 46, 47]


def test_dtu_split_is_pixelnerfs():
    split = dtu_split(49, 3)
    assert split.train == [25, 22, 28]
    assert split.test == REGNERF_DTU_TEST
    assert dtu_split(49, 9).train == [25, 22, 28, 40, 44, 48, 0, 8, 13]
    with pytest.raises(UserError):
        dtu_split(49, 10)
    with pytest.raises(UserError):
        dtu_split(30, 3)


def test_llff_split_holds_out_every_8th_and_spreads_training_views():
    split = llff_split(20, 3)
    assert split.test == [0, 8, 16]
    assert split.train == [1, 10, 19]  # rest[0], rest[8], rest[16]
    # 12 views: rest = 1..7, 9, 10, 11; linspace(0, 9, 3) = 0, 4.5, 9 and Python rounds 4.5
    # to 4 (as RegNeRF's code does): views 1, 5, 11.
    assert llff_split(12, 3).train == [1, 5, 11]
    assert llff_split(20, 1).train == [1]
    with pytest.raises(UserError):
        llff_split(9, 9)


def test_given_views_and_test_views():
    split = choose_split(49, "dtu", 3, views=[25, 1, 28])
    assert split.train == [25, 1, 28]
    assert 1 not in split.test and split.test == [v for v in REGNERF_DTU_TEST if v != 1]
    split = choose_split(25, "llff", 3, views=[3, 4, 5], test_views=[2, 6])
    assert split.test == [2, 6]
    with pytest.raises(UserError, match="also training"):
        choose_split(25, "llff", 3, views=[3, 4, 5], test_views=[4])
    with pytest.raises(UserError, match="outside"):
        choose_split(25, "llff", 3, views=[3, 40])
    with pytest.raises(UserError, match="repeats"):
        choose_split(25, "llff", 3, views=[3, 3])


def test_parse_views():
    assert parse_views("25,22,28", "--views") == [25, 22, 28]
    assert parse_views("25 22, 28", "--views") == [25, 22, 28]
    assert parse_views(None, "--views") is None
    with pytest.raises(UserError, match="25,22,28"):
        parse_views("a,b", "--views")


@pytest.mark.skipif(not DTU.is_dir(), reason=f"real DTU data not found at {DTU}")
def test_dtu_scan24_reads_with_the_standard_split():
    from reconstruction.eval.data import load_dataset

    dataset = load_dataset(DTU)
    assert dataset.format == "dtu" and dataset.num_views == 49
    assert dataset.names[25] == "000025_rgb.png"
    split = choose_split(dataset.num_views, "dtu", 3)
    assert [dataset.names[i] for i in split.train] == ["000025_rgb.png", "000022_rgb.png",
                                                       "000028_rgb.png"]
    image = dataset.load_image(25)
    assert image.shape == (384, 384, 3)
    # The DTU preset: intrinsics of the 384x384 crop; principal point inside the image.
    K = dataset.cameras.K[25]
    assert 0 < float(K[0, 2]) < 384 and 0 < float(K[1, 2]) < 384
    assert dataset.has_masks is False  # this copy has no object masks
