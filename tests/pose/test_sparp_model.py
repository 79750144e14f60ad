"""The small SpaRP model (pose.camera.sparp.model/data/train/predict): training writes a
checkpoint that loads, sampling's shapes and the domain switcher, the data's tiles and
cameras, and ``pose sparp --checkpoint`` / ``pose sparp-train`` refusing bad inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pose.camera.sparp.config import SparpData, SparpTrainConfig
from pose.camera.sparp.model import (
    NOVEL_AZIMUTHS_DEG,
    NOVEL_ELEVATIONS_DEG,
    SparpModel,
    SparpModelConfig,
    decode_tiles,
    encode_tiles,
    novel_view_poses,
)

TILE = 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained for 2 steps on 2 generated objects."""
    from pose.camera.sparp.train import run_train

    out = tmp_path_factory.mktemp("sparp") / "ckpt"
    result = run_train(out, SparpModelConfig.tiny(TILE),
                       SparpTrainConfig(steps=2, batch=2, log_every=1, p_nocs=0.5),
                       SparpData(sequences=2, frames=3, supersample=1), quiet=True)
    assert result.step == 2 and result.stopped_by == "steps"
    return out


def test_training_writes_a_checkpoint_that_loads(checkpoint: Path):
    from safetensors.torch import load_file

    from pose.camera.sparp.train import load_model

    for name in ("config.json", "model.safetensors", "trainer_state.pt", "history.json"):
        assert (checkpoint / name).is_file(), name
    model, record = load_model(checkpoint)
    assert record["kind"] == "sparp" and record["step"] == 2
    assert model.config == SparpModelConfig.tiny(TILE)
    saved = load_file(str(checkpoint / "model.safetensors"))
    state = model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    # the two steps moved the weights away from the seed's initialisation
    torch.manual_seed(0)
    fresh = SparpModel(SparpModelConfig.tiny(TILE)).state_dict()
    assert any(not torch.equal(fresh[k], state[k]) for k in state)


def test_resume_continues_the_step_count(checkpoint: Path, tmp_path: Path):
    import shutil

    from pose.camera.sparp.train import run_train

    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint, copy)
    result = run_train(copy, SparpModelConfig.tiny(TILE),
                       SparpTrainConfig(steps=3, batch=2, log_every=1, p_nocs=0.5),
                       SparpData(sequences=2, frames=3, supersample=1), resume=True, quiet=True)
    assert result.step == 3


def test_sampling_shape_and_the_domain_switcher():
    torch.manual_seed(0)
    model = SparpModel(SparpModelConfig.tiny(TILE)).eval()
    cond = torch.rand(1, 4, 3 * TILE, 2 * TILE) * 2 - 1
    views = model.sample(cond, torch.tensor([0]), steps=2, seed=3)
    nocs = model.sample(cond, torch.tensor([1]), steps=2, seed=3)
    assert views.shape == (1, 4, 3 * TILE, 2 * TILE)
    assert float(views.abs().max()) <= 1.0
    # linear_2 starts at zero (Zero123++'s behaviour): both domains sample the same
    assert torch.allclose(views, nocs)
    again = model.sample(cond, torch.tensor([0]), steps=2, seed=3)
    assert torch.equal(views, again)  # deterministic for a seed
    with torch.no_grad():
        model.core.unet.class_embedding.linear_2.weight.normal_()
    views = model.sample(cond, torch.tensor([0]), steps=2, seed=3)
    nocs = model.sample(cond, torch.tensor([1]), steps=2, seed=3)
    assert float((views - nocs).abs().mean()) > 1e-3
    rgb, mask = decode_tiles(nocs)
    assert rgb.shape == (1, 6, TILE, TILE, 3) and mask.shape == (1, 6, TILE, TILE)


def test_codec_round_trip():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 6, 8, 8, 3, generator=g)
    mask = torch.rand(2, 6, 8, 8, generator=g) > 0.5
    x = encode_tiles(rgb, mask)
    assert x.shape == (2, 4, 24, 16)
    rgb2, mask2 = decode_tiles(x)
    assert torch.allclose(rgb2, rgb, atol=1e-6) and torch.equal(mask2, mask)
    # tile k sits at row k // 2, column k % 2 (Zero123++'s layout)
    assert torch.allclose(x[1, :3, 16:24, 8:16], rgb[1, 5].permute(2, 0, 1) * 2 - 1)


def test_novel_view_poses_follow_zero123pp():
    from geometry.se3 import look_at

    eye = np.array([2.0 * math.cos(0.3), 2.0 * math.sin(0.3), 0.7])
    T0 = look_at(eye, np.zeros(3))
    poses = novel_view_poses(T0)
    assert poses.shape == (6, 4, 4)
    dist = np.linalg.norm(eye)
    for T, az, el in zip(poses, NOVEL_AZIMUTHS_DEG, NOVEL_ELEVATIONS_DEG, strict=True):
        c = T[:3, 3]
        assert np.linalg.norm(c) == pytest.approx(dist)
        assert math.degrees(math.asin(c[2] / dist)) == pytest.approx(el)
        rel = math.degrees(math.atan2(c[1], c[0]) - 0.3) % 360
        assert rel == pytest.approx(az)
        # looking at the object's origin, image up along +z
        assert np.allclose(np.cross(T[:3, 2], -c / dist), 0, atol=1e-12)
        assert T[2, 1] < 0


def test_training_examples_hold_the_maps_and_consistent_novel_views():
    """The photos and maps are the generator's sequence's; the NOCS target's tiles are the
    inputs' exact maps (photo 0 first, empty tiles empty); the views target the six novel
    views, each of which sees the object."""
    from pose.camera.sparp.data import make_batch, render_example
    from reconstruction.procedural.objects import ObjectSequenceConfig, object_sequence

    ex = render_example(11, TILE, frames=3, supersample=1)
    seq = object_sequence(11, ObjectSequenceConfig(image_size=TILE, views=3, background=False,
                                                   supersample=1, distance_range=(0.7, 0.9)))
    assert np.array_equal(ex.nocs, seq.nocs.numpy()) and np.array_equal(ex.masks,
                                                                          seq.masks.numpy())
    assert np.allclose(ex.T_world_nocs, seq.T_world_nocs.numpy())
    assert ex.novel_masks.shape == (6, TILE, TILE) and ex.novel_masks.any((1, 2)).all()
    batch = make_batch([ex], 2, (3, 3), 1.0, np.random.default_rng(0))
    rgb, mask = decode_tiles(batch["target"])
    assert batch["domain"].tolist() == [1, 1]
    assert torch.equal(mask[0, 0], torch.from_numpy(ex.masks[0]))  # frame 0 always first
    assert torch.allclose(rgb[0, 0], torch.from_numpy(ex.nocs[0]), atol=1e-6)
    assert not mask[0, 3:].any()  # empty tiles
    batch = make_batch([ex], 1, (2, 2), 0.0, np.random.default_rng(0))
    rgb, mask = decode_tiles(batch["target"])
    assert torch.equal(mask[0], torch.from_numpy(ex.novel_masks))


def test_tile_intrinsics_keep_the_projection():
    from pose.camera.sparp.predict import tile_intrinsics
    from pose.camera.sparp.solver import intrinsics_from_fov, project

    K = intrinsics_from_fov(120, 80, 50.0)
    Kt = tile_intrinsics(K, 120, 80, 32)
    pts = np.array([[0.1, -0.05, 2.0], [-0.2, 0.1, 3.0]])
    uv, _ = project(K, np.eye(3), np.zeros(3), pts)
    uvt, _ = project(Kt, np.eye(3), np.zeros(3), pts)
    assert np.allclose(uvt, (uv - [20, 0]) * 32 / 80)


def _run(args: list[str]) -> None:
    from pose.cli import main

    main(args)


def _expect_exit_2(capsys, args: list[str], words: str) -> None:
    with pytest.raises(SystemExit) as info:
        _run(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pose: error:"), err
    assert words in err, err


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    from geometry.io.images import write_png

    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(3):
        write_png(folder / f"p{k}.png", torch.rand(24, 32, 3))
    return folder


def test_missing_checkpoint_exits_2(photos: Path, tmp_path: Path, capsys):
    _expect_exit_2(capsys, ["sparp", "--images", str(photos), "--checkpoint",
                            str(tmp_path / "nope"), "--out", str(tmp_path / "out")],
                   "does not exist")
    (tmp_path / "empty").mkdir()
    _expect_exit_2(capsys, ["sparp", "--images", str(photos), "--checkpoint",
                            str(tmp_path / "empty"), "--out", str(tmp_path / "out")],
                   "is not a sparp checkpoint")
    assert not (tmp_path / "out").exists()


def test_bad_images_exit_2(checkpoint: Path, photos: Path, tmp_path: Path, capsys):
    from geometry.io.images import write_png

    (photos / "p1.png").write_bytes(b"not an image")
    _expect_exit_2(capsys, ["sparp", "--images", str(photos), "--checkpoint", str(checkpoint),
                            "--out", str(tmp_path / "out")], "p1.png")
    many = tmp_path / "many"
    many.mkdir()
    for k in range(7):
        write_png(many / f"m{k}.png", torch.rand(16, 16, 3))
    _expect_exit_2(capsys, ["sparp", "--images", str(many), "--checkpoint", str(checkpoint),
                            "--out", str(tmp_path / "out")], "takes 2 to 6")
    _expect_exit_2(capsys, ["sparp", "--images", str(tmp_path / "none"), "--checkpoint",
                            str(checkpoint), "--out", str(tmp_path / "out")], "does not exist")
    assert not (tmp_path / "out").exists()


def test_train_cli_refuses_bad_options(tmp_path: Path, capsys):
    _expect_exit_2(capsys, ["sparp-train", "--out", str(tmp_path / "c"), "--views", "7"],
                   "--views 7")
    _expect_exit_2(capsys, ["sparp-train", "--out", str(tmp_path / "c"), "--tile", "20"],
                   "multiple of 8")
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_splats_fitted_to_exact_views_cover_the_object(tmp_path: Path):
    """The 3D stage on exact data: the photos' exact NOCS maps at their true poses (NOCS
    units) and the six novel views at Zero123++'s poses; the fitted splats, rendered into a
    photo's camera, cover its object mask and leave the background empty (about 37 s on
    one thread; the default run covers the stage through
    test_cli_with_a_model_solves_writes_generated_views_and_splats)."""
    from pose.camera.sparp.data import render_example
    from pose.camera.sparp.solver import NocsView
    from pose.camera.sparp.splats import fit_object_splats
    from reconstruction.gaussians import read_ply
    from reconstruction.splatting.rasterization import rasterization

    ex = render_example(4, TILE, frames=3, supersample=1)
    S = ex.T_world_nocs  # p_world = S @ nocs: NOCS-unit object frame (nocs - 0.5)
    shift = np.eye(4)
    shift[:3, 3] = 0.5
    T_obj_world = np.linalg.inv(S @ shift)
    T_obj_cam = T_obj_world @ ex.T_world_cam
    scale = np.cbrt(np.linalg.det(T_obj_cam[0, :3, :3]))
    T_obj_cam[:, :3, :3] /= scale  # rotations back to orthonormal; centres in NOCS units
    views = [NocsView(ex.nocs[k].astype(np.float64), ex.masks[k], ex.K,
                      ex.images[k].astype(np.float64)) for k in range(3)]
    T_novel = novel_view_poses(T_obj_cam[0])
    metrics = fit_object_splats(tmp_path / "fit", views, T_obj_cam, np.eye(4),
                                ex.novel_images.astype(np.float64), ex.novel_masks, T_novel,
                                ex.K, iterations=40)
    assert metrics["known_poses"] and metrics["init"] == "sparp-nocs"
    scene = read_ply(tmp_path / "fit" / "splats.ply")
    assert scene.num_gaussians >= int(ex.masks.sum()) // 2
    _, alpha, _ = rasterization(scene.means, scene.quats, scene.scales, scene.opacities,
                                torch.sigmoid(scene.sh0[:, 0]),
                                torch.linalg.inv(torch.from_numpy(T_obj_cam[1:2])).float(),
                                torch.from_numpy(ex.K[None]).float(), TILE, TILE)
    alpha = alpha[0, ..., 0].numpy()
    mask = ex.masks[1]
    from scipy.ndimage import binary_dilation

    far = ~binary_dilation(mask, iterations=2)  # background 2+ px from the object
    assert alpha[mask].mean() > 0.8
    assert alpha[far].mean() < 0.1


def test_rendered_objects_cache(tmp_path: Path):
    from pose.camera.sparp.data import render_examples

    data = SparpData(sequences=2, frames=3, supersample=1, seed=21)
    cache = tmp_path / "objects.npz"
    first = render_examples(data, 8, quiet=True, cache=cache)
    assert cache.is_file()
    again = render_examples(data, 8, quiet=True, cache=cache)
    assert [e.seed for e in again] == [21, 22] and again[1].category == first[1].category
    assert np.array_equal(again[1].nocs, first[1].nocs)
    other = render_examples(SparpData(sequences=1, frames=3, supersample=1, seed=30), 8,
                            quiet=True, cache=cache)  # another key: rendered again
    assert [e.seed for e in other] == [30]


def test_cli_with_a_model_solves_writes_generated_views_and_splats(
        checkpoint: Path, tmp_path: Path, monkeypatch):
    """``pose sparp --checkpoint`` end to end with an oracle in the model's place (the
    generator's exact maps and novel views): the cameras come back, the generated views'
    cameras are Zero123++'s around the first photo, splats.ply is written."""
    import json

    import pose.camera.sparp.predict as predict_module
    from geometry.io.images import write_png
    from geometry.io.transforms_json import read_transforms_json
    from geometry.pose_metrics import pose_metrics
    from pose.camera.sparp.data import render_example
    from pose.camera.sparp.predict import Prediction
    from pose.camera.sparp.solver import NocsView

    ex = render_example(5, TILE, frames=3, supersample=1)
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(3):
        write_png(photos / f"v{k}.png", torch.from_numpy(ex.images[k]))

    def oracle(model, images, Ks, steps=10, seed=0, novel_views=False):
        assert np.allclose(Ks, ex.K, atol=1e-9)  # --fov-deg 50: the generator's camera
        views = [NocsView(ex.nocs[k].astype(np.float64), ex.masks[k], ex.K,
                          ex.images[k].astype(np.float64)) for k in range(3)]
        return Prediction(views, ex.novel_images.astype(np.float64), ex.novel_masks)

    monkeypatch.setattr(predict_module, "predict", oracle)
    out = tmp_path / "out"
    _run(["sparp", "--images", str(photos), "--checkpoint", str(checkpoint), "--out",
          str(out), "--splat-iterations", "20", "--quiet"])
    cams = read_transforms_json(out / "transforms.json", dtype=torch.float64).cameras
    m = pose_metrics(cams.T_world_cam, torch.from_numpy(ex.T_world_cam))
    assert float(m.rel_rot_err_deg.max()) < 1e-3
    # generated views: Zero123++'s cameras around the true first camera (output frame:
    # the first camera; NOCS units -> metres by the object's scale)
    gen = read_transforms_json(out / "generated" / "transforms.json",
                               dtype=torch.float64).cameras
    S = ex.T_world_nocs
    nocs_scale = float(np.cbrt(np.linalg.det(S[:3, :3])))
    T_world_obj = S.copy()
    T_world_obj[:3, :3] /= nocs_scale
    T_world_obj[:3, 3] = S[:3, :3] @ np.full(3, 0.5) + S[:3, 3]
    T_obj_cam0 = np.linalg.inv(T_world_obj) @ ex.T_world_cam[0]
    T_true = np.linalg.inv(ex.T_world_cam[0]) @ T_world_obj @ novel_view_poses(T_obj_cam0)
    T_out = gen.T_world_cam.numpy()
    assert np.allclose(T_out[:, :3, :3], T_true[:, :3, :3], atol=1e-4)
    assert np.allclose(T_out[:, :3, 3] * nocs_scale, T_true[:, :3, 3], atol=1e-4)
    assert (out / "splats.ply").is_file() and (out / "generated" / "view_5.png").is_file()
    record = json.loads((out / "poses.json").read_text())
    assert record["splats"]["gaussians"] > 0 and len(record["generated"]) == 6
