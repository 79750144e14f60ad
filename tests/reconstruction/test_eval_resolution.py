"""``recon eval``'s default resolution: the sparse-view protocols' sizes (LLFF images_8 or
504 px, DTU 400x300), recon fit's 512 px for photos over 2 megapixels, and
--factor/--max-size overriding them; the choice is printed and written to eval.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geometry.cameras import Cameras
from reconstruction.eval.config import EvalConfig
from reconstruction.eval.data import load_dataset
from reconstruction.procedural import SceneConfig, render

ROOT = Path(__file__).resolve().parents[2]
W8, H8 = 128, 96  # images_8 of a "full-size" 1024x768 LLFF capture
FULL = 8


@pytest.fixture(scope="module")
def llff_scene(tmp_path_factory):
    """An LLFF-layout scene: poses_bounds.npy for 1024x768, images/ at 1024x768 (the small
    renders upscaled 8x, cheap) and images_8/ at 128x96."""
    from geometry.io.llff import write_llff

    scene = render(SceneConfig(kind="forward", num_views=9, width=W8, height=H8,
                               supersample=1, seed=3))
    folder = tmp_path_factory.mktemp("llff") / "scene"
    (folder / "images").mkdir(parents=True)
    (folder / "images_8").mkdir()
    for i, image in enumerate(scene.images):
        small = Image.fromarray(image)  # [H, W, 3] uint8
        small.save(folder / "images_8" / f"IMG_{i:04d}.png")
        small.resize((W8 * FULL, H8 * FULL), Image.NEAREST).save(
            folder / "images" / f"IMG_{i:04d}.png")
    cameras = scene.cameras.to(dtype=torch.float64).resize(W8 * FULL, H8 * FULL)
    write_llff(folder, cameras, torch.tensor([[0.5, 20.0]] * len(cameras)))
    return folder, scene


def test_llff_uses_images_8_when_a_full_size_folder_is_there_too(llff_scene, tmp_path,
                                                                 capsys):
    folder, scene = llff_scene
    dataset = load_dataset(folder, protocol_size=True)
    res = dataset.resolution
    assert (res.factor, res.max_size, res.default) == (8, None, True)
    assert (res.width, res.height) == (W8, H8) and "images_8" in res.rule
    assert {p.parent.name for p in dataset.image_paths} == {"images_8"}
    # The focal of poses_bounds (1024 px) divided by 8: the renderer's own focal.
    torch.testing.assert_close(dataset.cameras.K[:, 0, 0],
                               scene.cameras.K[:, 0, 0].double(), rtol=1e-6, atol=0)
    stored = np.asarray(Image.open(folder / "images_8" / "IMG_0000.png"), np.float32) / 255
    np.testing.assert_allclose(dataset.load_image(0).numpy(), stored, atol=1e-6)
    # Without the protocol default (the old behaviour), images/ at full size.
    assert int(load_dataset(folder).cameras.width[0]) == W8 * FULL

    # What `recon eval` prints, before any work.
    from reconstruction.eval.protocol import _load

    _load(EvalConfig(dataset=folder, out=tmp_path / "out", quiet=False))
    assert "evaluating at 128x96 (LLFF protocol: images_8)" in capsys.readouterr().err


def test_llff_without_images_8_shrinks_the_full_size_photos_to_504(llff_scene, tmp_path):
    source, _ = llff_scene
    folder = tmp_path / "scene"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("images_8"))
    dataset = load_dataset(folder, protocol_size=True)
    res = dataset.resolution
    assert (res.factor, res.max_size, (res.width, res.height)) == (None, 504, (504, 378))
    assert "no images_8" in res.rule
    assert dataset.load_image(0).shape == (378, 504, 3)
    full = load_dataset(folder)
    torch.testing.assert_close(dataset.cameras.K, full.cameras.K * torch.tensor(
        [[504 / 1024], [378 / 768], [1.0]], dtype=torch.float64))


def test_size_options_override_the_protocol(llff_scene):
    folder, _ = llff_scene
    res = load_dataset(folder, max_size=256, protocol_size=True).resolution
    assert (res.factor, res.max_size, res.width, res.height, res.default) == \
        (None, 256, 256, 192, False)
    assert res.rule == "--max-size 256"
    res = load_dataset(folder, llff_factor=8, max_size=64, protocol_size=True).resolution
    assert (res.width, res.height) == (64, 48) and "--factor 8" in res.rule


def _flat_photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """``count`` flat-colour PNGs (a few KB each even at 1600x1200)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:03d}.png"
        Image.new("RGB", (width, height), (40 * i, 90, 160)).save(path)
        paths.append(path)
    return paths


def _cameras(count: int, width: int, height: int, focal: float) -> Cameras:
    K = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]],
                     dtype=torch.float64).expand(count, 3, 3).clone()
    T = torch.eye(4, dtype=torch.float64).repeat(count, 1, 1)
    T[:, 0, 3] = torch.arange(count, dtype=torch.float64) * 0.1
    return Cameras(K=K, T_world_cam=T, width=width, height=height)


def test_dtu_scan_at_1600x1200_is_evaluated_at_400x300(tmp_path):
    from geometry.io.idr import write_idr

    folder = tmp_path / "scan"
    _flat_photos(folder / "image", 4, 1600, 1200)
    write_idr(folder, _cameras(4, 1600, 1200, 2892.3))
    dataset = load_dataset(folder, protocol_size=True)
    res = dataset.resolution
    assert dataset.format == "dtu"
    assert (res.max_size, res.width, res.height) == (400, 400, 300) and "DTU" in res.rule
    # 4x downsampling: every intrinsic divided by exactly 4.
    torch.testing.assert_close(dataset.cameras.K[0], torch.tensor(
        [[2892.3 / 4, 0, 200], [0, 2892.3 / 4, 150], [0, 0, 1]], dtype=torch.float64))
    assert dataset.load_image(1).shape == (300, 400, 3)


@pytest.mark.skipif(not (ROOT.parent / "shared/datasets/dtu_scan24").is_dir(),
                    reason="../shared/datasets/dtu_scan24 is not here")
def test_dtu_scan24_at_384x384_is_not_shrunk_again():
    """IDR's preprocessed DTU (central 1200x1200 crop at 384x384) is already under the
    protocol's 400 px: shrinking it again would evaluate at 300x300, below everyone's."""
    dataset = load_dataset(ROOT.parent / "shared/datasets/dtu_scan24", protocol_size=True)
    res = dataset.resolution
    assert (res.max_size, res.width, res.height) == (None, 384, 384)
    assert "own size" in res.rule


def test_photos_over_2_megapixels_get_the_fit_default(tmp_path):
    from geometry.io.transforms_json import write_transforms_json

    big = tmp_path / "big"
    paths = _flat_photos(big / "images", 3, 1800, 1200)  # 2.16 MP
    write_transforms_json(big / "transforms.json", _cameras(3, 1800, 1200, 1500.0),
                          file_paths=[f"images/{p.name}" for p in paths])
    res = load_dataset(big, protocol_size=True).resolution
    assert (res.max_size, res.width, res.height) == (512, 512, 341)
    assert "2 megapixels" in res.rule and "--max-size" in res.rule

    small = tmp_path / "small"
    paths = _flat_photos(small / "images", 3, 1600, 1200)  # 1.92 MP: kept
    write_transforms_json(small / "transforms.json", _cameras(3, 1600, 1200, 1500.0),
                          file_paths=[f"images/{p.name}" for p in paths])
    res = load_dataset(small, protocol_size=True).resolution
    assert (res.max_size, res.width, res.height) == (None, 1600, 1200)


def test_eval_json_and_report_name_the_resolution(llff_scene, tmp_path):
    from reconstruction.eval.cli import Eval
    from reconstruction.pose_opt import PoseOptConfig

    folder, _ = llff_scene
    out = tmp_path / "eval"
    Eval(dataset=folder, out=out, views="2,4,6", test_views="0,8", iterations=5,
         init="sfm-sparse", known_poses=True, quiet=True, save_renders=False,
         test_pose_options=PoseOptConfig(iterations=2)).run()
    results = json.loads((out / "eval.json").read_text())
    assert results["resolution"] == {
        "width": W8, "height": H8, "mixed_sizes": False, "factor": 8, "max_size": None,
        "rule": "LLFF protocol: images_8", "chosen_by": "protocol default"}
    assert "- resolution: 128x96 (LLFF protocol: images_8)" in (out / "report.md").read_text()
