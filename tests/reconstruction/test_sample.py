"""The shipped ``recon fit`` sample (data/recon_sample): present, regenerable, consistent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geometry.io.transforms_json import read_transforms_json
from reconstruction.images import load_images
from reconstruction.procedural import SceneConfig, render

DATA = Path(__file__).resolve().parents[2] / "data"


def _sample_config() -> SceneConfig:
    spec = importlib.util.spec_from_file_location("make_recon_sample",
                                                  DATA / "make_recon_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SAMPLE


@pytest.fixture(scope="module")
def sample():
    config = _sample_config()
    return config, render(config)


def test_shipped_sample_is_what_the_generator_makes(sample):
    config, scene = sample
    files = sorted((DATA / "recon_sample").iterdir())
    assert [f.name for f in files] == [f"view_{k:02d}.png" for k in range(config.num_views)]
    for path, expected in zip(files, scene.images, strict=True):
        shipped = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
        # Bit-identical on the machine that made it; a libm or OpenCV build elsewhere may
        # round a few anti-aliased edge pixels differently.
        diff = np.abs(shipped - expected.astype(np.int16))
        assert diff.max() <= 2 and (diff > 0).mean() < 1e-3


def test_sample_carries_focal_and_ground_truth_cameras(sample):
    config, scene = sample
    images = load_images(DATA / "recon_sample")
    f_gt = float(scene.cameras.K[0, 0, 0])
    for im in images:
        assert (im.width, im.height) == (config.width, config.height)
        # EXIF stores whole millimetres: the prior is within ~2 % of the true focal.
        assert im.focal_px == pytest.approx(f_gt, rel=0.02)
    gt = read_transforms_json(DATA / "recon_sample_gt" / "transforms.json",
                              dtype=torch.float64).cameras
    torch.testing.assert_close(gt.T_world_cam, scene.cameras.T_world_cam.double(), rtol=1e-9,
                               atol=1e-9)
    torch.testing.assert_close(gt.K, scene.cameras.K.double(), rtol=1e-9, atol=1e-9)
    assert [Path(p).name for p in gt.image_paths] == [p.name for p in
                                                      sorted((DATA / "recon_sample").iterdir())]
