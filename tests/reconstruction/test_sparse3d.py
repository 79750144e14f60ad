"""Sparse3D (reconstruction.sparse3d): the zero-initialised controller leaves a tiny UNet's
output bit-for-bit unchanged; with oracle epipolar features the aggregator attends to the
true depth bin on over 95 % of the pixels all inputs see; the score model in the trainer;
``recon sparse3d train`` / ``eval``; ``recon fit --method sparse3d`` end to end and its
bad inputs (no poses, photos of different sizes, a diffusion path that is no model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from reconstruction.procedural import SceneConfig, render, write_photos  # noqa: E402
from reconstruction.sparse3d.epipolar import EpipolarAggregator, depth_bins  # noqa: E402
from reconstruction.sparse3d.model import (  # noqa: E402
    Sparse3DArchitecture,
    Sparse3DModel,
    Sparse3DScore,
)

FAST = ["--max-size", "64", "--train.checkpoint-every", "0", "--quiet", "--threads", "1",
        "--method", "sparse3d"]


def _cameras(v: int = 3):
    from reconstruction.generative.cameras import look_at

    az = torch.linspace(-0.6, 0.6, v, dtype=torch.float64)
    pos = torch.stack([torch.sin(az), -torch.cos(az), torch.full_like(az, 0.4)], -1)
    T = look_at(pos, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).float()
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]).expand(v, 3, 3).clone()
    return T, K


@pytest.mark.parametrize("pixel_space", [True, False])
def test_zero_initialised_controller_leaves_the_unet_bit_for_bit_unchanged(pixel_space):
    from reconstruction.generative.model import DiffusionBackbone

    backbone = DiffusionBackbone.tiny(pixel_space=pixel_space, seed=3)
    arch = Sparse3DArchitecture(backbone="external", feature_dim=8, control_channels=8,
                                num_depths=8)
    torch.manual_seed(0)
    model = Sparse3DModel(arch, backbone)
    g = torch.Generator().manual_seed(1)
    T, K = _cameras(3)
    images = torch.rand(3, 16, 16, 3, generator=g)
    c = backbone.latent_channels
    h = 16 // backbone.downsample
    noisy = torch.randn(2, c, h, h, generator=g)
    t = torch.tensor([17, 640])
    context = backbone.prompt_embedding("a photo of a hydrant")
    with torch.no_grad():
        bare = backbone.eps(noisy, t, context)
        features = model.controller.encoder(images)
        K_feat = K.clone()
        K_feat[:, :2] /= backbone.downsample
        controlled = model.eps(noisy, t, context, features, T, K_feat, T[:2], K_feat[:2],
                               torch.zeros(3))
        # The controller is live (its residuals have the UNet's block shapes), only zero.
        control = model.controller.epipolar(features, T, K_feat, T[:2], K_feat[:2], h, h,
                                            torch.zeros(3))
        down, mid = model.controller(noisy, t, context, control)
    assert torch.equal(controlled, bare)
    assert all(float(r.abs().max()) == 0.0 for r in down) and float(mid.abs().max()) == 0.0
    assert float(control.abs().max()) > 0  # the features themselves are not zero
    # One step of training makes it matter: the zero convolutions get a gradient.
    model.controller.train()
    loss = model.eps(noisy, t, context, model.controller.encoder(images), T, K_feat, T[:2],
                     K_feat[:2], torch.zeros(3)).square().mean()
    loss.backward()
    zero_conv = model.controller.controlnet.controlnet_down_blocks[0].weight
    assert float(zero_conv.grad.abs().sum()) > 0
    assert all(p.grad is None for p in backbone.parameters())


def _oracle_views():
    """Three 96 px input views and a 48 px target of a generated object scene, their cameras
    and the world points each input pixel sees."""
    from reconstruction.procedural.scene import camera_poses, intrinsics, make_world, render_view

    config = SceneConfig(kind="orbit", num_views=4, width=96, height=96, seed=3, arc_deg=50,
                         radius=3.5, num_objects=3, supersample=1).resolved()
    world, K, poses = make_world(config), intrinsics(config), camera_poses(config)

    def points(K, T_world_cam, depth):
        n = depth.shape[0]
        v, u = np.mgrid[0:n, 0:n] + 0.5
        pc = np.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth,
                       depth], -1)
        return pc @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]

    inputs = [0, 2, 3]
    views = {k: render_view(world, K, poses[k], 96, 96, 1) for k in inputs}
    K_half = K.copy()
    K_half[:2] /= 2
    target = render_view(world, K_half, poses[1], 48, 48, 1)
    return {"K": K, "K_target": K_half, "poses": poses, "inputs": inputs,
            "points": {k: points(K, poses[k], views[k].depth) for k in inputs},
            "depth": {k: views[k].depth for k in inputs}, "target_depth": target.depth,
            "target_points": points(K_half, poses[1], target.depth)}


def _encode(points: np.ndarray) -> torch.Tensor:
    """Oracle features: a multi-frequency code of the world point a pixel sees."""
    p = torch.tensor(points, dtype=torch.float32)
    angles = p[..., None] * torch.tensor([1.0, 2.0, 4.0, 8.0]) * math.pi
    return torch.cat([torch.sin(angles), torch.cos(angles)], -1).reshape(*p.shape[:-1], -1)


def test_aggregator_attends_to_the_true_depth_bin_with_oracle_features():
    data = _oracle_views()
    inputs, poses, K = data["inputs"], data["poses"], data["K"]
    features = torch.stack([_encode(data["points"][k]).permute(2, 0, 1) for k in inputs])
    T_cam_world = torch.tensor(np.linalg.inv(poses), dtype=torch.float32)
    aggregator = EpipolarAggregator(features.shape[1], 8, num_depths=48)
    near, far = 1.5, 6.0
    with torch.no_grad():
        out, attention = aggregator(
            features, T_cam_world[inputs], torch.tensor(K, dtype=torch.float32).expand(3, 3, 3),
            T_cam_world[1:2], torch.tensor(data["K_target"], dtype=torch.float32)[None], 48, 48,
            near, far)
    assert out.shape == (1, 8, 48, 48)
    torch.testing.assert_close(attention.sum(-1), torch.ones(1, 48, 48))
    depth = torch.tensor(data["target_depth"])
    true_bin = (depth_bins(near, far, 48)[None, None] - depth[..., None]).abs().argmin(-1)
    # Pixels whose surface point every input sees (in the image, not occluded).
    seen = depth > 0
    P = data["target_points"]
    for k in inputs:
        T = np.linalg.inv(poses[k])
        pc = P @ T[:3, :3].T + T[:3, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = K[0, 0] * pc[..., 0] / pc[..., 2] + K[0, 2]
            v = K[1, 1] * pc[..., 1] / pc[..., 2] + K[1, 2]
        inside = (u >= 0) & (u < 96) & (v >= 0) & (v < 96) & (pc[..., 2] > 0)
        ui = np.clip(np.nan_to_num(u), 0, 95).astype(int)
        vi = np.clip(np.nan_to_num(v), 0, 95).astype(int)
        visible = np.abs(data["depth"][k][vi, ui] - pc[..., 2]) < 0.05 * np.abs(pc[..., 2])
        seen &= torch.tensor(inside & visible)
    assert int(seen.sum()) > 500  # most of the target
    picked = attention[0].argmax(-1)
    share = float((picked[seen] == true_bin[seen]).float().mean())
    assert share > 0.95, share  # measured 0.968
    # Features that agree nowhere (random per view) leave no such peak.
    noise = torch.randn(features.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, random_attention = aggregator(
            noise, T_cam_world[inputs], torch.tensor(K, dtype=torch.float32).expand(3, 3, 3),
            T_cam_world[1:2], torch.tensor(data["K_target"], dtype=torch.float32)[None], 48, 48,
            near, far)
    assert float((random_attention[0].argmax(-1)[seen] == true_bin[seen]).float().mean()) < 0.2


def test_bins_seen_by_too_few_views_are_masked():
    T, K = _cameras(2)
    aggregator = EpipolarAggregator(4, 4, num_depths=6)
    features = torch.randn(2, 4, 16, 16)
    # A target camera behind the inputs looking away from them: no bin is in front of an
    # input camera, so none is seen and the attention is uniform.
    from reconstruction.generative.cameras import look_at

    T_away = look_at(torch.tensor([[0.0, -3.0, 0.4]]), torch.tensor([0.0, 0.0, 1.0]),
                     torch.tensor([0.0, -10.0, 0.4]))
    with torch.no_grad():
        _, attention = aggregator(features, T, K, T_away, K[:1], 4, 4, 0.5, 2.0)
    torch.testing.assert_close(attention, torch.full_like(attention, 1 / 6))


def _trainer(extra_terms, iterations=10):
    """A tiny Gaussian trainer on three random views about the origin."""
    from reconstruction.engine.config import TrainConfig
    from reconstruction.engine.losses import default_loss_terms
    from reconstruction.engine.trainer import GaussianTrainer, TrainData
    from reconstruction.gaussians import GaussianScene

    g = torch.Generator().manual_seed(5)
    scene = GaussianScene.from_points((torch.rand(300, 3, generator=g) - 0.5) * 0.6,
                                      torch.rand(300, 3, generator=g), sh_degree=1,
                                      initial_opacity=0.5)
    T, K = _cameras(3)
    images = [torch.rand(16, 16, 3, generator=g) for _ in range(3)]
    config = TrainConfig(iterations=iterations, sh_degree=1, optimise_poses=False,
                         coarse_fraction=0.0, checkpoint_every=0)
    return GaussianTrainer(TrainData(images, K, T, 1.0), scene, config, seed=0,
                           loss_terms=[*default_loss_terms(config), *extra_terms])


def test_score_model_and_its_distillation_term():
    from reconstruction.generative.distill import NovelViewConfig, ScoreDistillationLoss

    torch.manual_seed(0)
    model = Sparse3DModel(Sparse3DArchitecture(feature_dim=8, control_channels=8, num_depths=8))
    model.requires_grad_(False)
    T, K = _cameras(3)
    images = torch.rand(3, 16, 16, 3)
    score = Sparse3DScore(model, images, T, K, torch.zeros(3), prompt="a chair")
    from reconstruction.generative.sds import NovelCameras

    noisy = torch.randn(2, 3, 16, 16)
    prediction = score.predict_noise(noisy, torch.tensor([100, 800]),
                                     NovelCameras(T[:2], K[:2], 16, 16))
    backbone = model.backbone
    torch.testing.assert_close(prediction.cond, backbone.eps(
        noisy, torch.tensor([100, 800]), backbone.prompt_embedding("a chair")))
    torch.testing.assert_close(prediction.uncond, backbone.eps(
        noisy, torch.tensor([100, 800]), backbone.prompt_embedding("")))
    term = ScoreDistillationLoss(score, NovelViewConfig(render_size=16), 10, 7.5, "csds")
    trainer = _trainer([term])
    loss = term(trainer, 0, None, None, {}, None)
    loss.backward()
    assert torch.isfinite(loss) and float(trainer.params["sh0"].grad.abs().sum()) > 0


# ---------------------------------------------------------------------- commands


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    """A tiny controller trained for a few steps by ``recon sparse3d train``."""
    import sys

    from sparseview.cli import recon as cli

    out = tmp_path_factory.mktemp("sparse3d") / "controller"
    argv = ["recon", "sparse3d", "train", "--synthetic", "--out", str(out), "--quiet",
            "--threads", "1", "--train.steps", "6", "--data.num-scenes", "1", "--data.views",
            "4", "--data.size", "16", "--eval-scenes", "0", "--arch.num-depths", "8",
            "--arch.feature-dim", "8", "--arch.control-channels", "8"]
    old = sys.argv
    sys.argv = argv
    try:
        cli.main()
    except SystemExit as exc:
        assert not exc.code
    finally:
        sys.argv = old
    return out


def test_sparse3d_train_writes_a_loadable_checkpoint(controller, run_recon_output):
    from reconstruction.sparse3d.model import load_controller

    record = json.loads((controller / "config.json").read_text())
    assert record["kind"] == "sparse3d" and record["step"] == 6
    assert record["config"]["arch"]["backbone"] == "tiny"
    model = load_controller(controller, None)
    assert not any(p.requires_grad for p in model.parameters())
    # The checkpoint holds the tiny backbone: the same seed rebuilds the same weights.
    again = Sparse3DModel(Sparse3DArchitecture(**record["config"]["arch"]))
    assert torch.equal(model.backbone.unet.conv_in.weight, again.backbone.unet.conv_in.weight)
    code, out = run_recon_output("sparse3d", "eval", "--checkpoint", str(controller),
                                 "--scenes", "1", "--data.size", "16", "--data.views", "4",
                                 "--threads", "1")
    assert code == 0, out
    assert "held-out denoising MSE" in out


@pytest.fixture(scope="module")
def posed_photos(tmp_path_factory):
    from geometry.io.transforms_json import write_transforms_json

    folder = tmp_path_factory.mktemp("sparse3d_fit")
    generated = render(SceneConfig(kind="arc", num_views=3, width=160, height=120, seed=2))
    write_photos(generated, folder / "images")
    poses = folder / "transforms.json"
    write_transforms_json(poses, generated.cameras,
                          file_paths=[f"images/view_{k:02d}.png" for k in range(3)])
    return folder / "images", poses


def _one_sentence_exit_2(code: int, err: str, text: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("recon: error: ") and text in lines[-1], err
    assert "Traceback" not in err


def test_fit_sparse3d_bad_inputs(posed_photos, tmp_path, run_recon, monkeypatch):
    from reconstruction.init.registry import INITIALISERS

    def no_init(*args, **kwargs):
        raise AssertionError("inputs must be checked before the initialisation")

    monkeypatch.setitem(INITIALISERS, "sfm", no_init)
    images, poses = posed_photos
    out = tmp_path / "out"
    code, err = run_recon("fit", "--images", str(images), "--out", str(out), *FAST)
    _one_sentence_exit_2(code, err, "--method sparse3d needs the cameras of the photos")
    (tmp_path / "empty").mkdir()
    for extra, text in (
            (["--sparse3d.diffusion", str(tmp_path / "empty")], "has no unet/config.json"),
            (["--sparse3d.diffusion", str(tmp_path / "nothing")], "does not exist"),
            (["--sparse3d.controller", str(tmp_path / "empty")], "is not a sparse3d checkpoint"),
    ):
        code, err = run_recon("fit", "--images", str(images), "--out", str(out), "--poses",
                              str(poses), *FAST, *extra)
        _one_sentence_exit_2(code, err, text)
    # One photo of another size (and aspect), with its camera: refused as a whole.
    from PIL import Image

    from geometry.io.transforms_json import read_transforms_json, write_transforms_json

    odd = tmp_path / "odd"
    (odd / "images").mkdir(parents=True)
    for path in images.iterdir():
        (odd / "images" / path.name).write_bytes(path.read_bytes())
    Image.open(odd / "images" / "view_01.png").resize((160, 100)).save(
        odd / "images" / "view_01.png")
    cameras = read_transforms_json(poses, dtype=torch.float64).cameras
    K = cameras.K.clone()
    K[1] *= 100 / 120  # fy and cy
    from geometry.cameras import Cameras

    cameras = Cameras(K=K, T_world_cam=cameras.T_world_cam, width=torch.tensor([160] * 3),
                      height=torch.tensor([120, 100, 120]))
    write_transforms_json(odd / "transforms.json", cameras,
                          file_paths=[f"images/view_{k:02d}.png" for k in range(3)])
    code, err = run_recon("fit", "--images", str(odd / "images"), "--out", str(out), "--poses",
                          str(odd / "transforms.json"), *FAST)
    _one_sentence_exit_2(code, err, "different sizes")
    assert not out.exists()


def test_fit_sparse3d_end_to_end_with_a_trained_controller(posed_photos, controller, tmp_path,
                                                          run_recon):
    images, poses = posed_photos
    out = tmp_path / "out"
    code, err = run_recon("fit", "--images", str(images), "--out", str(out), "--poses",
                          str(poses), "--iterations", "30", *FAST, "--max-size", "160",
                          "--sparse3d.controller",
                          str(controller), "--sparse3d.render-size", "16",
                          "--sparse3d.mode", "csds", "--sparse3d.prompt", "a box")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "sparse3d"
    assert metrics["sparse3d_steps"] == 27  # from 10 % of the 30 iterations
    assert metrics["training_psnr_db"] > metrics["initial_psnr_db"]
    assert (out / "splats.ply").is_file()
    # A (tiny) Stable Diffusion folder and no controller: a fresh zero-initialised one.
    from reconstruction.generative.model import DiffusionBackbone

    sd = DiffusionBackbone.tiny(pixel_space=False, seed=4)
    folder = tmp_path / "sd-tiny"
    sd.unet.save_pretrained(folder / "unet")
    sd.vae.save_pretrained(folder / "vae")
    external = tmp_path / "external"
    code, err = run_recon("fit", "--images", str(images), "--out", str(external), "--poses",
                          str(poses), "--iterations", "10", *FAST, "--max-size", "160",
                          "--sparse3d.diffusion", str(folder), "--sparse3d.render-size", "16")
    assert code == 0, err
    assert json.loads((external / "metrics.json").read_text())["sparse3d_steps"] == 9
    # Without a model the fit says so and runs the inputs alone.
    bare = tmp_path / "bare"
    code, err = run_recon("fit", "--images", str(images), "--out", str(bare), "--poses",
                          str(poses), "--iterations", "10", *FAST, "--max-size", "160")
    assert code == 0, err
    assert "sparse3d_steps" not in json.loads((bare / "metrics.json").read_text())


def test_recon_help_lists_sparse3d(run_recon_output):
    code, out = run_recon_output("fit", "--method", "sparse3d", "--help")
    assert code == 0 and "--sparse3d.diffusion" in out and "--sparse3d.controller" in out
    code, out = run_recon_output("sparse3d", "train", "--help")
    assert code == 0 and "--synthetic" in out
